//! `alexnet preprocess`: an ImageNet-style folder of images → validated shards (see `shards`).
//!
//! Each split's sorted inputs are cut into fixed runs of `shard_images` inputs; shard `k` holds
//! the inputs of run `k` that could be decoded (so shards are independent of each other, and a
//! rejected file only shortens its own shard). Inputs are decoded and resized in parallel and
//! written in input order, so the output is byte-identical whatever the number of jobs. A shard
//! becomes visible only once complete (temporary name, fsync, rename, then its receipt).
//!
//! Running the same command again is always safe and always the fix: `plan` keeps every shard
//! that still matches its inputs and passes its checks, and `write` rebuilds the rest — after
//! an interruption, a changed input file, or damage.

pub mod decode;
pub mod ingest;
pub mod mean;
pub mod ordered;
pub mod plan;
pub mod profile;
pub mod resize;
pub mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Pipeline;
use crate::files::{self, FileError};
use crate::progress::Progress;
use crate::shards::{self, Manifest, ShardError, Split, MANIFEST_FILE, PLAN_FILE, REJECTS_FILE};
use ingest::IngestError;
use mean::{MeanAccumulator, MeanSource};
pub use plan::Part;
use plan::{Access, Check, Plan, SplitWork};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("cannot create output directory {path}")]
    CreateOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not empty and holds no {PLAN_FILE}, so it is not a dataset this tool made; choose a new --output or empty it")]
    ForeignOutput { path: PathBuf },
    #[error("{output} is inside the input {input}: the next run would read it as input; choose an --output outside it")]
    OutputInsideInput { output: PathBuf, input: PathBuf },
    #[error("{path} was made with different settings ({differences}); use a new --output, or delete it to start over")]
    SettingsMismatch { path: PathBuf, differences: String },
    #[error("{split}: {rejected} of {seen} inputs were rejected (limit {limit:.0}%, preprocess.max_reject_fraction), which points at a systemic problem rather than bad files; most common: {examples}")]
    TooManyRejects {
        split: Split,
        rejected: u64,
        seen: u64,
        limit: f64,
        examples: String,
    },
    #[error("{split}: every one of the {inputs} images of class {wnid} was rejected, so the class would silently vanish{example}. Replace its files or remove the class folder, then run the same command again (finished shards of {output} are kept)")]
    ClassLost {
        split: Split,
        wnid: String,
        inputs: u64,
        output: PathBuf,
        example: String,
    },
    #[error("no training image could be stored, so there is no mean image; see {path}")]
    NoTrainingImages { path: PathBuf },
    #[error("cannot start {threads} worker threads ({message}); use fewer --jobs")]
    Threads { threads: usize, message: String },
    #[error("parts {parts} have not finished (no receipt in parts/); run them (--part I/N with the same arguments), then merge")]
    PartsMissing { parts: String },
    #[error("--part {part}: the input makes {train} training and {val} validation shards, so at most {most} parts have work; split it into at most {most} parts (--part I/{most})")]
    TooManyParts {
        part: Part,
        train: usize,
        val: usize,
        most: usize,
    },
    #[error("part {part} is out of date: {why}; run it again (--part {part} with the same arguments), then merge")]
    PartStale { part: Part, why: String },
    #[error("{split} shard {shard} is missing or can't be kept ({why}); {fix}")]
    ShardNotReady {
        split: Split,
        shard: u32,
        why: String,
        fix: String,
    },
    #[error("finishing a shard failed")]
    CloserFailed,
    #[error("nothing to merge: {path} holds no part receipts; run the parts (--part I/N) first, or preprocess without --merge")]
    NothingToMerge { path: PathBuf },
}

/// Files of the dataset: their errors carry the dataset's advice (see `ShardError`).
impl From<FileError> for PreprocessError {
    fn from(e: FileError) -> Self {
        Self::Shard(e.into())
    }
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
    /// Check every record of a complete directory's shards too (a resumed run always does).
    pub verify: bool,
    /// Print where the time went at the end.
    pub profile: bool,
    /// Build only this part's shards (other machines build the others).
    pub part: Option<Part>,
    /// Combine finished parts into the complete dataset.
    pub merge: bool,
}

