//! `alexnet bench-train`: training throughput with the loader feeding the device, and where a
//! step's time goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::Pipeline;
use crate::device::{DeviceJob, FastDevice};
use crate::engine::head::DropoutKey;
use crate::engine::sgd::Sgd;
use crate::engine::{EngineError, Phase, StepEngine};
use crate::loader::{Loader, LoaderData, LoaderError, LoaderOptions, Output};
use crate::model::{AlexNet, ModelError, Spec};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "benchmark step {step} gave a loss of {loss}: the network diverged with this pipeline's \
         settings; benchmark with a lower train.learning_rate"
    )]
    Diverged { step: usize, loss: f32 },
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub batch_size: usize,
    /// Which engine ran the steps.
    pub path: String,
    /// Timed steps (after warm-up), run back to back as in training.
    pub steps: usize,
    pub images_per_sec: f64,
    pub step_ms_median: f64,
    /// Per-phase medians over the profiled steps (device synchronised between stages):
    /// 1 input, 2 forward, 3 backward, 4 update.
    pub phases_ms: BTreeMap<String, f64>,
    /// Every stage (phase-numbered name, median ms), in order.
    pub stages_ms: Vec<(String, f64)>,
    /// The device's streaming bandwidth in GB/s, measured with a kernel that reads two arrays
    /// and writes a third (`Kernels::multiply`; best of five), when the fast path was profiled.
    pub bandwidth_gbs: Option<f64>,
    /// How the timed steps' passes ran, when `compute.graphs` is on.
    pub replays: Option<crate::kernels::replay::ReplayStats>,
    /// The fast path's stages against what they must at least do (`engine::costs`).
    pub floors: Vec<StageFloor>,
}

/// One profiled stage beside its floor.
#[derive(Debug, Clone, Serialize)]
pub struct StageFloor {
    pub stage: String,
    pub ms: f64,
    /// The bytes the stage must move, in MB (10^6).
    pub megabytes: f64,
    /// Those bytes at the measured bandwidth: about the least time the stage can take (only
    /// tensors another stage left in the cache can beat it).
    pub floor_ms: f64,
    /// Its arithmetic, and the rate the measured time gives it.
    pub gflop: f64,
    pub tflops: f64,
}

impl std::fmt::Display for BenchReport {
    /// The profile as a table, then the throughput.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<28} {:>9}", "stage (profiled, median)", "ms")?;
        for (name, ms) in &self.phases_ms {
            writeln!(f, "{name:<28} {ms:>9.2}")?;
        }
        if self.floors.is_empty() {
            for (name, ms) in &self.stages_ms {
                writeln!(f, "  {name:<26} {ms:>9.2}")?;
            }
        } else {
            let bandwidth = self.bandwidth_gbs.unwrap_or(f64::NAN);
            writeln!(
                f,
                "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}  (floor: the bytes at {bandwidth:.0} GB/s)",
                "", "ms", "MB", "floor ms", "GFLOP", "TFLOP/s"
            )?;
            for s in &self.floors {
                writeln!(
                    f,
                    "  {:<26} {:>9.2} {:>9.1} {:>9.3} {:>9.2} {:>9.2}",
                    s.stage, s.ms, s.megabytes, s.floor_ms, s.gflop, s.tflops
                )?;
            }
        }
        if let Some(replays) = &self.replays {
            writeln!(f, "passes (compute.graphs, unprofiled steps): {replays}")?;
        }
        writeln!(
            f,
            "{:.1} images/s, median step {:.1} ms (unsynchronised steps, loader feeding)",
            self.images_per_sec, self.step_ms_median
        )
    }
}

/// `alexnet bench-train`: what to run, on whichever device `on_device` opens.
pub struct BenchJob {
    pub pipeline: Pipeline,
    pub data: Arc<LoaderData>,
    pub steps: usize,
    pub warmup: usize,
    pub profile_steps: usize,
}

impl DeviceJob for BenchJob {
    type Output = Result<BenchReport, BenchError>;
    fn run<D: FastDevice>(self, dev: D, device_name: String) -> Self::Output {
        eprintln!(
            "benchmarking {} training steps of {} (+{} warm-up, {} profiled) on {device_name}",
            self.steps, self.pipeline.loader.batch_size, self.warmup, self.profile_steps,
        );
        let (steps, warmup, profile) = (self.steps, self.warmup, self.profile_steps);
        run(&dev, &self.pipeline, self.data, steps, warmup, profile)
    }
}

