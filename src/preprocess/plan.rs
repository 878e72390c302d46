//! Deciding what to do: the output directory's settings (`plan.json`), which inputs each shard
//! covers, and which shards of an earlier run can be kept.
//!
//! A shard is kept only while its receipt matches the plan *and* the inputs it was made from
//! (their paths, labels, sizes and modification times), and its files pass their checks. So
//! an interrupted run resumes, a changed input file redoes exactly its shard, an added or
//! removed file redoes the shards after it, and a damaged shard is rebuilt — all by running
//! the same command again.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ingest::SourceImage;
use super::mean::MeanAccumulator;
use super::PreprocessError;
use crate::config::PreprocessConfig;
use crate::files;
use crate::lock::{self, DirLock, LOCK_FILE};
use crate::shards::{
    self, Manifest, MeanStats, Shard, ShardError, ShardPaths, ShardReceipt, Split, FORMAT_VERSION,
    PLAN_FILE,
};

/// `plan.json`: the settings an output directory was made with, written before any shard.
/// Re-running with the same settings resumes or repairs; with different ones is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    format_version: u32,
    image_size: u32,
    shard_images: u32,
    max_pixels: u64,
    max_file_bytes: u64,
    jpeg_shrink_on_load: bool,
}

impl Plan {
    pub fn new(config: &PreprocessConfig) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            image_size: config.image_size,
            shard_images: config.shard_images,
            max_pixels: config.max_pixels,
            max_file_bytes: config.max_file_bytes,
            jpeg_shrink_on_load: config.jpeg_shrink_on_load,
        }
    }

    fn differences(&self, other: &Plan) -> String {
        let a = serde_json::to_value(self).expect("plan serialises");
        let b = serde_json::to_value(other).expect("plan serialises");
        a.as_object()
            .expect("plan is an object")
            .iter()
            .filter(|(key, old)| b[key.as_str()] != **old)
            .map(|(key, old)| format!("{key}: {old} there, {} now", b[key.as_str()]))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One of `count` machines' (or processes') share of the work: the shards whose number is
/// `index` modulo `count`, in both splits. Whole shards, so parts never share a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: u32,
    pub count: u32,
}

impl Part {
    pub fn owns(&self, shard: u32) -> bool {
        shard % self.count == self.index
    }

    /// `.alexnet.lock.part-I-of-N`: held by the process working on this part.
    pub fn lock_name(&self) -> String {
        format!("{LOCK_FILE}.part-{}-of-{}", self.index, self.count)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Part {
    type Err = String;
    /// `I/N` with `0 ≤ I < N`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("expected I/N with 0 <= I < N, e.g. 0/4 (got `{text}`)");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Part { index, count })
    }
}

/// What a run may touch in the output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everything: a single-machine run, or a merge.
    Whole,
    /// Only the shards of one part (other parts may be running in the same directory).
    Part(Part),
}

impl Access {
    pub fn owns(&self, shard: u32) -> bool {
        match self {
            Access::Whole => true,
            Access::Part(part) => part.owns(shard),
        }
    }
}

/// The inputs covered by one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    pub shard: u32,
    pub first_input: usize,
    pub inputs: usize,
}

impl ShardPlan {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.first_input..self.first_input + self.inputs
    }
}

pub fn plan_shards(inputs: usize, shard_images: u32) -> Vec<ShardPlan> {
    let per = shard_images as usize;
    (0..inputs.div_ceil(per))
        .map(|k| ShardPlan {
            shard: k as u32,
            first_input: k * per,
            inputs: per.min(inputs - k * per),
        })
        .collect()
}

/// What a shard's inputs were when it was made: xxh3-64 over their relative paths, labels,
/// sizes and modification times.
pub fn inputs_fingerprint(inputs: &[SourceImage]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for input in inputs {
        h.update(input.rel.as_bytes());
        h.update(&[0, input.stray as u8]);
        h.update(&input.label.to_le_bytes());
        h.update(&input.stamp.len.to_le_bytes());
        h.update(&input.stamp.modified_ns.to_le_bytes());
    }
    format!("{:016x}", h.digest())
}

/// An output directory inside the input would be scanned as part of the input next time
/// (as a class folder, or as stray files).
pub fn check_output_outside_input(input: &Path, output: &Path) -> Result<(), PreprocessError> {
    let Ok(input) = input.canonicalize() else {
        return Ok(()); // scanning reports a missing input
    };
    let output = canonical_prefix(output);
    if output.starts_with(&input) {
        return Err(PreprocessError::OutputInsideInput { output, input });
    }
    Ok(())
}

