//! `alexnet preprocess`: an ImageNet-style folder of images → validated shards (see `shards`).
//!
//! Each split's sorted inputs are cut into fixed runs of `shard_images` inputs; shard `k` holds
//! the inputs of run `k` that could be decoded (so shards are independent of each other, and a
//! rejected file only shortens its own shard). Inputs are decoded and resized in parallel and
//! written in input order, so the output is byte-identical whatever the number of jobs. A shard
//! becomes visible only once complete (temporary name, fsync, rename, then its receipt), so an
//! interrupted run resumes by redoing only the shards without a receipt.

pub mod decode;
pub mod ingest;
pub mod ordered;
pub mod resize;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::config::{Pipeline, PreprocessConfig};
use crate::shards::{
    self, ClassInfo, IndexRow, Manifest, MeanStats, Reject, Shard, ShardError, ShardPaths,
    ShardReceipt, ShardWriter, Split, SplitManifest, CHANNELS, FORMAT_VERSION, MANIFEST_FILE,
    MEAN_FILE, PLAN_FILE, REJECTS_FILE,
};
use decode::{DecodeOptions, Rejection, SHRINK_MARGIN};
use ingest::{IngestError, SourceDataset, SourceImage};
use resize::CenterCropResizer;

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("cannot create output directory {path}")]
    CreateOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not empty and holds no {PLAN_FILE}, so it is not a dataset this tool made; choose a new --output or empty it")]
    ForeignOutput { path: PathBuf },
    #[error("{path} was made with different settings ({differences}); use a new --output, or delete it to start over")]
    SettingsMismatch { path: PathBuf, differences: String },
    #[error("{split}: {rejected} of the first {seen} inputs were rejected (limit {limit:.0}%), which points at a systemic problem rather than bad files; most common: {examples}")]
    TooManyRejects {
        split: Split,
        rejected: u64,
        seen: u64,
        limit: f64,
        examples: String,
    },
    #[error("no training image could be stored, so there is no mean image; see {path}")]
    NoTrainingImages { path: PathBuf },
}

/// What the user asked for on the command line, besides the pipeline.
#[derive(Debug, Clone)]
pub struct PreprocessOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Worker threads for decoding and resizing.
    pub jobs: usize,
    /// Where `LOC_val_solution.csv` is, when it is not beside the input.
    pub val_labels: Option<PathBuf>,
    /// How to show progress on stderr.
    pub progress: Progress,
}

/// How a long run shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A live progress bar (stderr is a terminal).
    Bar,
    /// A plain line every minute (stderr is a log file or a pipe).
    Lines,
    /// Nothing.
    Off,
}

/// What a run did, for the end-of-run summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub output: PathBuf,
    pub image_size: u32,
    pub jobs: usize,
    pub splits: Vec<SplitSummary>,
    pub warnings: Vec<String>,
    /// The directory was already complete: nothing was done.
    pub already_complete: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SplitSummary {
    pub split: Option<Split>,
    pub inputs: u64,
    pub stored: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Shards reused from an earlier, interrupted run.
    pub reused_shards: u64,
    pub shards: u64,
    /// Images decoded in this run (excludes reused shards).
    pub processed: u64,
    pub elapsed: Duration,
    pub bytes_written: u64,
}

impl SplitSummary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn images_per_sec(&self) -> f64 {
        self.processed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `plan.json`: the settings an output directory was made with, written before any shard.
/// Re-running with the same plan resumes; with a different one is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    format_version: u32,
    image_size: u32,
    shard_images: u32,
    max_pixels: u64,
    max_file_bytes: u64,
    jpeg_shrink_on_load: bool,
    classes: u64,
    splits: BTreeMap<Split, PlanSplit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanSplit {
    inputs: u64,
    /// xxh3-64 over every input's relative path and label, in order.
    fingerprint: String,
}

impl Plan {
    fn new(config: &PreprocessConfig, source: &SourceDataset) -> Self {
        let splits = Split::ALL
            .iter()
            .map(|&split| {
                let inputs = source.split(split);
                (
                    split,
                    PlanSplit {
                        inputs: inputs.len() as u64,
                        fingerprint: format!("{:016x}", fingerprint(inputs)),
                    },
                )
            })
            .collect();
        Self {
            format_version: FORMAT_VERSION,
            image_size: config.image_size,
            shard_images: config.shard_images,
            max_pixels: config.max_pixels,
            max_file_bytes: config.max_file_bytes,
            jpeg_shrink_on_load: config.jpeg_shrink_on_load,
            classes: source.classes.len() as u64,
            splits,
        }
    }

