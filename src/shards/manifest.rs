//! What a dataset directory holds: the manifest (written last), shard and part receipts, and
//! readers over a whole split.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;
use crate::files;

/// The shard's receipt, written after its records and index: a shard without one is unfinished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardReceipt {
    pub format_version: u32,
    pub split: Split,
    pub shard: u32,
    /// Position of this shard's first input in the split's sorted input list.
    pub first_input: u64,
    /// Inputs this shard covers; `records + rejects.len()`.
    pub inputs: u64,
    /// xxh3-64 over the covered inputs' paths, sizes and modification times: a changed input
    /// file makes the shard out of date.
    pub inputs_fingerprint: String,
    pub records: u64,
    /// `file_checksum` of the shard's index file.
    pub index_checksum: String,
    /// Inputs of this shard that were not stored, in input order.
    pub rejects: Vec<Reject>,
}

/// `parts/part-I-of-N.json`: part `I` of `N` has finished its shards (written last, after
/// the training-pixel sums beside it, `parts/part-I-of-N.sums`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartReceipt {
    pub format_version: u32,
    pub part: u32,
    pub parts: u32,
    /// Per split, this part's shards and the `file_checksum` of each one's receipt, so that
    /// a shard rebuilt since makes the part out of date.
    pub shards: std::collections::BTreeMap<Split, Vec<PartShard>>,
    /// `file_checksum` of the sums file.
    pub sums_checksum: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartShard {
    pub shard: u32,
    pub receipt_checksum: String,
}

impl PartReceipt {
    /// `(receipt, sums)` paths of part `part` of `parts`.
    pub fn paths(dataset: &Path, part: u32, parts: u32) -> (PathBuf, PathBuf) {
        let dir = dataset.join(PARTS_DIR);
        let stem = format!("part-{part}-of-{parts}");
        (
            dir.join(format!("{stem}.json")),
            dir.join(format!("{stem}.sums")),
        )
    }

    /// `(part, parts)` of a receipt file name.
    pub fn parse_name(name: &str) -> Option<(u32, u32)> {
        let (part, parts) = name
            .strip_prefix("part-")?
            .strip_suffix(".json")?
            .split_once("-of-")?;
        Some((part.parse().ok()?, parts.parse().ok()?))
    }
}

impl ShardReceipt {
    pub fn read(path: &Path) -> Result<Self, ShardError> {
        read_json(path)
    }
}

/// A class: its index is its position in `Manifest::classes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassInfo {
    pub wnid: String,
    /// Human-readable name from `LOC_synset_mapping.txt`, or the wnid when there is none.
    pub name: String,
}

/// What one split of the dataset holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitManifest {
    /// Stored images (records).
    pub images: u64,
    /// Number of shard files.
    pub shards: u64,
    /// Classes with at least one stored image.
    pub classes: u64,
    /// Source files found.
    pub inputs: u64,
    /// Source files not stored (see `rejects.parquet`).
    pub rejected: u64,
    /// Records in each shard, in shard order, so a global index maps to a shard without
    /// opening every file.
    pub shard_records: Vec<u64>,
    /// `file_checksum` of each shard's index file, in shard order.
    pub index_checksums: Vec<String>,
    /// `split_fingerprint` of the split's records: what a training run was trained on.
    pub fingerprint: String,
}

/// Training-set pixel statistics (0..255 scale, RGB order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanStats {
    /// The mean image, `[image_size, image_size, 3]` f32 in NumPy's `.npy` format.
    pub mean_image: String,
    /// `file_checksum` of the mean image file.
    pub checksum: String,
    pub channel_mean: [f64; 3],
    pub channel_std: [f64; 3],
}

/// `manifest.json`: written last, so its presence means the dataset is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Side of the square stored images.
    pub image_size: u32,
    pub channels: u32,
    /// Always `"u8 HWC RGB"`.
    pub layout: String,
    pub classes: Vec<ClassInfo>,
    pub splits: std::collections::BTreeMap<Split, SplitManifest>,
    /// Inputs rejected over all splits.
    pub rejected: u64,
    pub mean: MeanStats,
}

impl Manifest {
    pub fn read(dataset: &Path) -> Result<Self, ShardError> {
        let path = dataset.join(MANIFEST_FILE);
        let manifest: Manifest = read_json(&path)?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ShardError::Version {
                path,
                found: manifest.format_version,
                expected: FORMAT_VERSION,
            });
        }
        Ok(manifest)
    }

    pub fn split(&self, split: Split) -> Option<&SplitManifest> {
        self.splits.get(&split)
    }
}

/// What a split's finished shards hold, read back from their indexes: the parts of its
/// `SplitManifest` that describe content.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitContent {
    pub shard_records: Vec<u64>,
    pub index_checksums: Vec<String>,
    pub fingerprint: String,
    /// Stored records per class label.
    pub per_class: std::collections::BTreeMap<u32, u64>,
}

