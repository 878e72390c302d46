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

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::files::{self, FileError};

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

/// A missing file means an unfinished dataset (and says how to finish it); anything else is
/// an I/O error on that file.
fn missing_or_io(path: &Path) -> impl FnOnce(io::Error) -> ShardError + '_ {
    move |source| match source.kind() {
        io::ErrorKind::NotFound => ShardError::Incomplete {
            path: path.to_path_buf(),
        },
        _ => ShardError::Io {
            path: path.to_path_buf(),
            source,
        },
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

/// The fixed header at the start of every shard file (little-endian):
///
/// | bytes | field |
/// |---|---|
/// | 0..8 | magic `ALXSHARD` |
/// | 8..12 | format version (u32) |
/// | 12..16 | header size in bytes = offset of record 0 (u32, 4096) |
/// | 16..24 | record count (u64) |
/// | 24..32 | bytes per record (u64) = height × width × channels |
/// | 32..36 | height (u32) |
/// | 36..40 | width (u32) |
/// | 40..44 | channels (u32, 3) |
/// | 44..48 | shard number within its split (u32) |
/// | 48..56 | xxh3-64 of bytes 0..48 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub record_count: u64,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub shard: u32,
}

impl ShardHeader {
    pub fn record_bytes(&self) -> u64 {
        self.height as u64 * self.width as u64 * self.channels as u64
    }

