//! Doing it: decoding the inputs of the shards to (re)build in parallel, writing them in input
//! order, and the dataset-level files (rejects, mean image, and last the manifest).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::decode::{self, DecodeOptions, RejectReason, Rejection, SHRINK_MARGIN};
use super::ingest::{SourceDataset, SourceImage};
use super::plan::{self, ShardPlan, SplitWork};
use super::resize::CenterCropResizer;
use super::{ordered, PreprocessError, PreprocessOptions, Progress, SplitSummary};
use crate::config::PreprocessConfig;
use crate::shards::{
    self, IndexRow, Manifest, MeanStats, Reject, ShardError, ShardPaths, ShardReceipt, ShardWriter,
    Split, SplitContent, CHANNELS, FORMAT_VERSION, MANIFEST_FILE, MEAN_FILE, REJECTS_FILE,
};

/// One stored image on its way from a worker to the writer.
struct Prepared {
    pixels: Vec<u8>,
    orig_width: u32,
    orig_height: u32,
    format: &'static str,
}

fn prepare(
    resizer: &mut CenterCropResizer,
    input: &SourceImage,
    options: &DecodeOptions,
) -> Result<Prepared, Rejection> {
    if input.stray {
        return Err(Rejection {
            reason: RejectReason::Unsupported,
            detail: "not an image, and not listed in the validation labels".into(),
        });
    }
    let decoded = decode::decode_file(&input.path, options)?;
    let source = (decoded.source_width, decoded.source_height);
    let size = resizer.size() as usize;
    let mut pixels = vec![0u8; size * size * CHANNELS as usize];
    resizer.resize_shrunk_into(&decoded.image, source, decoded.shrink, &mut pixels);
    Ok(Prepared {
        pixels,
        orig_width: source.0,
        orig_height: source.1,
        format: decoded.format,
    })
}

/// A shard being written: its records go to the file as they arrive, in input order.
struct OpenShard {
    plan: ShardPlan,
    writer: ShardWriter,
    rows: Vec<IndexRow>,
    rejects: Vec<Reject>,
}

/// Receives one split's prepared images in input order and turns them into shards.
struct SplitWriter<'a> {
    config: &'a PreprocessConfig,
    output: &'a Path,
    source: &'a SourceDataset,
    work: &'a mut SplitWork,
    /// Training images feed the mean image (when it is being computed); validation images
    /// don't.
    mean: Option<&'a mut MeanAccumulator>,
    open: Option<OpenShard>,
    seen: u64,
    rejected: BTreeMap<&'static str, u64>,
    bytes_written: u64,
}

impl SplitWriter<'_> {
    /// Stores (or records the rejection of) input `i`, which belongs to the shard of `plan`.
    fn accept(
        &mut self,
        plan: ShardPlan,
        i: usize,
        result: Result<Prepared, Rejection>,
    ) -> Result<(), PreprocessError> {
        let split = self.work.split;
        let input = &self.source.split(split)[i];
        let shard = match &mut self.open {
            Some(shard) => shard,
            None => self.open.insert(self.start_shard(plan)?),
        };
        match result {
            Ok(prepared) => {
                if let Some(mean) = self.mean.as_deref_mut() {
                    mean.add(&prepared.pixels);
                }
                shard.writer.push(&prepared.pixels)?;
                shard.rows.push(IndexRow {
                    label: input.label,
                    wnid: self.source.classes[input.label as usize].wnid.clone(),
                    source_path: input.rel.clone(),
                    orig_width: prepared.orig_width,
                    orig_height: prepared.orig_height,
                    source_format: prepared.format.to_string(),
                    checksum: shards::record_checksum(&prepared.pixels),
                });
            }
            Err(rejection) => {
                *self.rejected.entry(rejection.reason.name()).or_default() += 1;
                shard.rejects.push(Reject {
                    source_path: input.rel.clone(),
                    reason: rejection.reason.name().to_string(),
                    detail: rejection.detail,
                });
            }
        }
        self.seen += 1;
        check_reject_rate(
            split,
            self.seen,
            &self.rejected,
            self.config.max_reject_fraction,
        )?;
        if i + 1 == plan.first_input + plan.inputs {
            self.finish_shard()?;
        }
        Ok(())
    }

    fn start_shard(&self, plan: ShardPlan) -> Result<OpenShard, PreprocessError> {
        let path = ShardPaths::new(self.output, self.work.split, plan.shard as usize).records;
        Ok(OpenShard {
            plan,
            writer: ShardWriter::create(&path, plan.shard, self.config.image_size)?,
            rows: Vec::with_capacity(plan.inputs),
            rejects: Vec::new(),
        })
    }

    fn finish_shard(&mut self) -> Result<(), PreprocessError> {
        let shard = self.open.take().expect("a shard is open");
        let number = shard.plan.shard as usize;
        let fingerprint = self.work.fingerprints[number].clone();
        let receipt = close_shard(self.output, self.work.split, shard, fingerprint)?;
        self.bytes_written += shard_bytes(self.output, self.work.split, number)?;
        self.work.kept[number] = Some(receipt);
        Ok(())
    }
}

