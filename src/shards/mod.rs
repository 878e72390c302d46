//! The on-disk dataset format, defined once for the writer (`preprocess`) and every reader.
//!
//! A dataset directory holds, per split, numbered shard files of fixed-size records and one
//! Parquet index per shard, plus `manifest.json`, `mean.npy` and `rejects.parquet`:
//!
//! ```text
//! OUT/manifest.json            what is here (written last: its presence means "complete")
//! OUT/plan.json                the settings the directory was made with (written first)
//! OUT/mean.npy                 training-set mean image, f32 [size, size, 3], 0..255 scale
//! OUT/rejects.parquet          every input that was not stored, with the reason
//! OUT/train/shard-00000.bin    header page + records (u8, HWC, RGB), page-aligned
//! OUT/train/shard-00000.parquet   one row per record: label, wnid, source_path, ...
//! OUT/train/shard-00000.done.json written after both files above: the shard is complete
//! ```
//!
//! `schemas/` documents each file for people and other languages.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::{self, FileError};

mod file;
mod index;
mod manifest;
#[cfg(test)]
mod tests;

pub use file::{Shard, ShardHeader, ShardWriter};
pub use index::*;
pub use manifest::*;

/// First bytes of every shard file.
pub const MAGIC: [u8; 8] = *b"ALXSHARD";
/// Version of the shard, index and manifest formats; bump on any incompatible change.
/// Version 2 added the checksums of indexes, inputs and the mean image.
pub const FORMAT_VERSION: u32 = 2;
/// The header fills one page so that records start page-aligned in a memory map.
pub const HEADER_BYTES: usize = 4096;
/// Stored images are RGB.
pub const CHANNELS: u32 = 3;
/// Bytes of the header that carry fields; the rest of the page is zero.
const HEADER_FIELDS_BYTES: usize = 48;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const PLAN_FILE: &str = "plan.json";
pub const MEAN_FILE: &str = "mean.npy";
pub const REJECTS_FILE: &str = "rejects.parquet";
/// Where the parts of a job split over machines leave their receipts until they are merged.
pub const PARTS_DIR: &str = "parts";

/// The fix for damage a plain re-run finds: missing, truncated or unreadable files.
pub const FIX: &str = "re-run `alexnet preprocess` with the same arguments to rebuild it";
/// The fix for damaged pixels, which only a full re-read finds.
pub const FIX_VERIFY: &str =
    "re-run `alexnet preprocess` with the same arguments and --verify to rebuild it";
const FIX_VERSION: &str = "preprocess the images again into a new --output (or delete this one)";

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    // The cause is printed after this by whoever prints the error chain.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a shard file (bad magic number); {FIX}")]
    BadMagic { path: PathBuf },
    #[error(
        "{path} has format version {found}, this build reads version {expected}; {FIX_VERSION}"
    )]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path} has a damaged header ({what}); {FIX}")]
    BadHeader { path: PathBuf, what: String },
    #[error("{path} is {actual} bytes but its header promises {expected}: the file is truncated or damaged; {FIX}")]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{path}: record {record} does not match its checksum; the file is damaged; {FIX_VERIFY}"
    )]
    Checksum { path: PathBuf, record: usize },
    #[error("{path}: {message}; {FIX}")]
    Index { path: PathBuf, message: String },
    #[error(
        "{path} does not match the checksum the manifest holds for it: the file is damaged; {FIX}"
    )]
    FileChecksum { path: PathBuf },
    #[error("{path}: invalid JSON; {FIX}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is missing: the dataset is incomplete (or was never made); re-run `alexnet preprocess` with the same arguments to finish it")]
    Incomplete { path: PathBuf },
}

/// File errors as a dataset's reader reports them: what each means for the dataset, and the
/// fix (a missing file is an unfinished dataset; damage is mended by re-running).
impl From<FileError> for ShardError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => ShardError::Io { path, source },
            FileError::Missing { path } => ShardError::Incomplete { path },
            FileError::Json { path, source } => ShardError::Json { path, source },
            FileError::Parquet { path, message } => ShardError::Index { path, message },
            FileError::Npy { path, message } => ShardError::BadHeader {
                path,
                what: message,
            },
            FileError::Checksum { path } => ShardError::FileChecksum { path },
        }
    }
}

/// Reads a JSON file of one of the dataset's formats.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ShardError> {
    Ok(files::read_json(path)?)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShardError + '_ {
    move |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The two splits a dataset holds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Train, Split::Val];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where shard `index` of a split lives inside a dataset directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPaths {
    pub records: PathBuf,
    pub index: PathBuf,
    pub done: PathBuf,
}

impl ShardPaths {
    pub fn new(dataset: &Path, split: Split, index: usize) -> Self {
        let dir = dataset.join(split.name());
        let stem = format!("shard-{index:05}");
        Self {
            records: dir.join(format!("{stem}.bin")),
            index: dir.join(format!("{stem}.parquet")),
            done: dir.join(format!("{stem}.done.json")),
        }
    }
}