    pub fn file_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + self.record_count * self.record_bytes()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut page = vec![0u8; HEADER_BYTES];
        page[0..8].copy_from_slice(&MAGIC);
        page[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        page[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        page[16..24].copy_from_slice(&self.record_count.to_le_bytes());
        page[24..32].copy_from_slice(&self.record_bytes().to_le_bytes());
        page[32..36].copy_from_slice(&self.height.to_le_bytes());
        page[36..40].copy_from_slice(&self.width.to_le_bytes());
        page[40..44].copy_from_slice(&self.channels.to_le_bytes());
        page[44..48].copy_from_slice(&self.shard.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&page[..HEADER_FIELDS_BYTES]);
        page[48..56].copy_from_slice(&sum.to_le_bytes());
        page
    }

    /// Parses and checks a header; `path` only names the file in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, ShardError> {
        let bad = |what: &str| ShardError::BadHeader {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        if bytes.len() < HEADER_FIELDS_BYTES + 8 || bytes[0..8] != MAGIC {
            return Err(ShardError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(ShardError::Version {
                path: path.to_path_buf(),
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        if u64_at(48) != xxhash_rust::xxh3::xxh3_64(&bytes[..HEADER_FIELDS_BYTES]) {
            return Err(bad("header checksum mismatch"));
        }
        if u32_at(12) as usize != HEADER_BYTES {
            return Err(bad("unexpected header size"));
        }
        let header = ShardHeader {
            record_count: u64_at(16),
            height: u32_at(32),
            width: u32_at(36),
            channels: u32_at(40),
            shard: u32_at(44),
        };
        if header.channels != CHANNELS || header.height == 0 || header.width == 0 {
            return Err(bad("unsupported image geometry"));
        }
        if u64_at(24) != header.record_bytes() {
            return Err(bad("record size disagrees with the image geometry"));
        }
        Ok(header)
    }
}

/// Checksum of one stored record, as kept in the shard index.
pub fn record_checksum(record: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(record)
}

/// What identifies a split's content: xxh3-64 over every record's label, checksum and source
/// path, in order. Equal fingerprints mean the same images with the same labels.
pub fn split_fingerprint(rows: &[IndexRow]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for row in rows {
        h.update(&row.label.to_le_bytes());
        h.update(&row.checksum.to_le_bytes());
        h.update(row.source_path.as_bytes());
        h.update(&[0]);
    }
    format!("{:016x}", h.digest())
}

/// Writes one shard file under a temporary name; only `finish` gives it its real name, so a
/// crash can never leave a half-written file that looks like a shard.
pub struct ShardWriter {
    file: BufWriter<File>,
    tmp_path: PathBuf,
    path: PathBuf,
    header: ShardHeader,
}

impl ShardWriter {
    pub fn create(path: &Path, shard: u32, image_size: u32) -> Result<Self, ShardError> {
        let tmp_path = files::tmp_path(path);
        let file = File::create(&tmp_path).map_err(io_err(&tmp_path))?;
        let header = ShardHeader {
            record_count: 0,
            height: image_size,
            width: image_size,
            channels: CHANNELS,
            shard,
        };
        let mut file = BufWriter::with_capacity(1 << 20, file);
        // Placeholder: the real count is only known at the end.
        file.write_all(&header.encode())
            .map_err(io_err(&tmp_path))?;
        Ok(Self {
            file,
            tmp_path,
            path: path.to_path_buf(),
            header,
        })
    }

    pub fn push(&mut self, record: &[u8]) -> Result<(), ShardError> {
        assert_eq!(
            record.len() as u64,
            self.header.record_bytes(),
            "record size"
        );
        self.file
            .write_all(record)
            .map_err(io_err(&self.tmp_path))?;
        self.header.record_count += 1;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.header.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.header.record_count == 0
    }

    /// Writes the final header, syncs, and renames the file into place.
    pub fn finish(self) -> Result<ShardHeader, ShardError> {
        let path = &self.tmp_path;
        let mut file = self.file.into_inner().map_err(|e| ShardError::Io {
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        file.write_all(&self.header.encode())
            .map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        drop(file);
        fs::rename(path, &self.path).map_err(io_err(&self.path))?;
        Ok(self.header)
    }
}

/// A memory-mapped, validated shard file.
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    map: Mmap,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Self, ShardError> {
        let file = File::open(path).map_err(missing_or_io(path))?;
        let actual = file.metadata().map_err(io_err(path))?.len();
        if actual < HEADER_BYTES as u64 {
            return Err(ShardError::Size {
                path: path.to_path_buf(),
                expected: HEADER_BYTES as u64,
                actual,
            });
        }
        // SAFETY: shard files are never modified after they are renamed into place; a reader
        // racing a writer that rebuilds the directory sees either the old or the new inode.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let header = ShardHeader::decode(&map[..HEADER_BYTES], path)?;
        if header.file_bytes() != actual {
            return Err(ShardError::Size {
                path: path.to_path_buf(),
                expected: header.file_bytes(),
                actual,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    pub fn len(&self) -> usize {
        self.header.record_count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pixels of record `i`: `height × width × 3` bytes, row-major, RGB.
    pub fn record(&self, i: usize) -> &[u8] {
        assert!(
            i < self.len(),
            "record {i} out of range for {}",
            self.path.display()
        );
        let size = self.header.record_bytes() as usize;
        let start = HEADER_BYTES + i * size;
        &self.map[start..start + size]
    }

    /// Checks record `i` against the checksum kept in the index.
    pub fn verify(&self, i: usize, checksum: u64) -> Result<(), ShardError> {
        if record_checksum(self.record(i)) == checksum {
            Ok(())
        } else {
            Err(ShardError::Checksum {
                path: self.path.clone(),
                record: i,
            })
        }
    }
}

/// One row of a shard's Parquet index: what record `i` of the shard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRow {
    /// Class index: position of `wnid` among the sorted training wnids.
    pub label: u32,
    pub wnid: String,
    /// Path of the source file relative to the input directory, `/`-separated.
    pub source_path: String,
    pub orig_width: u32,
    pub orig_height: u32,
    /// Format found in the file's bytes (`jpeg`, `png`, ...), whatever its extension says.
    pub source_format: String,
    /// xxh3-64 of the stored record.
    pub checksum: u64,
}

/// The Arrow schema of a shard index.
pub fn index_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("label", DataType::UInt32, false),
        Field::new("wnid", DataType::Utf8, false),
        Field::new("source_path", DataType::Utf8, false),
        Field::new("orig_width", DataType::UInt32, false),
        Field::new("orig_height", DataType::UInt32, false),
        Field::new("source_format", DataType::Utf8, false),
        Field::new("checksum", DataType::UInt64, false),
    ]))
}

/// Writes a shard index atomically; returns its `file_checksum`.
pub fn write_index(path: &Path, rows: &[IndexRow]) -> Result<String, ShardError> {
    let batch = RecordBatch::try_new(
        index_schema(),
        vec![
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.label))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.wnid))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.source_path),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.orig_width),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.orig_height),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.source_format),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.checksum),
            )),
        ],
    )
    .expect("index columns match the index schema");
    Ok(files::write_parquet(path, &batch)?)
}

/// Reads a shard index written by `write_index`.
pub fn read_index(path: &Path) -> Result<Vec<IndexRow>, ShardError> {
    let bytes = fs::read(path).map_err(missing_or_io(path))?;
    index_from_bytes(bytes, path)
}

/// Reads a shard index that must match `checksum`.
pub fn read_index_checked(path: &Path, checksum: &str) -> Result<Vec<IndexRow>, ShardError> {
    index_from_bytes(files::read_checked(path, checksum)?, path)
}