/// Builds the shards of `work` that can't be kept; with `mean`, adds their pixels to it.
pub fn process_split(
    config: &PreprocessConfig,
    opts: &PreprocessOptions,
    source: &SourceDataset,
    work: &mut SplitWork,
    mean: Option<&mut MeanAccumulator>,
) -> Result<SplitSummary, PreprocessError> {
    let started = Instant::now();
    let split = work.split;
    let inputs = source.split(split);
    let shards = work.plans.len() as u64;
    let kept_shards = shards - work.todo().count() as u64;
    let todo: Vec<(ShardPlan, usize)> = work
        .todo()
        .flat_map(|plan| plan.range().map(move |i| (*plan, i)))
        .collect();
    let mut progress = SplitProgress::new(
        opts.progress,
        split,
        inputs.len(),
        inputs.len() - todo.len(),
    );
    let decode_options = DecodeOptions {
        max_pixels: config.max_pixels,
        max_file_bytes: config.max_file_bytes,
        shrink_floor: config
            .jpeg_shrink_on_load
            .then_some(SHRINK_MARGIN * config.image_size),
    };
    let reasons = work.reasons.clone();
    let mut writer = SplitWriter {
        config,
        output: &opts.output,
        source,
        work,
        mean,
        open: None,
        seen: 0,
        rejected: BTreeMap::new(),
        bytes_written: 0,
    };
    ordered::ordered_map(
        todo.len(),
        opts.jobs,
        4 * opts.jobs.max(1) + 16,
        || CenterCropResizer::new(config.image_size),
        |resizer, k| prepare(resizer, &inputs[todo[k].1], &decode_options),
        |k, result| {
            progress.inc();
            let (plan, i) = todo[k];
            writer.accept(plan, i, result)
        },
    )?;
    progress.finish();
    let (processed, bytes_written) = (writer.seen, writer.bytes_written);

    let mut summary = SplitSummary {
        split: Some(split),
        inputs: inputs.len() as u64,
        shards,
        reused_shards: kept_shards,
        processed,
        bytes_written,
        elapsed: started.elapsed(),
        rebuilt: reasons,
        ..SplitSummary::default()
    };
    for receipt in work.kept.iter().flatten() {
        summary.stored += receipt.records;
        for reject in &receipt.rejects {
            *summary.rejected.entry(reject.reason.clone()).or_default() += 1;
        }
    }
    Ok(summary)
}

/// While a split is written: more than `limit` of the inputs so far rejected, after at least
/// 100 of them, points at a systemic problem (wrong directory, unsupported files) early.
fn check_reject_rate(
    split: Split,
    seen: u64,
    rejected: &BTreeMap<&'static str, u64>,
    limit: f64,
) -> Result<(), PreprocessError> {
    const MIN_SEEN: u64 = 100;
    let total: u64 = rejected.values().sum();
    if seen < MIN_SEEN {
        return Ok(());
    }
    reject_fraction_ok(
        split,
        seen,
        total,
        rejected.iter().map(|(r, n)| (*r, *n)),
        limit,
    )
}