/// `path` with its longest existing ancestor canonicalised (the rest may not exist yet).
fn canonical_prefix(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    loop {
        if let Ok(found) = base.canonicalize() {
            return rest.iter().rev().fold(found, |p, part| p.join(part));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                base = parent;
            }
            _ => return absolute,
        }
    }
}

/// Creates and locks the output directory (shared, plus the part's own lock, for a part), or
/// checks that an existing one was made with this plan; clears what an interrupted run of the
/// same access left half-written. The locks are held until dropped.
pub fn prepare_output(
    output: &Path,
    plan: &Plan,
    access: Access,
) -> Result<Vec<DirLock>, PreprocessError> {
    fs::create_dir_all(output).map_err(|source| PreprocessError::CreateOutput {
        path: output.to_path_buf(),
        source,
    })?;
    let what = "`alexnet preprocess`";
    let locks = match access {
        Access::Whole => vec![DirLock::acquire(output, what)?],
        // The part's own lock first: a duplicate of a running part is refused before it joins
        // the shared directory lock, whose file names the holder for the next refusal.
        Access::Part(part) => {
            let own =
                DirLock::acquire_named(output, &part.lock_name(), lock::Mode::Exclusive, what)?;
            let shared = DirLock::acquire_named(output, LOCK_FILE, lock::Mode::Shared, what)?;
            vec![shared, own]
        }
    };
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
        let foreign = fs::read_dir(output)
            .map_err(|source| ShardError::Io {
                path: output.to_path_buf(),
                source,
            })?
            .flatten()
            .any(|e| {
                let path = e.path();
                let ours = lock::is_lock_file(&e.file_name())
                    || e.file_name() == shards::PARTS_DIR
                    || Split::ALL.iter().any(|s| e.file_name() == s.name());
                !ours && path.extension().is_none_or(|ext| ext != "tmp")
            });
        if foreign {
            return Err(PreprocessError::ForeignOutput {
                path: output.to_path_buf(),
            });
        }
    }
    for dir in Split::ALL.iter().map(|s| output.join(s.name())) {
        fs::create_dir_all(&dir).map_err(|source| PreprocessError::CreateOutput {
            path: dir.clone(),
            source,
        })?;
    }
    if !plan_path.exists() {
        // Parts starting at once may all write it: the same bytes, each atomically.
        files::write_json(&plan_path, plan)?;
        files::sync_dir(output)?;
    }
    remove_unfinished_files(output, access)?;
    Ok(locks)
}

/// Deletes the `*.tmp` files an interrupted run of this access left behind (they are never
/// read): a part only its own shards', since other parts may be writing theirs right now.
fn remove_unfinished_files(output: &Path, access: Access) -> Result<(), PreprocessError> {
    let top = (access == Access::Whole).then(|| output.to_path_buf());
    let dirs = top
        .into_iter()
        .chain(Split::ALL.iter().map(|s| output.join(s.name())));
    for dir in dirs {
        let entries = fs::read_dir(&dir).map_err(|source| ShardError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let mine = shard_number(&entry.file_name()).is_none_or(|n| access.owns(n as u32));
            if mine && path.extension().is_some_and(|ext| ext == "tmp") {
                fs::remove_file(&path).map_err(|source| ShardError::Io { path, source })?;
            }
        }
    }
    Ok(())
}

/// `N` of a file named `shard-N.*`.
fn shard_number(name: &std::ffi::OsStr) -> Option<usize> {
    name.to_str()?
        .strip_prefix("shard-")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// One split's shards: the plan, and for each shard the receipt of a copy that can be kept.
#[derive(Debug)]
pub struct SplitWork {
    pub split: Split,
    pub plans: Vec<ShardPlan>,
    pub fingerprints: Vec<String>,
    pub kept: Vec<Option<ShardReceipt>>,
    /// Which shards this run is responsible for (all but for a part).
    pub mine: Vec<bool>,
    /// Why existing shards are being rebuilt, for the summary (shards never written are not
    /// listed).
    pub reasons: Vec<(u32, String)>,
}

impl SplitWork {
    /// This run's shards that must be (re)built.
    pub fn todo(&self) -> impl Iterator<Item = &ShardPlan> {
        self.plans
            .iter()
            .zip(self.kept.iter().zip(&self.mine))
            .filter(|(_, (kept, mine))| **mine && kept.is_none())
            .map(|(plan, _)| plan)
    }

    pub fn has_todo(&self) -> bool {
        self.todo().next().is_some()
    }

    /// The shards this run is responsible for.
    pub fn own(&self) -> impl Iterator<Item = &ShardPlan> {
        self.plans
            .iter()
            .zip(&self.mine)
            .filter(|(_, mine)| **mine)
            .map(|(plan, _)| plan)
    }

    /// Inputs covered by this run's shards.
    pub fn inputs(&self) -> usize {
        self.own().map(|p| p.inputs).sum()
    }
}

/// How thoroughly kept shards are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Receipt, inputs, header, size and index checksum: cheap, done on every run.
    Files,
    /// Also every record against its checksum (reads every shard).
    Records,
}

