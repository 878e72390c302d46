//! Doing it: decoding the inputs of the shards to (re)build in parallel, writing them in input
//! order, and the dataset-level files (rejects, mean image, and last the manifest).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

use super::decode::{self, DecodeOptions, Decoder, RejectReason, Rejection, SHRINK_MARGIN};
use super::ingest::{SourceDataset, SourceImage};
use super::mean::{MeanAccumulator, MeanSource};
use super::plan::{self, Part, ShardPlan, SplitWork};
use super::profile::Profile;
use super::resize::CenterCropResizer;
use super::{ordered, PreprocessError, PreprocessOptions, SplitSummary};
use crate::config::PreprocessConfig;
use crate::files;
use crate::progress::Meter;
use crate::shards::{
    self, IndexRow, Manifest, MeanStats, PartReceipt, PartShard, Reject, ShardError, ShardPaths,
    ShardReceipt, ShardWriter, Split, SplitContent, CHANNELS, FORMAT_VERSION, MANIFEST_FILE,
    MEAN_FILE, PARTS_DIR, REJECTS_FILE,
};

/// One stored image on its way from a worker to the writer.
struct Prepared {
    pixels: Vec<u8>,
    orig_width: u32,
    orig_height: u32,
    format: &'static str,
}

/// What each worker thread keeps between images.
struct Worker {
    decoder: Decoder,
    resizer: CenterCropResizer,
}

fn prepare(
    worker: &mut Worker,
    input: &SourceImage,
    options: &DecodeOptions,
    profile: &Profile,
) -> Result<Prepared, Rejection> {
    if input.stray {
        return Err(Rejection {
            reason: RejectReason::Unsupported,
            detail: "not an image, and not listed in the validation labels".into(),
        });
    }
    let started = Instant::now();
    let bytes = decode::read_capped(&input.path, options.max_file_bytes)?;
    let read = Instant::now();
    let decoded = worker.decoder.decode(&bytes, options)?;
    let decoded_at = Instant::now();
    let source = (decoded.source_width, decoded.source_height);
    let size = worker.resizer.size() as usize;
    let mut pixels = vec![0u8; size * size * CHANNELS as usize];
    worker
        .resizer
        .resize_shrunk_into(&decoded.image, source, decoded.eighths, &mut pixels);
    profile.add_image(
        &decoded,
        read - started,
        decoded_at - read,
        decoded_at.elapsed(),
    );
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
    /// Where full shards go to be finished.
    closer: &'a Closer<'a>,
    /// Which of the writers this is (for the closer's results).
    index: usize,
}

/// Finishes full shards on a thread of its own — syncing a shard to disk takes as long as
/// decoding dozens of images, and the writer must not wait for it. Each shard's records are
/// still synced before its index and receipt are written, so crash safety is unchanged.
struct Closer<'a> {
    jobs: std::sync::mpsc::SyncSender<(usize, OpenShard, String)>,
    failed: &'a std::sync::atomic::AtomicBool,
}

/// A shard the closer finished: (writer, shard number, its receipt, bytes written).
type Closed = (usize, usize, ShardReceipt, u64);

impl SplitWriter<'_> {
    /// Stores (or records the rejection of) input `i`, which belongs to the shard of `plan`.
    fn accept(
        &mut self,
        plan: ShardPlan,
        i: usize,
        result: Result<Prepared, Rejection>,
    ) -> Result<(), PreprocessError> {
        if self
            .closer
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(PreprocessError::CloserFailed);
        }
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
        // A closed channel means the closer stopped on an error, reported when it is joined.
        let _ = self.closer.jobs.send((self.index, shard, fingerprint));
        Ok(())
    }
}

/// Results held by the writer, per worker, while it waits for an earlier input: stored
/// records are small (192 KiB at 256×256), so a deep window costs little memory and keeps
/// every worker busy while one decodes a huge photograph.
const WINDOW_PER_JOB: usize = 32;