impl PreprocessOptions {
    /// The line that opens a run: what is done, from where to where, with which settings.
    pub fn describe(&self, pipeline: &Pipeline) -> String {
        let size = pipeline.preprocess.image_size;
        let what = match (self.part, self.merge) {
            (Some(part), _) => format!("part {part} of preprocessing"),
            (None, true) => "merging the parts of".to_string(),
            (None, false) => "preprocessing".to_string(),
        };
        format!(
            "{what} {} → {} ({} pipeline, {size}×{size}, {} jobs)",
            self.input.display(),
            self.output.display(),
            pipeline.name,
            self.jobs,
        )
    }
}

/// What a run did, for the end-of-run summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub output: PathBuf,
    pub image_size: u32,
    pub jobs: usize,
    pub splits: Vec<SplitSummary>,
    pub warnings: Vec<String>,
    /// The directory was already complete and correct: nothing was written.
    pub already_complete: bool,
    /// It was complete before this run, which changed it (inputs changed, or damage).
    pub repaired: bool,
    /// Where the time went, when asked for.
    pub profile: Option<String>,
    /// Time spent decoding and writing (both splits in one pass).
    pub elapsed: Duration,
    /// The part this run built, if it built one.
    pub part: Option<Part>,
    /// The parts merged into the complete dataset, by this run (a merge, or the last part).
    pub merged: Option<u32>,
    /// A part that could not merge yet, and why not.
    pub merge_pending: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SplitSummary {
    pub split: Option<Split>,
    pub inputs: u64,
    pub stored: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Shards kept from an earlier run.
    pub reused_shards: u64,
    pub shards: u64,
    /// Images decoded in this run (excludes kept shards).
    pub processed: u64,
    pub bytes_written: u64,
    /// Existing shards rebuilt, and why.
    pub rebuilt: Vec<(u32, String)>,
}

impl SplitSummary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Adds what the finished shards of `work` hold: their records and their rejects.
    fn count_finished(&mut self, work: &SplitWork) {
        for receipt in work.kept.iter().flatten() {
            self.stored += receipt.records;
            for reject in &receipt.rejects {
                *self.rejected.entry(reject.reason.clone()).or_default() += 1;
            }
        }
    }
}

/// Runs the preprocessing stage (or one part of it, or the merge of the parts): keeps what is
/// still right, rebuilds the rest.
pub fn run(pipeline: &Pipeline, opts: &PreprocessOptions) -> Result<Summary, PreprocessError> {
    let config = &pipeline.preprocess;
    plan::check_output_outside_input(&opts.input, &opts.output)?;
    let source = ingest::scan(&opts.input, opts.val_labels.as_deref())?;
    if let Some(part) = opts.part {
        let shards =
            |split| plan::plan_shards(source.split(split).len(), config.shard_images).len();
        let (train, val) = (shards(Split::Train), shards(Split::Val));
        let most = train.max(val).max(1);
        if part.count as usize > most {
            return Err(PreprocessError::TooManyParts {
                part,
                train,
                val,
                most,
            });
        }
    }
    let access = opts.part.map_or(Access::Whole, Access::Part);
    let locks = plan::prepare_output(&opts.output, &Plan::new(config), access)?;
    let output = &opts.output;
    let mut summary = Summary {
        output: output.clone(),
        image_size: config.image_size,
        jobs: opts.jobs,
        warnings: source.warnings.clone(),
        part: opts.part,
        ..Summary::default()
    };
    let previous = Manifest::read(output).ok();
    if opts.merge {
        return merge(config, opts, &source, previous.as_ref(), summary);
    }

    // A complete directory gets the cheap checks (and every record with --verify); a
    // resumed one always has its records checked, as they are read for the mean anyway.
    let check = if opts.verify || previous.is_none() {
        Check::Records
    } else {
        Check::Files
    };
    // A part always sums its own training pixels; a whole run keeps a valid mean image.
    let kept_mean = match access {
        Access::Whole => previous.as_ref().and_then(|m| plan::kept_mean(output, m)),
        Access::Part(_) => None,
    };
    let mut mean = MeanAccumulator::new(config.image_size);
    let mut computing_mean = kept_mean.is_none();
    let mut works: Vec<SplitWork> = Split::ALL
        .iter()
        .map(|&split| {
            let accumulate = split == Split::Train && computing_mean;
            let inputs = source.split(split);
            let mean = accumulate.then_some(&mut mean);
            plan::assess_split(output, inputs, split, config, check, access, mean)
        })
        .collect();
    // A rebuilt training shard changes the mean: it is then computed over every record.
    if !computing_mean && works[0].has_todo() {
        computing_mean = true;
        plan::add_kept_to_mean(output, &mut works[0], &mut mean);
    }
    let rebuilding = works.iter().any(SplitWork::has_todo);
    // A part in a directory that is complete (a single run's, or merged) has nothing to add:
    // a receipt from it would only wait for the other parts.
    if let (Access::Part(_), Some(_), false) = (access, &previous, rebuilding) {
        summary.already_complete = true;
        return Ok(summary);
    }
    if rebuilding && previous.is_some() {
        // Not complete until the new manifest is written.
        remove_file(&output.join(MANIFEST_FILE))?;
        files::sync_dir(output)?;
    }

    let profile = profile::Profile::new();
    let train_mean = computing_mean.then_some(&mut mean);
    let started = std::time::Instant::now();
    summary.splits = write::process(config, opts, &source, &mut works, train_mean, &profile)?;
    summary.elapsed = started.elapsed();
    summary.profile = opts.profile.then(|| profile.report(opts.jobs));

    if let Access::Part(part) = access {
        write::finish_part(output, part, &works, &mean)?;
        // The last part to finish merges: it can take the directory for itself only once no
        // other part holds it.
        drop(locks);
        match plan::prepare_output(output, &Plan::new(config), Access::Whole) {
            Ok(_whole) => match merge(config, opts, &source, previous.as_ref(), summary.clone()) {
                Ok(merged) => return Ok(merged),
                Err(PreprocessError::PartsMissing { parts }) => {
                    summary.merge_pending = Some(format!("parts {parts} have not finished"));
                }
                Err(e) => return Err(e),
            },
            Err(PreprocessError::Lock(_)) => {
                summary.merge_pending = Some("other parts are still running".into());
            }
            Err(e) => return Err(e),
        }
        return Ok(summary);
    }

    for work in &works {
        plan::remove_stale_shards(output, work)?;
    }
    let mean_source = match kept_mean {
        Some(stats) if !computing_mean => MeanSource::Kept(stats),
        _ => MeanSource::Computed(&mean),
    };
    // While rebuilding, the old manifest is gone and must be written anew.
    let current = previous.as_ref().filter(|_| !rebuilding);
    let wrote = write::finish_dataset(output, config, &source, &works, mean_source, current)?;
    remove_parts(output)?;
    summary.already_complete = !rebuilding && !wrote;
    summary.repaired = previous.is_some() && !summary.already_complete;
    Ok(summary)
}