/// Decides which shards of `split` can be kept. With `mean`, the pixels of every kept shard
/// are checked and added to it (training shards, when the mean is being computed).
pub fn assess_split(
    output: &Path,
    inputs: &[SourceImage],
    split: Split,
    config: &PreprocessConfig,
    check: Check,
    access: Access,
    mut mean: Option<&mut MeanAccumulator>,
) -> SplitWork {
    let plans = plan_shards(inputs.len(), config.shard_images);
    let mine = plans.iter().map(|p| access.owns(p.shard)).collect();
    let fingerprints: Vec<String> = plans
        .iter()
        .map(|p| inputs_fingerprint(&inputs[p.range()]))
        .collect();
    let mut work = SplitWork {
        split,
        plans,
        fingerprints,
        kept: Vec::new(),
        mine,
        reasons: Vec::new(),
    };
    for ((plan, fingerprint), &mine) in work.plans.iter().zip(&work.fingerprints).zip(&work.mine) {
        if !mine {
            work.kept.push(None);
            continue;
        }
        let paths = ShardPaths::new(output, split, plan.shard as usize);
        let check = if mean.is_some() {
            Check::Records
        } else {
            check
        };
        let kept = match assess_shard(&paths, split, plan, fingerprint, config.image_size, check) {
            Ok((receipt, shard)) => {
                if let Some(mean) = mean.as_deref_mut() {
                    (0..shard.len()).for_each(|i| mean.add(shard.record(i)));
                }
                Some(receipt)
            }
            Err(Some(reason)) => {
                work.reasons.push((plan.shard, reason));
                None
            }
            Err(None) => None,
        };
        work.kept.push(kept);
    }
    work
}

/// Adds the pixels of every kept shard to `mean`, checking each record as it is read; a shard
/// that fails becomes one to rebuild (and adds nothing).
pub fn add_kept_to_mean(output: &Path, work: &mut SplitWork, mean: &mut MeanAccumulator) {
    for ((plan, kept), mine) in work.plans.iter().zip(work.kept.iter_mut()).zip(&work.mine) {
        if kept.is_none() || !mine {
            continue;
        }
        let paths = ShardPaths::new(output, work.split, plan.shard as usize);
        match open_and_check(&paths, Check::Records) {
            Ok(shard) => (0..shard.len()).for_each(|i| mean.add(shard.record(i))),
            Err(reason) => {
                work.reasons.push((plan.shard, reason));
                *kept = None;
            }
        }
    }
}

/// A kept shard: its receipt and its open records file. `Err(None)` when the shard was never
/// finished, `Err(Some(why))` when an existing one can't be kept.
fn assess_shard(
    paths: &ShardPaths,
    split: Split,
    plan: &ShardPlan,
    inputs_fingerprint: &str,
    image_size: u32,
    check: Check,
) -> Result<(ShardReceipt, Shard), Option<String>> {
    let receipt = match ShardReceipt::read(&paths.done) {
        Ok(receipt) => receipt,
        Err(ShardError::Incomplete { .. }) => return Err(None),
        Err(_) => return Err(Some("its receipt is unreadable".into())),
    };
    let matches_plan = receipt.format_version == FORMAT_VERSION
        && receipt.split == split
        && receipt.shard == plan.shard
        && receipt.first_input == plan.first_input as u64
        && receipt.inputs == plan.inputs as u64
        && receipt.records + receipt.rejects.len() as u64 == receipt.inputs;
    if !matches_plan || receipt.inputs_fingerprint != inputs_fingerprint {
        return Err(Some("its input files changed since it was made".into()));
    }
    let shard = open_and_check(paths, check)?;
    if shard.len() as u64 != receipt.records || shard.header().height != image_size {
        return Err(Some("its records disagree with its receipt".into()));
    }
    match shards::read_index_checked(&paths.index, &receipt.index_checksum) {
        Ok(rows) if rows.len() == shard.len() => Ok((receipt, shard)),
        Ok(_) => Err(Some("its index disagrees with its records".into())),
        Err(e) => Err(Some(short_reason(&e))),
    }
}