fn index_from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Vec<IndexRow>, ShardError> {
    let batches = files::parquet_from_bytes(bytes, path)?;
    let mut rows = Vec::new();
    for batch in &batches {
        let cols = IndexColumns::from_batch(batch, path)?;
        for i in 0..batch.num_rows() {
            rows.push(IndexRow {
                label: cols.label.value(i),
                wnid: cols.wnid.value(i).to_string(),
                source_path: cols.source_path.value(i).to_string(),
                orig_width: cols.orig_width.value(i),
                orig_height: cols.orig_height.value(i),
                source_format: cols.source_format.value(i).to_string(),
                checksum: cols.checksum.value(i),
            });
        }
    }
    Ok(rows)
}

struct IndexColumns<'a> {
    label: &'a UInt32Array,
    wnid: &'a StringArray,
    source_path: &'a StringArray,
    orig_width: &'a UInt32Array,
    orig_height: &'a UInt32Array,
    source_format: &'a StringArray,
    checksum: &'a UInt64Array,
}

impl<'a> IndexColumns<'a> {
    fn from_batch(batch: &'a RecordBatch, path: &Path) -> Result<Self, ShardError> {
        Ok(Self {
            label: column(batch, "label", path)?,
            wnid: column(batch, "wnid", path)?,
            source_path: column(batch, "source_path", path)?,
            orig_width: column(batch, "orig_width", path)?,
            orig_height: column(batch, "orig_height", path)?,
            source_format: column(batch, "source_format", path)?,
            checksum: column(batch, "checksum", path)?,
        })
    }
}

/// A typed column of a batch, or an error naming the file and the column.
pub fn column<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a T, ShardError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ShardError::Index {
            path: path.to_path_buf(),
            message: format!("column `{name}` is missing or has the wrong type"),
        })
}

/// The Arrow schema of `rejects.parquet`: one row per input that was not stored.
pub fn rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("split", DataType::Utf8, false),
        Field::new("source_path", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
    ]))
}

/// Writes `rejects.parquet` atomically, rows in the given order.
pub fn write_rejects(path: &Path, rejects: &[(Split, Reject)]) -> Result<(), ShardError> {
    Ok(files::write_atomic(path, &rejects_bytes(rejects)?)?)
}

/// The bytes `write_rejects` writes.
pub fn rejects_bytes(rejects: &[(Split, Reject)]) -> Result<Vec<u8>, ShardError> {
    let batch = RecordBatch::try_new(
        rejects_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|(s, _)| s.name()),
            )),
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|(_, r)| &r.source_path),
            )),
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|(_, r)| &r.reason),
            )),
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|(_, r)| &r.detail),
            )),
        ],
    )
    .expect("rejects columns match their schema");
    Ok(files::parquet_bytes(&batch, Path::new(REJECTS_FILE))?)
}

/// Reads `rejects.parquet` back.
pub fn read_rejects(path: &Path) -> Result<Vec<(Split, Reject)>, ShardError> {
    let mut out = Vec::new();
    for batch in files::read_parquet(path)? {
        let split: &StringArray = column(&batch, "split", path)?;
        let source: &StringArray = column(&batch, "source_path", path)?;
        let reason: &StringArray = column(&batch, "reason", path)?;
        let detail: &StringArray = column(&batch, "detail", path)?;
        for i in 0..batch.num_rows() {
            let name = split.value(i);
            let split = Split::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| ShardError::Index {
                    path: path.to_path_buf(),
                    message: format!("unknown split `{name}`"),
                })?;
            out.push((
                split,
                Reject {
                    source_path: source.value(i).to_string(),
                    reason: reason.value(i).to_string(),
                    detail: detail.value(i).to_string(),
                },
            ));
        }
    }
    Ok(out)
}

/// A schema as text, one `name: type[, nullable]` line per field; `schemas/` holds these.
pub fn describe_schema(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            let nullable = if f.is_nullable() { ", nullable" } else { "" };
            format!("{}: {}{nullable}\n", f.name(), f.data_type())
        })
        .collect()
}

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