impl SplitContent {
    /// Reads the indexes of shards `0..shards` of `split`.
    pub fn read(dataset: &Path, split: Split, shards: usize) -> Result<Self, ShardError> {
        let mut content = SplitContent {
            shard_records: Vec::with_capacity(shards),
            index_checksums: Vec::with_capacity(shards),
            fingerprint: String::new(),
            per_class: Default::default(),
        };
        let mut all = Vec::new();
        for i in 0..shards {
            let path = ShardPaths::new(dataset, split, i).index;
            let bytes = files::read(&path)?;
            content.index_checksums.push(files::file_checksum(&bytes));
            let rows = index_from_bytes(bytes, &path)?;
            content.shard_records.push(rows.len() as u64);
            all.extend(rows);
        }
        for row in &all {
            *content.per_class.entry(row.label).or_default() += 1;
        }
        content.fingerprint = split_fingerprint(&all);
        Ok(content)
    }

    /// The split's manifest entry, given what the inputs were.
    pub fn manifest(self, inputs: u64, rejected: u64) -> SplitManifest {
        SplitManifest {
            images: self.shard_records.iter().sum(),
            shards: self.shard_records.len() as u64,
            classes: self.per_class.len() as u64,
            inputs,
            rejected,
            shard_records: self.shard_records,
            index_checksums: self.index_checksums,
            fingerprint: self.fingerprint,
        }
    }
}

/// Reads the mean image, checked against the manifest's checksum: (shape, values).
pub fn read_mean(path: &Path, stats: &MeanStats) -> Result<(Vec<usize>, Vec<f32>), ShardError> {
    let (shape, mean) =
        files::npy_f32_from_bytes(&files::read_checked(path, &stats.checksum)?, path)?;
    // A checksum vouches for the bytes, not for what they say: a mean of pixels lies in 0..=255.
    if let Some((at, value)) = mean
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=255.0).contains(*v))
    {
        return Err(ShardError::Index {
            path: path.to_path_buf(),
            message: format!("element {at} is {value}, but a mean of pixels lies in 0..=255"),
        });
    }
    Ok((shape, mean))
}

/// All shards of one split, addressed by a global record index.
pub struct SplitReader {
    shards: Vec<Shard>,
    index_checksums: Vec<String>,
    /// `starts[i]` is the global index of shard `i`'s first record.
    starts: Vec<usize>,
    len: usize,
    dataset: PathBuf,
    split: Split,
}

impl SplitReader {
    /// Opens and validates every shard of `split` listed in the manifest.
    pub fn open(dataset: &Path, split: Split) -> Result<Self, ShardError> {
        let manifest = Manifest::read(dataset)?;
        Self::open_with(dataset, &manifest, split)
    }

    pub fn open_with(
        dataset: &Path,
        manifest: &Manifest,
        split: Split,
    ) -> Result<Self, ShardError> {
        let manifest_path = dataset.join(MANIFEST_FILE);
        let info = manifest.split(split).ok_or_else(|| ShardError::Index {
            path: manifest_path.clone(),
            message: format!("no `{split}` split"),
        })?;
        if info.index_checksums.len() != info.shard_records.len() {
            return Err(ShardError::Index {
                path: manifest_path,
                message: format!(
                    "the `{split}` split lists a different number of indexes and shards"
                ),
            });
        }
        let mut shards = Vec::with_capacity(info.shard_records.len());
        let mut starts = Vec::with_capacity(info.shard_records.len());
        let mut len = 0usize;
        for (i, &expected) in info.shard_records.iter().enumerate() {
            let path = ShardPaths::new(dataset, split, i).records;
            let shard = Shard::open(&path)?;
            if shard.len() as u64 != expected || shard.header().height != manifest.image_size {
                return Err(ShardError::Index {
                    path,
                    message: format!(
                        "holds {} records of {}px, the manifest says {expected} of {}px",
                        shard.len(),
                        shard.header().height,
                        manifest.image_size
                    ),
                });
            }
            starts.push(len);
            len += shard.len();
            shards.push(shard);
        }
        Ok(Self {
            shards,
            index_checksums: info.index_checksums.clone(),
            starts,
            len,
            dataset: dataset.to_path_buf(),
            split,
        })
    }

    /// The files of shard `i`.
    pub fn shard_paths(&self, i: usize) -> ShardPaths {
        ShardPaths::new(&self.dataset, self.split, i)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// (shard, record within the shard) of global record `i`.
    pub fn locate(&self, i: usize) -> (usize, usize) {
        assert!(
            i < self.len,
            "record {i} out of range ({} records)",
            self.len
        );
        let shard = self.starts.partition_point(|&start| start <= i) - 1;
        (shard, i - self.starts[shard])
    }

    /// The pixels of global record `i`.
    pub fn record(&self, i: usize) -> &[u8] {
        let (shard, local) = self.locate(i);
        self.shards[shard].record(local)
    }

    /// The index rows of every record, in global order (reads all Parquet indexes, each
    /// checked against the manifest).
    pub fn read_index(&self) -> Result<Vec<IndexRow>, ShardError> {
        let mut rows = Vec::with_capacity(self.len);
        for (i, shard) in self.shards.iter().enumerate() {
            let path = self.shard_paths(i).index;
            let part = read_index_checked(&path, &self.index_checksums[i])?;
            if part.len() != shard.len() {
                return Err(ShardError::Index {
                    path,
                    message: format!("has {} rows for {} records", part.len(), shard.len()),
                });
            }
            rows.extend(part);
        }
        Ok(rows)
    }
}