/// Combines the finished parts of a job into the complete dataset: checks every shard and
/// every part's receipt, sums the parts' training pixels, and writes what a single machine
/// would have written (byte for byte), then removes the parts' receipts.
fn merge(
    config: &crate::config::PreprocessConfig,
    opts: &PreprocessOptions,
    source: &ingest::SourceDataset,
    previous: Option<&Manifest>,
    mut summary: Summary,
) -> Result<Summary, PreprocessError> {
    let output = &opts.output;
    let parts = write::parts_found(output);
    if let Some(n) = parts {
        write::check_parts_present(output, n)?;
    }
    let works: Vec<SplitWork> = Split::ALL
        .iter()
        .map(|&split| {
            let inputs = source.split(split);
            plan::assess_split(
                output,
                inputs,
                split,
                config,
                Check::Files,
                Access::Whole,
                None,
            )
        })
        .collect();
    for work in &works {
        if let Some(plan) = work.todo().next() {
            let why = work
                .reasons
                .iter()
                .find(|(shard, _)| *shard == plan.shard)
                .map_or("it was never finished".to_string(), |(_, why)| why.clone());
            let fix = match parts {
                Some(n) => format!(
                    "run its part again (--part {}/{n} with the same arguments), then merge",
                    plan.shard % n
                ),
                None => "preprocess without --merge to build it".into(),
            };
            return Err(PreprocessError::ShardNotReady {
                split: work.split,
                shard: plan.shard,
                why,
                fix,
            });
        }
    }
    let Some(parts) = parts else {
        if previous.is_some() {
            // Already merged (the receipts are removed once the manifest is written).
            summary.already_complete = true;
            summary.splits = kept_summaries(&works);
            return Ok(summary);
        }
        return Err(PreprocessError::NothingToMerge {
            path: output.join(shards::PARTS_DIR),
        });
    };
    let mean = write::merged_mean(output, parts, config.image_size, &works)?;
    for work in &works {
        plan::remove_stale_shards(output, work)?;
    }
    write::finish_dataset(
        output,
        config,
        source,
        &works,
        MeanSource::Computed(&mean),
        previous,
    )?;
    remove_parts(output)?;
    summary.merged = Some(parts);
    summary.merge_pending = None;
    summary.repaired = true;
    if summary.splits.is_empty() {
        summary.splits = kept_summaries(&works);
    }
    Ok(summary)
}