/// An input that was not stored, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    pub source_path: String,
    /// A short category (`empty`, `truncated`, `corrupt`, ...), for counting.
    pub reason: String,
    /// What the decoder or check said, for a person.
    pub detail: String,
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
            let bytes = fs::read(&path).map_err(missing_or_io(&path))?;
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
    Ok(files::npy_f32_from_bytes(
        &files::read_checked(path, &stats.checksum)?,
        path,
    )?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(count: u64) -> ShardHeader {
        ShardHeader {
            record_count: count,
            height: 4,
            width: 4,
            channels: CHANNELS,
            shard: 7,
        }
    }

    fn write_shard(dir: &Path, records: &[Vec<u8>]) -> PathBuf {
        let path = dir.join("shard-00007.bin");
        let mut writer = ShardWriter::create(&path, 7, 4).unwrap();
        for r in records {
            writer.push(r).unwrap();
        }
        writer.finish().unwrap();
        path
    }

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 48]).collect()
    }

    #[test]
    fn header_round_trips() {
        let h = header(12);
        let page = h.encode();
        assert_eq!(page.len(), HEADER_BYTES);
        assert_eq!(ShardHeader::decode(&page, Path::new("x")).unwrap(), h);
    }

    #[test]
    fn writer_and_reader_agree() {
        let dir = tempfile::tempdir().unwrap();
        let recs = records(5);
        let path = write_shard(dir.path(), &recs);
        assert!(
            !files::tmp_path(&path).exists(),
            "temporary name must be gone"
        );
        let shard = Shard::open(&path).unwrap();
        assert_eq!(shard.len(), 5);
        assert_eq!(shard.header().shard, 7);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(shard.record(i), &r[..]);
            shard.verify(i, record_checksum(r)).unwrap();
        }
        assert!(matches!(
            shard.verify(1, record_checksum(&recs[0])),
            Err(ShardError::Checksum { record: 1, .. })
        ));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER_BYTES as u64 + 5 * 48
        );
    }

    #[test]
    fn unfinished_writer_leaves_no_shard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-00000.bin");
        let mut writer = ShardWriter::create(&path, 0, 4).unwrap();
        writer.push(&[1; 48]).unwrap();
        drop(writer);
        assert!(!path.exists());
        assert!(matches!(
            Shard::open(&path),
            Err(ShardError::Incomplete { .. })
        ));
    }

    #[test]
    fn truncated_shard_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_shard(dir.path(), &records(3));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = Shard::open(&path).err().unwrap();
        assert!(matches!(err, ShardError::Size { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("shard-00007.bin"), "{msg}");
        assert!(msg.contains("alexnet preprocess"), "{msg}");

        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(matches!(Shard::open(&path), Err(ShardError::Size { .. })));
    }

    #[test]
    fn corrupted_header_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_shard(dir.path(), &records(2));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[16] ^= 1; // record count
        std::fs::write(&path, &bytes).unwrap();
        let err = Shard::open(&path).err().unwrap();
        assert!(matches!(err, ShardError::BadHeader { .. }), "{err}");
        assert!(err.to_string().contains("shard-00007.bin"));

        bytes[0] = b'X';
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Shard::open(&path),
            Err(ShardError::BadMagic { .. })
        ));
    }

    #[test]
    fn other_versions_are_refused() {
        let mut page = header(0).encode();
        page[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let err = ShardHeader::decode(&page, Path::new("s.bin")).unwrap_err();
        assert!(matches!(err, ShardError::Version { found, .. } if found == FORMAT_VERSION + 1));
    }

    #[test]
    fn index_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.parquet");
        let rows: Vec<IndexRow> = (0..3)
            .map(|i| IndexRow {
                label: i,
                wnid: format!("n{i:08}"),
                source_path: format!("train/n{i:08}/x_{i}.JPEG"),
                orig_width: 100 + i,
                orig_height: 50 + i,
                source_format: "jpeg".into(),
                checksum: u64::MAX - i as u64,
            })
            .collect();
        write_index(&path, &rows).unwrap();
        assert_eq!(read_index(&path).unwrap(), rows);
        write_index(&path, &[]).unwrap();
        assert!(read_index(&path).unwrap().is_empty());
    }

    #[test]
    fn damaged_index_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.parquet");
        std::fs::write(&path, b"not parquet at all").unwrap();
        let err = read_index(&path).unwrap_err();
        assert!(err.to_string().contains("i.parquet"), "{err}");
    }

    #[test]
    fn schemas_directory_matches_the_code() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        for (file, schema) in [
            ("shard-index.arrow.txt", index_schema()),
            ("rejects.arrow.txt", rejects_schema()),
        ] {
            let documented = std::fs::read_to_string(dir.join(file)).unwrap();
            assert_eq!(
                documented,
                describe_schema(&schema),
                "schemas/{file} is stale"
            );
        }
    }

    #[test]
    fn rejects_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REJECTS_FILE);
        let rejects = vec![
            (
                Split::Val,
                Reject {
                    source_path: "val/x.JPEG".into(),
                    reason: "truncated".into(),
                    detail: "the file ends inside the image data".into(),
                },
            ),
            (
                Split::Train,
                Reject {
                    source_path: "train/a/b.JPEG".into(),
                    reason: "empty".into(),
                    detail: String::new(),
                },
            ),
        ];
        write_rejects(&path, &rejects).unwrap();
        assert_eq!(read_rejects(&path).unwrap(), rejects);
    }

    #[test]
    fn split_reader_locates_records_across_shards() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("train")).unwrap();
        let counts = [3u64, 0, 2];
        let mut expected = Vec::new();
        for (s, &n) in counts.iter().enumerate() {
            let paths = ShardPaths::new(dir.path(), Split::Train, s);
            let mut w = ShardWriter::create(&paths.records, s as u32, 4).unwrap();
            for r in 0..n {
                let rec = vec![(10 * s as u64 + r) as u8; 48];
                w.push(&rec).unwrap();
                expected.push(rec);
            }
            w.finish().unwrap();
            let rows: Vec<IndexRow> = (0..n)
                .map(|r| IndexRow {
                    label: 0,
                    wnid: "n0".into(),
                    source_path: format!("train/n0/{s}_{r}.JPEG"),
                    orig_width: 4,
                    orig_height: 4,
                    source_format: "jpg".into(),
                    checksum: record_checksum(&[(10 * s as u64 + r) as u8; 48]),
                })
                .collect();
            write_index(&paths.index, &rows).unwrap();
        }
        let content = SplitContent::read(dir.path(), Split::Train, 3).unwrap();
        assert_eq!(content.shard_records, counts);
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            image_size: 4,
            channels: 3,
            layout: "u8 HWC RGB".into(),
            classes: vec![],
            splits: [(Split::Train, content.manifest(5, 0))].into(),
            rejected: 0,
            mean: MeanStats {
                mean_image: MEAN_FILE.into(),
                checksum: String::new(),
                channel_mean: [0.0; 3],
                channel_std: [0.0; 3],
            },
        };
        let reader = SplitReader::open_with(dir.path(), &manifest, Split::Train).unwrap();
        assert_eq!(reader.len(), 5);
        assert_eq!(reader.locate(3), (2, 0));
        for (i, rec) in expected.iter().enumerate() {
            assert_eq!(reader.record(i), &rec[..]);
        }
        assert_eq!(reader.read_index().unwrap().len(), 5);

        // An index that no longer matches the manifest's checksum is refused, naming it.
        let index = ShardPaths::new(dir.path(), Split::Train, 2).index;
        let mut bytes = std::fs::read(&index).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&index, bytes).unwrap();
        let err = reader.read_index().unwrap_err();
        assert!(matches!(err, ShardError::FileChecksum { .. }), "{err}");
        assert!(err.to_string().contains("shard-00002.parquet"), "{err}");
    }

    #[test]
    fn fingerprints_see_labels_pixels_and_paths() {
        let row = |label, checksum, path: &str| IndexRow {
            label,
            wnid: "n".into(),
            source_path: path.into(),
            orig_width: 1,
            orig_height: 1,
            source_format: "jpg".into(),
            checksum,
        };
        let base = split_fingerprint(&[row(0, 1, "a"), row(1, 2, "b")]);
        assert_eq!(base, split_fingerprint(&[row(0, 1, "a"), row(1, 2, "b")]));
        for changed in [
            [row(0, 1, "a"), row(0, 2, "b")],
            [row(0, 1, "a"), row(1, 3, "b")],
            [row(0, 1, "a"), row(1, 2, "c")],
            [row(1, 2, "b"), row(0, 1, "a")],
        ] {
            assert_ne!(base, split_fingerprint(&changed));
        }
    }

    #[test]
    fn a_damaged_mean_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MEAN_FILE);
        let checksum = files::write_npy_f32(&path, &[2, 2, 3], &[1.0; 12]).unwrap();
        let mut stats = MeanStats {
            mean_image: MEAN_FILE.into(),
            checksum,
            channel_mean: [1.0; 3],
            channel_std: [0.0; 3],
        };
        assert_eq!(read_mean(&path, &stats).unwrap().1, vec![1.0; 12]);
        stats.checksum = "0000000000000000".into();
        let err = read_mean(&path, &stats).unwrap_err().to_string();
        assert!(
            err.contains("mean.npy") && err.contains("alexnet preprocess"),
            "{err}"
        );
    }
}