    fn differences(&self, other: &Plan) -> String {
        let a = serde_json::to_value(self).expect("plan serialises");
        let b = serde_json::to_value(other).expect("plan serialises");
        let mut out = Vec::new();
        for (key, old) in a.as_object().expect("plan is an object") {
            let new = &b[key];
            if old != new {
                let what = if key == "splits" {
                    "the input files".to_string()
                } else {
                    format!("{key}: {old} there, {new} now")
                };
                out.push(what);
            }
        }
        out.join(", ")
    }
}

fn fingerprint(inputs: &[SourceImage]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for input in inputs {
        hasher.update(input.rel.as_bytes());
        hasher.update(&[0]);
        hasher.update(&input.label.to_le_bytes());
    }
    hasher.digest()
}

/// The inputs covered by one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShardPlan {
    shard: u32,
    first_input: usize,
    inputs: usize,
}

fn plan_shards(inputs: usize, shard_images: u32) -> Vec<ShardPlan> {
    let per = shard_images as usize;
    (0..inputs.div_ceil(per))
        .map(|k| ShardPlan {
            shard: k as u32,
            first_input: k * per,
            inputs: per.min(inputs - k * per),
        })
        .collect()
}

/// Runs the whole preprocessing stage.
pub fn run(pipeline: &Pipeline, opts: &PreprocessOptions) -> Result<Summary, PreprocessError> {
    let config = &pipeline.preprocess;
    let source = ingest::scan(&opts.input, opts.val_labels.as_deref())?;
    let plan = Plan::new(config, &source);
    prepare_output(&opts.output, &plan)?;

    let mut summary = Summary {
        output: opts.output.clone(),
        image_size: config.image_size,
        jobs: opts.jobs,
        warnings: source.warnings.clone(),
        ..Summary::default()
    };
    if opts.output.join(MANIFEST_FILE).exists() {
        let manifest = Manifest::read(&opts.output)?;
        summary.already_complete = true;
        summary.splits = summary_from_manifest(&manifest, &opts.output)?;
        return Ok(summary);
    }

    let mut mean = MeanAccumulator::new(config.image_size);
    let mut receipts = BTreeMap::new();
    for split in Split::ALL {
        let (split_summary, split_receipts) =
            process_split(config, opts, &source, split, &mut mean)?;
        summary.splits.push(split_summary);
        receipts.insert(split, split_receipts);
    }
    finish_dataset(&opts.output, config, &source.classes, &receipts, &mean)?;
    Ok(summary)
}

/// Creates the output directory, or checks that an existing one was made with this plan.
fn prepare_output(output: &Path, plan: &Plan) -> Result<(), PreprocessError> {
    let plan_path = output.join(PLAN_FILE);
    if plan_path.exists() {
        let existing: Plan = shards::read_json(&plan_path)?;
        if &existing != plan {
            return Err(PreprocessError::SettingsMismatch {
                path: output.to_path_buf(),
                differences: existing.differences(plan),
            });
        }
    } else {
        // Leftovers of an interrupted first run (a half-written plan) don't make it foreign.
        let non_empty = fs::read_dir(output)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().extension().is_none_or(|ext| ext != "tmp"))
            })
            .unwrap_or(false);
        if non_empty {
            return Err(PreprocessError::ForeignOutput {
                path: output.to_path_buf(),
            });
        }
    }
    for dir in [output.to_path_buf()]
        .into_iter()
        .chain(Split::ALL.iter().map(|s| output.join(s.name())))
    {
        fs::create_dir_all(&dir).map_err(|source| PreprocessError::CreateOutput {
            path: dir.clone(),
            source,
        })?;
    }
    if !plan_path.exists() {
        shards::write_json(&plan_path, plan)?;
        shards::sync_dir(output)?;
    }
    remove_unfinished_files(output)
}