fn reject_fraction_ok<'a>(
    split: Split,
    seen: u64,
    rejected: u64,
    by_reason: impl Iterator<Item = (&'a str, u64)>,
    limit: f64,
) -> Result<(), PreprocessError> {
    if rejected as f64 <= limit * seen as f64 {
        return Ok(());
    }
    let mut by_count: Vec<_> = by_reason.collect();
    by_count.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    Err(PreprocessError::TooManyRejects {
        split,
        rejected,
        seen,
        limit: limit * 100.0,
        examples: by_count
            .iter()
            .map(|(reason, n)| format!("{reason} ({n})"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Finishes a shard: records (renamed into place), index, then the receipt that marks it done.
fn close_shard(
    output: &Path,
    split: Split,
    shard: OpenShard,
    inputs_fingerprint: String,
) -> Result<ShardReceipt, PreprocessError> {
    let paths = ShardPaths::new(output, split, shard.plan.shard as usize);
    let header = shard.writer.finish()?;
    let index_checksum = shards::write_index(&paths.index, &shard.rows)?;
    let receipt = ShardReceipt {
        format_version: FORMAT_VERSION,
        split,
        shard: shard.plan.shard,
        first_input: shard.plan.first_input as u64,
        inputs: shard.plan.inputs as u64,
        inputs_fingerprint,
        records: header.record_count,
        index_checksum,
        rejects: shard.rejects,
    };
    shards::write_json(&paths.done, &receipt)?;
    shards::sync_dir(&output.join(split.name()))?;
    Ok(receipt)
}

fn shard_bytes(output: &Path, split: Split, shard: usize) -> Result<u64, PreprocessError> {
    let paths = ShardPaths::new(output, split, shard);
    let mut total = 0;
    for path in [&paths.records, &paths.index, &paths.done] {
        total += fs::metadata(path)
            .map_err(|source| ShardError::Io {
                path: path.clone(),
                source,
            })?
            .len();
    }
    Ok(total)
}

/// Progress of one split: a bar on a terminal, or a line a minute in a log.
struct SplitProgress {
    bar: ProgressBar,
    lines: bool,
    split: Split,
    total: usize,
    position: usize,
    done_before: usize,
    started: Instant,
    last_line: Instant,
}

impl SplitProgress {
    const LINE_EVERY: Duration = Duration::from_secs(60);

    fn new(mode: Progress, split: Split, total: usize, done: usize) -> Self {
        let bar = if mode == Progress::Bar {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>5} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(split.name());
            bar.set_position(done as u64);
            bar.reset_eta();
            bar
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            lines: mode == Progress::Lines,
            split,
            total,
            position: done,
            done_before: done,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn inc(&mut self) {
        self.position += 1;
        self.bar.inc(1);
        if self.lines && self.last_line.elapsed() >= Self::LINE_EVERY {
            self.last_line = Instant::now();
            let rate = (self.position - self.done_before) as f64
                / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta = (self.total - self.position) as f64 / rate.max(1e-9);
            eprintln!(
                "{}: {}/{} ({:.1}%), {rate:.0} images/s, about {:.0} min left",
                self.split,
                self.position,
                self.total,
                100.0 * self.position as f64 / self.total.max(1) as f64,
                eta / 60.0
            );
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Exact per-pixel sums over the training records, so the mean does not depend on the order
/// in which records are added (or on which run added them).
pub struct MeanAccumulator {
    size: u32,
    sums: Vec<u64>,
    channel_sums: [u128; 3],
    channel_squares: [u128; 3],
    images: u64,
}

impl MeanAccumulator {
    pub fn new(size: u32) -> Self {
        Self {
            size,
            sums: vec![0; (size * size * CHANNELS) as usize],
            channel_sums: [0; 3],
            channel_squares: [0; 3],
            images: 0,
        }
    }

    #[allow(clippy::needless_range_loop)] // three channels side by side read best indexed
    pub fn add(&mut self, record: &[u8]) {
        let mut sums = [0u64; 3];
        let mut squares = [0u64; 3];
        for (pixel, pixel_sums) in record.chunks_exact(3).zip(self.sums.chunks_exact_mut(3)) {
            for c in 0..3 {
                let v = u64::from(pixel[c]);
                pixel_sums[c] += v;
                sums[c] += v;
                squares[c] += v * v;
            }
        }
        for c in 0..3 {
            self.channel_sums[c] += u128::from(sums[c]);
            self.channel_squares[c] += u128::from(squares[c]);
        }
        self.images += 1;
    }

    fn mean_image(&self) -> Vec<f32> {
        let n = self.images.max(1) as f64;
        self.sums.iter().map(|&s| (s as f64 / n) as f32).collect()
    }

    fn channel_stats(&self) -> ([f64; 3], [f64; 3]) {
        let n = (self.images * self.size as u64 * self.size as u64).max(1) as f64;
        let mean = self.channel_sums.map(|s| s as f64 / n);
        let mut std = [0.0; 3];
        for c in 0..3 {
            std[c] = (self.channel_squares[c] as f64 / n - mean[c] * mean[c])
                .max(0.0)
                .sqrt();
        }
        (mean, std)
    }
}

/// Where the mean image comes from: the file of a complete directory, kept as it is, or the
/// training records.
pub enum MeanSource<'a> {
    Kept(MeanStats),
    Computed(&'a MeanAccumulator),
}

/// Checks each split as a whole, then writes the dataset-level files that differ from what
/// is there, the manifest last (it marks the directory complete). Returns whether anything
/// was written.
pub fn finish_dataset(
    output: &Path,
    config: &PreprocessConfig,
    source: &SourceDataset,
    works: &[SplitWork],
    mean: MeanSource,
    previous: Option<&Manifest>,
) -> Result<bool, PreprocessError> {
    let mut splits = BTreeMap::new();
    let mut rejects: Vec<(Split, Reject)> = Vec::new();
    for work in works {
        let receipts: Vec<&ShardReceipt> = work
            .kept
            .iter()
            .map(|r| r.as_ref().expect("every shard is kept or rebuilt"))
            .collect();
        let content = SplitContent::read(output, work.split, receipts.len())?;
        let inputs: u64 = receipts.iter().map(|r| r.inputs).sum();
        let split_rejects: Vec<&Reject> = receipts.iter().flat_map(|r| &r.rejects).collect();
        check_split(work.split, source, &content, &split_rejects, config, output)?;
        rejects.extend(split_rejects.iter().map(|r| (work.split, (*r).clone())));
        let rejected = split_rejects.len() as u64;
        splits.insert(work.split, content.manifest(inputs, rejected));
    }
    let rejects_bytes = shards::rejects_bytes(&rejects)?;
    let rejects_path = output.join(REJECTS_FILE);
    let rejects_current = fs::read(&rejects_path).is_ok_and(|b| b == rejects_bytes);

    let mean = match mean {
        MeanSource::Kept(stats) => stats,
        MeanSource::Computed(acc) => {
            if acc.images == 0 {
                shards::write_atomic(&rejects_path, &rejects_bytes)?;
                return Err(PreprocessError::NoTrainingImages { path: rejects_path });
            }
            let size = config.image_size as usize;
            let checksum = shards::write_npy_f32(
                &output.join(MEAN_FILE),
                &[size, size, 3],
                &acc.mean_image(),
            )?;
            let (channel_mean, channel_std) = acc.channel_stats();
            MeanStats {
                mean_image: MEAN_FILE.to_string(),
                checksum,
                channel_mean,
                channel_std,
            }
        }
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        image_size: config.image_size,
        channels: CHANNELS,
        layout: "u8 HWC RGB".to_string(),
        classes: source.classes.clone(),
        splits,
        rejected: rejects.len() as u64,
        mean,
    };
    if previous == Some(&manifest) && rejects_current {
        return Ok(false);
    }
    if !rejects_current {
        shards::write_atomic(&rejects_path, &rejects_bytes)?;
    }
    shards::write_json(&output.join(MANIFEST_FILE), &manifest)?;
    shards::sync_dir(output)?;
    Ok(true)
}

/// A split as a whole: not too many of its inputs rejected, and no class that lost all its
/// images to rejection (it would silently disappear from training or evaluation).
fn check_split(
    split: Split,
    source: &SourceDataset,
    content: &SplitContent,
    rejects: &[&Reject],
    config: &PreprocessConfig,
    output: &Path,
) -> Result<(), PreprocessError> {
    let inputs = source.split(split);
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rejects {
        *by_reason.entry(r.reason.as_str()).or_default() += 1;
    }
    reject_fraction_ok(
        split,
        inputs.len() as u64,
        rejects.len() as u64,
        by_reason.into_iter(),
        config.max_reject_fraction,
    )?;
    for (label, count) in plan::inputs_per_class(inputs) {
        if content.per_class.get(&label).copied().unwrap_or(0) == 0 {
            let class = &source.classes[label as usize];
            let example = inputs
                .iter()
                .filter(|i| i.label == label && !i.stray)
                .find_map(|i| rejects.iter().find(|r| r.source_path == i.rel))
                .map_or(String::new(), |r| {
                    format!("; e.g. {}: {} ({})", r.source_path, r.reason, r.detail)
                });
            return Err(PreprocessError::ClassLost {
                split,
                wnid: class.wnid.clone(),
                inputs: count,
                output: output.to_path_buf(),
                example,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_is_exact_and_order_independent() {
        // 2×2 images: four RGB pixels each.
        let a: Vec<u8> = vec![0, 10, 20, 30, 40, 50, 1, 2, 3, 4, 5, 6];
        let b: Vec<u8> = vec![255, 10, 21, 31, 40, 50, 1, 2, 3, 4, 5, 6];
        let mut m1 = MeanAccumulator::new(2);
        let mut m2 = MeanAccumulator::new(2);
        m1.add(&a);
        m1.add(&b);
        m2.add(&b);
        m2.add(&a);
        assert_eq!(m1.mean_image(), m2.mean_image());
        assert_eq!(m1.mean_image()[..6], [127.5, 10.0, 20.5, 30.5, 40.0, 50.0]);
        let (mean, std) = m1.channel_stats();
        // Green: 10, 40, 2, 5 in both images.
        assert_eq!(mean[1], 14.25);
        let expected_var = [10.0f64, 40.0, 2.0, 5.0]
            .iter()
            .map(|v| (v - 14.25) * (v - 14.25))
            .sum::<f64>()
            / 4.0;
        assert!((std[1] - expected_var.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn reject_rate_guard_waits_for_enough_inputs() {
        let mut rejected = BTreeMap::new();
        rejected.insert("corrupt", 60);
        assert!(check_reject_rate(Split::Train, 99, &rejected, 0.5).is_ok());
        let err = check_reject_rate(Split::Train, 100, &rejected, 0.5).unwrap_err();
        assert!(err.to_string().contains("corrupt (60)"), "{err}");
        assert!(check_reject_rate(Split::Train, 130, &rejected, 0.5).is_ok());
    }

    #[test]
    fn the_whole_split_fraction_applies_to_small_splits_too() {
        let err = reject_fraction_ok(Split::Val, 16, 16, [("truncated", 16)].into_iter(), 0.5)
            .unwrap_err();
        assert!(err.to_string().contains("16 of 16 inputs"), "{err}");
        reject_fraction_ok(Split::Val, 16, 8, std::iter::empty(), 0.5).unwrap();
    }
}