/// Runs `warmup + steps` plain training steps, then `profile_steps` synchronised ones.
pub fn run<D: FastDevice>(
    dev: &D,
    pipeline: &Pipeline,
    data: Arc<LoaderData>,
    steps: usize,
    warmup: usize,
    profile_steps: usize,
) -> Result<BenchReport, BenchError> {
    let loader_cfg = &pipeline.loader;
    let spec = Spec::new(
        &pipeline.model,
        loader_cfg.crop_size as usize,
        data.classes.len(),
    )?;
    let mut model = AlexNet::<f32, D>::new(dev, spec, pipeline.train.seed);
    let t = &pipeline.train;
    let mut sgd = Sgd::new(dev, &model, t.momentum, t.weight_decay);
    data.check_pipeline(pipeline)?;
    let compute = &pipeline.compute;
    let mut engine = StepEngine::new(dev, compute, &data, loader_cfg, &model, Some(&sgd))?;
    eprintln!("the convolutional part runs on {}", engine.describe());
    let mut loader = Loader::start(data.clone(), LoaderOptions::train(loader_cfg, Output::U8))?;
    let lr = t.learning_rate;
    let seed = t.seed;

    let mut step_times = Vec::with_capacity(steps);
    let mut timed_started = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            dev.synchronize();
            timed_started = Instant::now();
        }
        let started = Instant::now();
        let batch = loader.next().expect("the training stream is endless")?;
        let dropout = Some(DropoutKey {
            seed,
            step: i as u64,
            first_image: 0,
        });
        let loss = engine.train_step(dev, &mut model, &mut sgd, &batch, dropout, lr)?;
        if i >= warmup {
            step_times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        if !loss.is_finite() {
            return Err(BenchError::Diverged { step: i, loss });
        }
        loader.recycle(batch);
    }
    dev.synchronize();
    let timed = timed_started.elapsed().as_secs_f64();
    let batch_size = loader_cfg.batch_size;

    // Per stage (in the order the first profiled step ran them): its phase and its times.
    let mut stages: Vec<(String, Phase, Vec<f64>)> = Vec::new();
    for i in 0..profile_steps {
        let batch = loader.next().expect("the training stream is endless")?;
        dev.synchronize();
        let mut clock = Instant::now();
        let mut stage_index = 0;
        let mut observe = |stage: crate::engine::Stage| {
            dev.synchronize();
            let ms = clock.elapsed().as_secs_f64() * 1e3;
            clock = Instant::now();
            if stages.len() <= stage_index {
                stages.push((stage.to_string(), stage.phase, Vec::new()));
            }
            stages[stage_index].2.push(ms);
            stage_index += 1;
        };
        let dropout = Some(DropoutKey {
            seed,
            step: i as u64,
            first_image: 0,
        });
        engine.train_step_observed(dev, &mut model, &mut sgd, &batch, dropout, lr, &mut observe)?;
        loader.recycle(batch);
    }
    let mut phases_ms: BTreeMap<String, f64> = BTreeMap::new();
    let mut stages_ms = Vec::with_capacity(stages.len());
    for (name, phase, mut times) in stages {
        let ms = median(&mut times);
        *phases_ms.entry(phase.label().to_string()).or_default() += ms;
        stages_ms.push((name, ms));
    }
    let (fast, path) = (matches!(engine, StepEngine::Fast(_)), engine.describe());
    let replays = engine.replay_stats();
    // Its buffers go back before the probe takes its own.
    drop(engine);
    let bandwidth_gbs = (fast && profile_steps > 0)
        .then(|| measure_bandwidth(dev, compute))
        .flatten();
    let floors = match bandwidth_gbs {
        Some(gbs) => floors(&model.spec, batch_size, compute.precision, &stages_ms, gbs),
        None => Vec::new(),
    };

    Ok(BenchReport {
        batch_size,
        path,
        steps,
        images_per_sec: (steps * batch_size) as f64 / timed,
        step_ms_median: median(&mut step_times),
        phases_ms,
        stages_ms,
        bandwidth_gbs,
        replays,
        floors,
    })
}

/// Each profiled stage beside its floor at `gbs` GB/s (stages without a cost are left out).
fn floors(
    spec: &Spec,
    batch: usize,
    precision: crate::config::Precision,
    stages_ms: &[(String, f64)],
    gbs: f64,
) -> Vec<StageFloor> {
    let costs = crate::engine::costs::fast_step_costs(spec, batch, precision);
    stages_ms
        .iter()
        .filter_map(|(name, ms)| {
            let cost = costs.iter().find(|c| c.stage.to_string() == *name)?;
            let gflop = cost.flops as f64 / 1e9;
            Some(StageFloor {
                stage: name.clone(),
                ms: *ms,
                megabytes: cost.bytes as f64 / 1e6,
                floor_ms: cost.bytes as f64 / (gbs * 1e9) * 1e3,
                gflop,
                tflops: gflop / ms.max(1e-9),
            })
        })
        .collect()
}

/// The device's streaming bandwidth in GB/s, from `multiply` over arrays far larger than any
/// cache (best of five, after one warm-up); `None`, with a warning, if it cannot be measured
/// (it takes three such arrays of memory).
fn measure_bandwidth<D: FastDevice>(
    dev: &D,
    compute: &crate::config::ComputeConfig,
) -> Option<f64> {
    let len: usize = if D::GPU { 64 << 20 } else { 16 << 20 };
    let measured = (|| -> Result<f64, crate::kernels::KernelError> {
        use crate::kernels::Kernels;
        let mut k = dev.fast_kernels(compute)?;
        let ones = vec![1.0f32; len];
        let (x, m, mut y) = (k.upload(&ones)?, k.upload(&ones)?, k.alloc(len)?);
        let mut best = f64::INFINITY;
        for i in 0..6 {
            k.synchronize()?;
            let started = Instant::now();
            k.multiply(len, &x, &m, &mut y)?;
            k.synchronize()?;
            if i > 0 {
                best = best.min(started.elapsed().as_secs_f64());
            }
        }
        Ok((3 * len * std::mem::size_of::<f32>()) as f64 / best / 1e9)
    })();
    match measured {
        Ok(gbs) => Some(gbs),
        Err(e) => {
            eprintln!("warning: the stages' floors are left out: measuring bandwidth failed: {e}");
            None
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