/// Deletes `*.tmp` files that an interrupted run left behind (they are never read).
fn remove_unfinished_files(output: &Path) -> Result<(), PreprocessError> {
    let dirs = [output.to_path_buf()]
        .into_iter()
        .chain(Split::ALL.iter().map(|s| output.join(s.name())));
    for dir in dirs {
        let entries = fs::read_dir(&dir).map_err(|source| ShardError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                fs::remove_file(&path).map_err(|source| ShardError::Io { path, source })?;
            }
        }
    }
    Ok(())
}

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
    split: Split,
    /// Training images feed the mean image; validation images don't.
    mean: Option<&'a mut MeanAccumulator>,
    open: Option<OpenShard>,
    receipts: Vec<Option<ShardReceipt>>,
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
        let input = &self.source.split(self.split)[i];
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
            self.split,
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
        let path = ShardPaths::new(self.output, self.split, plan.shard as usize).records;
        Ok(OpenShard {
            plan,
            writer: ShardWriter::create(&path, plan.shard, self.config.image_size)?,
            rows: Vec::with_capacity(plan.inputs),
            rejects: Vec::new(),
        })
    }

    fn finish_shard(&mut self) -> Result<(), PreprocessError> {
        let shard = self.open.take().expect("a shard is open");
        let number = shard.plan.shard;
        let receipt = close_shard(self.output, self.split, shard)?;
        self.bytes_written += shard_bytes(self.output, self.split, number)?;
        self.receipts[number as usize] = Some(receipt);
        Ok(())
    }
}

fn process_split(
    config: &PreprocessConfig,
    opts: &PreprocessOptions,
    source: &SourceDataset,
    split: Split,
    mean: &mut MeanAccumulator,
) -> Result<(SplitSummary, Vec<ShardReceipt>), PreprocessError> {
    let started = Instant::now();
    let inputs = source.split(split);
    let plans = plan_shards(inputs.len(), config.shard_images);
    let mut mean = (split == Split::Train).then_some(mean);

    // Shards finished by an earlier run are verified and reused; the rest are (re)done.
    let mut receipts = Vec::with_capacity(plans.len());
    let mut todo = Vec::new();
    for plan in &plans {
        let paths = ShardPaths::new(&opts.output, split, plan.shard as usize);
        let reused = reuse_shard(&paths, split, plan, config.image_size, mean.as_deref_mut())?;
        if reused.is_none() {
            todo.push(*plan);
        }
        receipts.push(reused);
    }
    let reused_shards = (plans.len() - todo.len()) as u64;

    let work: Vec<(ShardPlan, usize)> = todo
        .iter()
        .flat_map(|plan| {
            (plan.first_input..plan.first_input + plan.inputs).map(move |i| (*plan, i))
        })
        .collect();
    let mut progress = SplitProgress::new(
        opts.progress,
        split,
        inputs.len(),
        inputs.len() - work.len(),
    );
    let decode_options = DecodeOptions {
        max_pixels: config.max_pixels,
        max_file_bytes: config.max_file_bytes,
        shrink_floor: config
            .jpeg_shrink_on_load
            .then_some(SHRINK_MARGIN * config.image_size),
    };
    let mut writer = SplitWriter {
        config,
        output: &opts.output,
        source,
        split,
        mean,
        open: None,
        receipts,
        seen: 0,
        rejected: BTreeMap::new(),
        bytes_written: 0,
    };
    ordered::ordered_map(
        work.len(),
        opts.jobs,
        4 * opts.jobs.max(1) + 16,
        || CenterCropResizer::new(config.image_size),
        |resizer, k| prepare(resizer, &inputs[work[k].1], &decode_options),
        |k, result| {
            progress.inc();
            let (plan, i) = work[k];
            writer.accept(plan, i, result)
        },
    )?;
    progress.finish();

    let receipts: Vec<ShardReceipt> = writer
        .receipts
        .into_iter()
        .map(|r| r.expect("every shard is reused or written"))
        .collect();
    let mut summary = SplitSummary {
        split: Some(split),
        inputs: inputs.len() as u64,
        shards: plans.len() as u64,
        reused_shards,
        processed: writer.seen,
        bytes_written: writer.bytes_written,
        elapsed: started.elapsed(),
        ..SplitSummary::default()
    };
    for receipt in &receipts {
        summary.stored += receipt.records;
        for reject in &receipt.rejects {
            *summary.rejected.entry(reject.reason.clone()).or_default() += 1;
        }
    }
    Ok((summary, receipts))
}