/// Opens a shard's records file; with `Check::Records`, checks every record against the
/// checksums of its index.
fn open_and_check(paths: &ShardPaths, check: Check) -> Result<Shard, String> {
    let shard = Shard::open(&paths.records).map_err(|e| short_reason(&e))?;
    if check == Check::Records {
        let rows = shards::read_index(&paths.index).map_err(|e| short_reason(&e))?;
        if rows.len() != shard.len() {
            return Err("its index disagrees with its records".into());
        }
        if let Some(bad) = (0..shard.len()).find(|&i| shard.verify(i, rows[i].checksum).is_err()) {
            return Err(format!(
                "record {bad} ({}) does not match its checksum",
                rows[bad].source_path
            ));
        }
    }
    Ok(shard)
}

/// A shard error without its advice (the advice is what is being followed).
fn short_reason(e: &ShardError) -> String {
    match e {
        ShardError::Incomplete { .. } => "a file of it is missing".into(),
        ShardError::Size { .. } => "its records file is truncated or damaged".into(),
        ShardError::BadMagic { .. } | ShardError::BadHeader { .. } | ShardError::Version { .. } => {
            "its records file has a damaged header".into()
        }
        ShardError::Io { source, .. } => format!("it can't be read ({source})"),
        ShardError::FileChecksum { .. } => "its index does not match its checksum".into(),
        _ => "its index is damaged".into(),
    }
}

/// The mean image of a complete directory, if its file still matches the manifest.
pub fn kept_mean(output: &Path, manifest: &Manifest) -> Option<MeanStats> {
    let path = output.join(&manifest.mean.mean_image);
    shards::read_mean(&path, &manifest.mean).ok()?;
    Some(manifest.mean.clone())
}

/// Deletes shard files numbered beyond a split's plan (left by a run over more inputs).
pub fn remove_stale_shards(output: &Path, work: &SplitWork) -> Result<(), PreprocessError> {
    let dir = output.join(work.split.name());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ShardError::Io { path, source }
    };
    for entry in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
        if shard_number(&entry.file_name()).is_some_and(|n| n >= work.plans.len()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Per class label, how many inputs a split had (stray files don't count).
pub fn inputs_per_class(inputs: &[SourceImage]) -> BTreeMap<u32, u64> {
    let mut counts = BTreeMap::new();
    for input in inputs.iter().filter(|i| !i.stray) {
        *counts.entry(input.label).or_default() += 1;
    }
    counts
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
    fn parts_split_the_shards_between_them() {
        let parts: Vec<Part> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for shard in 0..10 {
            assert_eq!(parts.iter().filter(|p| p.owns(shard)).count(), 1);
        }
        assert!(parts[1].owns(4) && parts[1].owns(7));
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            let err = bad.parse::<Part>().unwrap_err();
            assert!(err.contains("0 <= I < N"), "{bad}: {err}");
        }
        assert_eq!(parts[2].lock_name(), ".alexnet.lock.part-2-of-3");
    }

    #[test]
    fn an_output_inside_the_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("imagenet");
        fs::create_dir_all(input.join("train")).unwrap();
        for inside in [
            input.join("shards"),
            input.join("train/new/deeper"),
            input.clone(),
            dir.path().join("imagenet/../imagenet/x"),
        ] {
            let err = check_output_outside_input(&input, &inside).unwrap_err();
            assert!(err.to_string().contains("inside the input"), "{err}");
        }
        check_output_outside_input(&input, &dir.path().join("shards")).unwrap();
        check_output_outside_input(&input, &dir.path().join("imagenet-shards")).unwrap();
    }

    #[test]
    fn fingerprints_change_with_size_time_label_or_name() {
        use super::super::ingest::FileStamp;
        let input = |rel: &str, label, len, modified_ns| SourceImage {
            path: PathBuf::from(rel),
            rel: rel.into(),
            label,
            stamp: FileStamp { len, modified_ns },
            stray: false,
        };
        let base = inputs_fingerprint(&[input("a", 0, 10, 5)]);
        assert_eq!(base, inputs_fingerprint(&[input("a", 0, 10, 5)]));
        for changed in [
            input("b", 0, 10, 5),
            input("a", 1, 10, 5),
            input("a", 0, 11, 5),
            input("a", 0, 10, 6),
        ] {
            assert_ne!(base, inputs_fingerprint(&[changed]));
        }
    }
}