/// Builds the shards of every split that can't be kept, in one ordered pass over all of them
/// (so no worker idles at the end of a split); with `mean`, adds the training pixels to it.
pub fn process(
    config: &PreprocessConfig,
    opts: &PreprocessOptions,
    source: &SourceDataset,
    works: &mut [SplitWork],
    mut mean: Option<&mut MeanAccumulator>,
    profile: &Profile,
) -> Result<Vec<SplitSummary>, PreprocessError> {
    // (which work, its split, the shard, the input index) of every input to decode, splits in
    // order.
    let todo: Vec<(usize, Split, ShardPlan, usize)> = works
        .iter()
        .enumerate()
        .flat_map(|(w, work)| {
            let split = work.split;
            work.todo()
                .flat_map(move |plan| plan.range().map(move |i| (w, split, *plan, i)))
        })
        .collect();
    let decode_options = DecodeOptions {
        max_pixels: config.max_pixels,
        max_file_bytes: config.max_file_bytes,
        shrink_floor: config
            .jpeg_shrink_on_load
            .then_some(SHRINK_MARGIN * config.image_size),
    };
    let kept: Vec<u64> = works
        .iter()
        .map(|w| (w.own().count() - w.todo().count()) as u64)
        .collect();
    let reasons: Vec<_> = works.iter().map(|w| w.reasons.clone()).collect();
    let mut progress: Vec<Meter> = works
        .iter()
        .enumerate()
        .map(|(w, work)| {
            let total = work.inputs() as u64;
            let todo_here = todo.iter().filter(|t| t.0 == w).count() as u64;
            Meter::new(
                opts.progress,
                work.split.name(),
                "images",
                total,
                total - todo_here,
            )
        })
        .collect();
    let (jobs, closing) = std::sync::mpsc::sync_channel::<(usize, OpenShard, String)>(2);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let splits: Vec<Split> = works.iter().map(|w| w.split).collect();
    let output = &opts.output;
    let (seen, closed) = std::thread::scope(|scope| {
        let closer_thread = scope.spawn(|| -> Result<Vec<Closed>, PreprocessError> {
            let mut closed = Vec::new();
            for (w, shard, fingerprint) in closing {
                let number = shard.plan.shard as usize;
                let result = close_shard(output, splits[w], shard, fingerprint)
                    .and_then(|r| Ok((w, number, r, shard_bytes(output, splits[w], number)?)));
                match result {
                    Ok(done) => closed.push(done),
                    Err(e) => {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(closed)
        });
        // The writers own the only sender: when they are dropped, the closer drains and ends.
        let seen = {
            let closer = Closer {
                jobs,
                failed: &failed,
            };
            let mut writers: Vec<SplitWriter> = works
                .iter_mut()
                .enumerate()
                .map(|(index, work)| SplitWriter {
                    config,
                    output,
                    source,
                    mean: if work.split == Split::Train {
                        mean.take()
                    } else {
                        None
                    },
                    work,
                    open: None,
                    seen: 0,
                    rejected: BTreeMap::new(),
                    closer: &closer,
                    index,
                })
                .collect();
            ordered::ordered_map(
                todo.len(),
                opts.jobs,
                WINDOW_PER_JOB * opts.jobs.max(1),
                || Worker {
                    decoder: Decoder::default(),
                    resizer: CenterCropResizer::new(config.image_size),
                },
                |worker, k| {
                    let (_, split, _, i) = todo[k];
                    prepare(worker, &source.split(split)[i], &decode_options, profile)
                },
                |k, result| {
                    let (w, _, plan, i) = todo[k];
                    progress[w].inc(1);
                    let written = Instant::now();
                    writers[w].accept(plan, i, result)?;
                    profile.add_write(written.elapsed());
                    if todo.get(k + 1).is_none_or(|next| next.0 != w) {
                        progress[w].finish();
                    }
                    Ok::<_, PreprocessError>(())
                },
            )
            .map(|()| writers.iter().map(|w| w.seen).collect::<Vec<u64>>())
        };
        let closed = closer_thread
            .join()
            .expect("the shard closer does not panic");
        (seen, closed)
    });
    // The closer's own error explains a writer that stopped because of it.
    let closed = closed?;
    let seen = seen?;
    let mut bytes_written = vec![0u64; works.len()];
    for (w, number, receipt, bytes) in closed {
        works[w].kept[number] = Some(receipt);
        bytes_written[w] += bytes;
    }
    let mut summaries = Vec::with_capacity(works.len());
    for (w, work) in works.iter().enumerate() {
        progress[w].finish();
        let mut summary = SplitSummary {
            split: Some(work.split),
            inputs: work.inputs() as u64,
            shards: work.own().count() as u64,
            reused_shards: kept[w],
            processed: seen[w],
            bytes_written: bytes_written[w],
            rebuilt: reasons[w].clone(),
            ..SplitSummary::default()
        };
        summary.count_finished(work);
        summaries.push(summary);
    }
    Ok(summaries)
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
    files::write_json(&paths.done, &receipt)?;
    files::sync_dir(&output.join(split.name()))?;
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
            if acc.images() == 0 {
                files::write_atomic(&rejects_path, &rejects_bytes)?;
                return Err(PreprocessError::NoTrainingImages { path: rejects_path });
            }
            let size = config.image_size as usize;
            let checksum =
                files::write_npy_f32(&output.join(MEAN_FILE), &[size, size, 3], &acc.mean_image())?;
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
        files::write_atomic(&rejects_path, &rejects_bytes)?;
    }
    files::write_json(&output.join(MANIFEST_FILE), &manifest)?;
    files::sync_dir(output)?;
    Ok(true)
}

/// Ends a part: the sums of its training pixels, then its receipt naming its shards (each by
/// its receipt's checksum), written last.
pub fn finish_part(
    output: &Path,
    part: Part,
    works: &[SplitWork],
    mean: &MeanAccumulator,
) -> Result<(), PreprocessError> {
    let (receipt_path, sums_path) = PartReceipt::paths(output, part.index, part.count);
    let dir = output.join(PARTS_DIR);
    fs::create_dir_all(&dir).map_err(|source| PreprocessError::CreateOutput {
        path: dir.clone(),
        source,
    })?;
    let sums = mean.to_bytes();
    files::write_atomic(&sums_path, &sums)?;
    let mut listed = BTreeMap::new();
    for work in works {
        let own = work
            .own()
            .map(|plan| part_shard(output, work.split, plan.shard))
            .collect::<Result<_, _>>()?;
        listed.insert(work.split, own);
    }
    let receipt = PartReceipt {
        format_version: FORMAT_VERSION,
        part: part.index,
        parts: part.count,
        shards: listed,
        sums_checksum: files::file_checksum(&sums),
    };
    files::write_json(&receipt_path, &receipt)?;
    files::sync_dir(&dir)?;
    Ok(())
}

/// How many parts the receipts in `output/parts/` are of (the first one found), if any.
pub fn parts_found(output: &Path) -> Option<u32> {
    fs::read_dir(output.join(PARTS_DIR))
        .ok()?
        .flatten()
        .filter_map(|e| PartReceipt::parse_name(e.file_name().to_str()?))
        .map(|(_, parts)| parts)
        .min()
}

/// An error naming the parts of a job split `parts` ways that have no receipt yet.
pub fn check_parts_present(output: &Path, parts: u32) -> Result<(), PreprocessError> {
    let missing: Vec<Part> = (0..parts)
        .filter(|&index| !PartReceipt::paths(output, index, parts).0.exists())
        .map(|index| Part {
            index,
            count: parts,
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(parts_missing(&missing))
    }
}

fn parts_missing(parts: &[Part]) -> PreprocessError {
    // Named one by one up to a handful: a list of thousands helps nobody.
    const SHOWN: usize = 8;
    let mut names: Vec<String> = parts.iter().take(SHOWN).map(Part::to_string).collect();
    if parts.len() > SHOWN {
        names.push(format!("and {} more", parts.len() - SHOWN));
    }
    PreprocessError::PartsMissing {
        parts: names.join(", "),
    }
}

/// A part's record of one of its shards: the shard and the checksum of its receipt file.
fn part_shard(output: &Path, split: Split, shard: u32) -> Result<PartShard, ShardError> {
    let done = ShardPaths::new(output, split, shard as usize).done;
    let bytes = files::read_regular(&done, 1 << 20).map_err(|source| ShardError::Io {
        path: done.clone(),
        source,
    })?;
    Ok(PartShard {
        shard,
        receipt_checksum: files::file_checksum(&bytes),
    })
}

/// The training-pixel sums of every part of a job split `parts` ways, after checking that
/// each part finished and still describes the shards on disk (`works`, all kept).
pub fn merged_mean(
    output: &Path,
    parts: u32,
    size: u32,
    works: &[SplitWork],
) -> Result<MeanAccumulator, PreprocessError> {
    let mut mean = MeanAccumulator::new(size);
    let mut missing = Vec::new();
    for index in 0..parts {
        let part = Part {
            index,
            count: parts,
        };
        let (receipt_path, sums_path) = PartReceipt::paths(output, index, parts);
        let stale = |why: String| PreprocessError::PartStale { part, why };
        // A damaged receipt or sums file is the part's own: running that part again rewrites
        // both (running the whole job again would only meet them again).
        let damaged = |path: &Path| stale(format!("{} is damaged", path.display()));
        let receipt: PartReceipt = match shards::read_json(&receipt_path) {
            Ok(r) => r,
            Err(ShardError::Incomplete { .. }) => {
                missing.push(part);
                continue;
            }
            Err(_) => return Err(damaged(&receipt_path)),
        };
        for work in works {
            let expected: Vec<PartShard> = work
                .plans
                .iter()
                .filter(|p| part.owns(p.shard))
                .map(|p| part_shard(output, work.split, p.shard))
                .collect::<Result<_, _>>()?;
            if receipt.shards.get(&work.split) != Some(&expected) {
                return Err(stale(format!(
                    "its {} shards changed since it finished",
                    work.split
                )));
            }
        }
        let bytes = files::read_checked(&sums_path, &receipt.sums_checksum)
            .map_err(|_| damaged(&sums_path))?;
        let sums = MeanAccumulator::from_bytes(&bytes, size)
            .ok_or_else(|| stale(format!("{} is not a sums file", sums_path.display())))?;
        mean.merge(&sums);
    }
    if !missing.is_empty() {
        return Err(parts_missing(&missing));
    }
    Ok(mean)
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
