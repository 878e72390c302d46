//! The Parquet files of a dataset: one index per shard (a row per record) and the rejects.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::*;
use crate::files;

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
    let bytes = files::read(path)?;
    index_from_bytes(bytes, path)
}

/// Reads a shard index that must match `checksum`.
pub fn read_index_checked(path: &Path, checksum: &str) -> Result<Vec<IndexRow>, ShardError> {
    index_from_bytes(files::read_checked(path, checksum)?, path)
}

pub(super) fn index_from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Vec<IndexRow>, ShardError> {
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