/// What complete splits hold, for a summary of a run that built nothing.
fn kept_summaries(works: &[SplitWork]) -> Vec<SplitSummary> {
    works
        .iter()
        .map(|work| {
            let mut summary = SplitSummary {
                split: Some(work.split),
                inputs: work.inputs() as u64,
                shards: work.plans.len() as u64,
                reused_shards: work.plans.len() as u64,
                ..SplitSummary::default()
            };
            summary.count_finished(work);
            summary
        })
        .collect()
}

/// The parts' receipts are only needed until the dataset is complete.
fn remove_parts(output: &std::path::Path) -> Result<(), ShardError> {
    let dir = output.join(shards::PARTS_DIR);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ShardError::Io {
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_file(path: &std::path::Path) -> Result<(), ShardError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ShardError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

impl std::fmt::Display for Summary {
    /// The end-of-run table: per split, what was stored and rejected, time and throughput.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already_complete {
            writeln!(
                f,
                "{} is already complete and matches its inputs; nothing to do.",
                self.output.display()
            )?;
        }
        writeln!(
            f,
            "{:<6} {:>9} {:>9} {:>9} {:>7} {:>11}",
            "split", "inputs", "stored", "rejected", "shards", "written"
        )?;
        for s in &self.splits {
            let split = s.split.map_or("-", Split::name);
            writeln!(
                f,
                "{:<6} {:>9} {:>9} {:>9} {:>7} {:>11}",
                split,
                s.inputs,
                s.stored,
                s.rejected_total(),
                s.shards,
                indicatif::HumanBytes(s.bytes_written).to_string(),
            )?;
        }
        let decoded: u64 = self.splits.iter().map(|s| s.processed).sum();
        if decoded > 0 {
            let seconds = self.elapsed.as_secs_f64();
            writeln!(
                f,
                "decoded {decoded} images in {seconds:.1} s: {:.0} images/s with {} jobs",
                decoded as f64 / seconds.max(1e-9),
                self.jobs
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
            let name = s.split.map_or("-", Split::name);
            if s.reused_shards > 0 && !self.already_complete && !self.repaired {
                writeln!(
                    f,
                    "{name}: reused {} complete shard(s) from an earlier run",
                    s.reused_shards
                )?;
            }
            const SHOWN: usize = 10;
            for (shard, why) in s.rebuilt.iter().take(SHOWN) {
                writeln!(f, "{name}: rebuilt shard {shard}: {why}")?;
            }
            if s.rebuilt.len() > SHOWN {
                writeln!(
                    f,
                    "{name}: rebuilt {} more shard(s)",
                    s.rebuilt.len() - SHOWN
                )?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if let Some(part) = self.part {
            match (&self.merge_pending, self.merged) {
                (Some(why), _) => writeln!(
                    f,
                    "part {part} is done; {why}: the last part to finish merges them (or run \
                     the same command with --merge instead of --part once all are done)"
                )?,
                (None, Some(n)) => writeln!(
                    f,
                    "part {part} was the last to finish: merged all {n} parts; {} is complete",
                    self.output.display()
                )?,
                (None, None) => {}
            }
        } else if let Some(n) = self.merged {
            writeln!(f, "merged {n} parts; {} is complete", self.output.display())?;
        }
        if let Some(profile) = &self.profile {
            write!(f, "{profile}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use decode::{DecodeOptions, SHRINK_MARGIN};
    use resize::CenterCropResizer;

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
                    d.eighths,
                    &mut out,
                );
                (d.eighths, out)
            };
            let (full_shrink, full) = stored(None);
            let (shrink, shrunk) = stored(Some(SHRINK_MARGIN * size as u32));
            assert_eq!(full_shrink, 8);
            assert!(shrink < 8, "{w}x{h} should be shrunk");
            let mad = full
                .iter()
                .zip(&shrunk)
                .map(|(a, b)| a.abs_diff(*b) as f64)
                .sum::<f64>()
                / full.len() as f64;
            assert!(
                mad < 0.5,
                "{w}x{h} shrunk to {shrink}/8: mean abs diff {mad:.3}"
            );
        }
    }
}