fn check_reject_rate(
    split: Split,
    seen: u64,
    rejected: &BTreeMap<&'static str, u64>,
    limit: f64,
) -> Result<(), PreprocessError> {
    const MIN_SEEN: u64 = 100;
    let total: u64 = rejected.values().sum();
    if seen < MIN_SEEN || total as f64 <= limit * seen as f64 {
        return Ok(());
    }
    let mut by_count: Vec<_> = rejected.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1));
    Err(PreprocessError::TooManyRejects {
        split,
        rejected: total,
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
) -> Result<ShardReceipt, PreprocessError> {
    let paths = ShardPaths::new(output, split, shard.plan.shard as usize);
    let header = shard.writer.finish()?;
    shards::write_index(&paths.index, &shard.rows)?;
    let receipt = ShardReceipt {
        format_version: FORMAT_VERSION,
        split,
        shard: shard.plan.shard,
        first_input: shard.plan.first_input as u64,
        inputs: shard.plan.inputs as u64,
        records: header.record_count,
        rejects: shard.rejects,
    };
    shards::write_json(&paths.done, &receipt)?;
    shards::sync_dir(&output.join(split.name()))?;
    Ok(receipt)
}

fn shard_bytes(output: &Path, split: Split, shard: u32) -> Result<u64, PreprocessError> {
    let paths = ShardPaths::new(output, split, shard as usize);
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

/// A shard from an earlier run is reused only if its receipt matches the plan and its files
/// pass every check, records against their checksums included. Its pixels are added to `mean`
/// (training shards), so the result equals an uninterrupted run.
fn reuse_shard(
    paths: &ShardPaths,
    split: Split,
    plan: &ShardPlan,
    image_size: u32,
    mean: Option<&mut MeanAccumulator>,
) -> Result<Option<ShardReceipt>, PreprocessError> {
    let Ok(receipt) = ShardReceipt::read(&paths.done) else {
        return Ok(None);
    };
    let matches_plan = receipt.format_version == FORMAT_VERSION
        && receipt.split == split
        && receipt.shard == plan.shard
        && receipt.first_input == plan.first_input as u64
        && receipt.inputs == plan.inputs as u64
        && receipt.records + receipt.rejects.len() as u64 == receipt.inputs;
    if !matches_plan {
        return Ok(None);
    }
    let Ok(shard) = Shard::open(&paths.records) else {
        return Ok(None);
    };
    let Ok(rows) = shards::read_index(&paths.index) else {
        return Ok(None);
    };
    if shard.len() as u64 != receipt.records
        || rows.len() != shard.len()
        || shard.header().height != image_size
    {
        return Ok(None);
    }
    if rows
        .iter()
        .enumerate()
        .any(|(i, row)| shard.verify(i, row.checksum).is_err())
    {
        return Ok(None);
    }
    if let Some(mean) = mean {
        for i in 0..shard.len() {
            mean.add(shard.record(i));
        }
    }
    Ok(Some(receipt))
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
struct MeanAccumulator {
    size: u32,
    sums: Vec<u64>,
    channel_sums: [u128; 3],
    channel_squares: [u128; 3],
    images: u64,
}

impl MeanAccumulator {
    fn new(size: u32) -> Self {
        Self {
            size,
            sums: vec![0; (size * size * CHANNELS) as usize],
            channel_sums: [0; 3],
            channel_squares: [0; 3],
            images: 0,
        }
    }

    #[allow(clippy::needless_range_loop)] // three channels side by side read best indexed
    fn add(&mut self, record: &[u8]) {
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

/// Writes the dataset-level files; the manifest goes last and marks the directory complete.
fn finish_dataset(
    output: &Path,
    config: &PreprocessConfig,
    classes: &[ClassInfo],
    receipts: &BTreeMap<Split, Vec<ShardReceipt>>,
    mean: &MeanAccumulator,
) -> Result<(), PreprocessError> {
    let rejects: Vec<(Split, Reject)> = receipts
        .iter()
        .flat_map(|(&split, rs)| {
            rs.iter()
                .flat_map(move |r| r.rejects.iter().map(move |j| (split, j.clone())))
        })
        .collect();
    shards::write_rejects(&output.join(REJECTS_FILE), &rejects)?;
    if mean.images == 0 {
        return Err(PreprocessError::NoTrainingImages {
            path: output.join(REJECTS_FILE),
        });
    }
    let size = config.image_size as usize;
    shards::write_npy_f32(
        &output.join(MEAN_FILE),
        &[size, size, 3],
        &mean.mean_image(),
    )?;
    let (channel_mean, channel_std) = mean.channel_stats();

    let mut splits = BTreeMap::new();
    let mut rejected = 0;
    for (&split, split_receipts) in receipts {
        let paths: Vec<PathBuf> = (0..split_receipts.len())
            .map(|k| ShardPaths::new(output, split, k).index)
            .collect();
        let classes_present = count_classes(&paths)?;
        let split_rejected: u64 = split_receipts.iter().map(|r| r.rejects.len() as u64).sum();
        rejected += split_rejected;
        splits.insert(
            split,
            SplitManifest {
                images: split_receipts.iter().map(|r| r.records).sum(),
                shards: split_receipts.len() as u64,
                classes: classes_present,
                inputs: split_receipts.iter().map(|r| r.inputs).sum(),
                rejected: split_rejected,
                shard_records: split_receipts.iter().map(|r| r.records).collect(),
            },
        );
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        image_size: config.image_size,
        channels: CHANNELS,
        layout: "u8 HWC RGB".to_string(),
        classes: classes.to_vec(),
        splits,
        rejected,
        mean: MeanStats {
            mean_image: MEAN_FILE.to_string(),
            channel_mean,
            channel_std,
        },
    };
    shards::write_json(&output.join(MANIFEST_FILE), &manifest)?;
    shards::sync_dir(output)?;
    Ok(())
}

fn count_classes(index_paths: &[PathBuf]) -> Result<u64, PreprocessError> {
    let mut labels = std::collections::BTreeSet::new();
    for path in index_paths {
        labels.extend(shards::read_index(path)?.into_iter().map(|r| r.label));
    }
    Ok(labels.len() as u64)
}

fn summary_from_manifest(
    manifest: &Manifest,
    output: &Path,
) -> Result<Vec<SplitSummary>, PreprocessError> {
    let rejects = shards::read_rejects(&output.join(REJECTS_FILE))?;
    Ok(manifest
        .splits
        .iter()
        .map(|(&split, info)| {
            let mut rejected = BTreeMap::new();
            for (s, r) in &rejects {
                if *s == split {
                    *rejected.entry(r.reason.clone()).or_default() += 1;
                }
            }
            SplitSummary {
                split: Some(split),
                inputs: info.inputs,
                stored: info.images,
                rejected,
                reused_shards: info.shards,
                shards: info.shards,
                ..SplitSummary::default()
            }
        })
        .collect())
}

impl std::fmt::Display for Summary {
    /// The end-of-run table: per split, what was stored and rejected, time and throughput.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already_complete {
            writeln!(
                f,
                "{} is already complete (manifest.json present); nothing to do.",
                self.output.display()
            )?;
        }
        writeln!(
            f,
            "{:<6} {:>9} {:>9} {:>9} {:>7} {:>9} {:>10} {:>7}",
            "split", "inputs", "stored", "rejected", "shards", "time", "images/s", "written"
        )?;
        for s in &self.splits {
            let split = s.split.map_or("-", Split::name);
            writeln!(
                f,
                "{:<6} {:>9} {:>9} {:>9} {:>7} {:>8.1}s {:>10.0} {:>7}",
                split,
                s.inputs,
                s.stored,
                s.rejected_total(),
                s.shards,
                s.elapsed.as_secs_f64(),
                s.images_per_sec(),
                human_bytes(s.bytes_written),
            )?;
        }
        for s in &self.splits {
            if !s.rejected.is_empty() {
                let reasons: Vec<String> =
                    s.rejected.iter().map(|(r, n)| format!("{r} {n}")).collect();
                writeln!(
                    f,
                    "{} rejects: {} (see {})",
                    s.split.map_or("-", Split::name),
                    reasons.join(", "),
                    self.output.join(REJECTS_FILE).display()
                )?;
            }
            if s.reused_shards > 0 && !self.already_complete {
                writeln!(
                    f,
                    "{}: reused {} complete shard(s) from an earlier run",
                    s.split.map_or("-", Split::name),
                    s.reused_shards
                )?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_inputs_in_fixed_runs() {
        let plans = plan_shards(10, 4);
        let covered: Vec<_> = plans.iter().map(|p| (p.first_input, p.inputs)).collect();
        assert_eq!(covered, [(0, 4), (4, 4), (8, 2)]);
        assert!(plan_shards(0, 4).is_empty());
        assert_eq!(plan_shards(8, 4).len(), 2);
    }

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

    /// Shrink-on-load must stay within a fraction of a level of a full decode, for every
    /// shrink factor and for odd sizes whose last DCT block is partial.
    #[test]
    fn shrink_on_load_stays_close_to_a_full_decode() {
        let size = 64;
        for (w, h) in [(1100, 530), (1203, 2111), (4101, 2230)] {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let disc = (x as i64 - w as i64 / 2).pow(2) + (y as i64 - h as i64 / 2).pow(2)
                    < (h.min(w) as i64 / 3).pow(2);
                let noise = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 28) as u8;
                let base = if disc { [210, 70, 40] } else { [30, 100, 170] };
                image::Rgb([
                    base[0] + noise,
                    base[1] + (x * 40 / w) as u8,
                    base[2] + (y * 40 / h) as u8,
                ])
            });
            let mut bytes = Vec::new();
            jpeg_encoder::Encoder::new(&mut bytes, 90)
                .encode(
                    img.as_raw(),
                    w as u16,
                    h as u16,
                    jpeg_encoder::ColorType::Rgb,
                )
                .unwrap();
            let stored = |shrink_floor| {
                let options = DecodeOptions {
                    max_pixels: u64::MAX,
                    max_file_bytes: u64::MAX,
                    shrink_floor,
                };
                let d = decode::decode_bytes(&bytes, &options).unwrap();
                let mut out = vec![0u8; size * size * 3];
                CenterCropResizer::new(size as u32).resize_shrunk_into(
                    &d.image,
                    (d.source_width, d.source_height),
                    d.shrink,
                    &mut out,
                );
                (d.shrink, out)
            };
            let (full_shrink, full) = stored(None);
            let (shrink, shrunk) = stored(Some(SHRINK_MARGIN * size as u32));
            assert_eq!(full_shrink, 1);
            assert!(shrink > 1, "{w}x{h} should be shrunk");
            let mad = full
                .iter()
                .zip(&shrunk)
                .map(|(a, b)| a.abs_diff(*b) as f64)
                .sum::<f64>()
                / full.len() as f64;
            assert!(
                mad < 0.5,
                "{w}x{h} shrunk by {shrink}: mean abs diff {mad:.3}"
            );
        }
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
}
