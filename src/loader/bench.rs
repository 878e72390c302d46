//! `alexnet bench-loader`: the loader alone, and the bare copy loop that bounds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::augment::{self, Crop, Normalizer};
use super::{Loader, LoaderData, LoaderError, LoaderOptions, Output, StreamChecksum};

/// What a loader benchmark measured.
#[derive(Debug, Clone)]
pub struct LoaderBench {
    pub batches: usize,
    pub images: usize,
    pub elapsed: Duration,
    pub checksum: String,
}

impl LoaderBench {
    pub fn images_per_sec(&self) -> f64 {
        self.images as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Pulls `batches` batches from a training loader, checksumming each one. `progress` is called
/// after every batch with the count so far.
pub fn run_loader(
    data: Arc<LoaderData>,
    options: LoaderOptions,
    batches: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<LoaderBench, LoaderError> {
    let mut loader = Loader::start(data, options)?;
    let mut checksum = StreamChecksum::default();
    let mut images = 0;
    let mut done = 0;
    let started = Instant::now();
    while done < batches {
        let Some(batch) = loader.next() else { break };
        let batch = batch?;
        checksum.add(&batch);
        images += batch.len();
        done += 1;
        loader.recycle(batch);
        progress(done, images);
    }
    Ok(LoaderBench {
        batches: done,
        images,
        elapsed: started.elapsed(),
        checksum: checksum.hex(),
    })
}

/// The ceiling: random crops (with random flips) copied straight out of the memory-mapped
/// records into one reused buffer, on `threads` threads — no sampler, no prefetch queue, no
/// labels, no checksum.
pub fn bare_loop(
    data: &LoaderData,
    crop: u32,
    batch_size: usize,
    batches: usize,
    threads: usize,
    output: Output,
) -> Duration {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("creating benchmark threads");
    let stored = data.image_size;
    let view = (crop * crop * 3) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut u8_buf = vec![0u8; batch_size * view];
    let mut f32_buf = vec![0f32; batch_size * view];
    let norm = Normalizer::MeanImage(&data.mean_image);
    let started = Instant::now();
    for _ in 0..batches {
        let picks: Vec<(usize, Crop)> = (0..batch_size)
            .map(|_| {
                let i = rng.random_range(0..data.len());
                let crop = Crop {
                    left: rng.random_range(0..=stored - crop),
                    top: rng.random_range(0..=stored - crop),
                    flip: rng.random_bool(0.5),
                };
                (i, crop)
            })
            .collect();
        pool.install(|| match output {
            Output::U8 => u8_buf
                .par_chunks_mut(view)
                .zip(&picks)
                .for_each(|(out, &(i, at))| {
                    augment::crop_u8(data.reader.record(i), stored, crop, at, out)
                }),
            Output::F32 => f32_buf
                .par_chunks_mut(view)
                .zip(&picks)
                .for_each(|(out, &(i, at))| {
                    augment::crop_f32(
                        data.reader.record(i),
                        stored,
                        crop,
                        at,
                        [0.0; 3],
                        &norm,
                        out,
                    )
                }),
        });
    }
    started.elapsed()
}

/// `alexnet bench-loader` as a whole: the loader's run (with a progress bar) and, when asked,
/// the bare copy loop beside it.
pub struct LoaderBenchReport {
    pub run: LoaderBench,
    pub config: crate::config::LoaderConfig,
    pub threads: usize,
    pub output: Output,
    /// The bare copy loop's images/s.
    pub baseline: Option<f64>,
}

impl LoaderBenchReport {
    pub fn measure(
        data: Arc<LoaderData>,
        config: crate::config::LoaderConfig,
        output: Output,
        batches: usize,
        baseline: bool,
        progress: crate::progress::Progress,
    ) -> Result<Self, LoaderError> {
        let threads = config.resolved_threads();
        let (crop, batch) = (config.crop_size, config.batch_size);
        let baseline = baseline.then(|| {
            let elapsed = bare_loop(&data, crop, batch, batches, threads, output);
            (batches * batch) as f64 / elapsed.as_secs_f64()
        });
        let total = batches as u64;
        let mut bar = crate::progress::Meter::new(progress, "bench-loader", "batches", total, 0);
        let options = LoaderOptions {
            digests: true,
            ..LoaderOptions::train(&config, output)
        };
        let run = run_loader(data, options, batches, |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish();
        Ok(Self {
            run,
            config,
            threads,
            output,
            baseline,
        })
    }

    /// The machine-readable summary (`bench-loader`'s last line).
    pub fn json(&self) -> serde_json::Value {
        let mut report = serde_json::json!({
            "images_per_sec": self.run.images_per_sec(),
            "checksum": self.run.checksum,
            "batches": self.run.batches,
            "images": self.run.images,
            "seconds": self.run.elapsed.as_secs_f64(),
            "batch_size": self.config.batch_size,
            "crop_size": self.config.crop_size,
            "threads": self.threads,
            "output": self.output,
        });
        if let Some(b) = self.baseline {
            report["bare_loop_images_per_sec"] = serde_json::json!(b);
        }
        report
    }
}

impl std::fmt::Display for LoaderBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        let rate = self.run.images_per_sec();
        write!(
            f,
            "{} batches of {} ({}×{} {}), {} threads: {rate:.0} images/s",
            self.run.batches, c.batch_size, c.crop_size, c.crop_size, self.output, self.threads,
        )?;
        if let Some(b) = self.baseline {
            write!(
                f,
                " ({:.0}% of the bare copy loop's {b:.0})",
                100.0 * rate / b
            )?;
        }
        Ok(())
    }
}
