//! `alexnet export`: stored records back to PNG files a person can open.

use std::fs;
use std::path::{Path, PathBuf};

use image::{ImageEncoder, RgbImage};
use rayon::prelude::*;

use crate::loader::{LoaderData, LoaderError};
use crate::shards::{ShardError, Split};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {message}")]
    Encode { path: PathBuf, message: String },
}

/// Writes `out/<split>/<index>.png` for every record of `split`, and `out/<split>/index.csv`
/// (`index,source_path,label`). `limit` exports only the first records. Every record is
/// checked against its checksum before it is written. Returns the count.
pub fn export(
    data: &Path,
    split: Split,
    out: &Path,
    limit: Option<usize>,
) -> Result<usize, ExportError> {
    let data = LoaderData::open(data, split)?;
    let rows = data.reader.read_index()?;
    let n = limit.map_or(data.len(), |l| l.min(data.len()));
    let dir = out.join(split.name());
    fs::create_dir_all(&dir).map_err(|source| ExportError::Write {
        path: dir.clone(),
        source,
    })?;
    remove_stale_images(&dir, n)?;
    let size = data.image_size;
    (0..n).into_par_iter().try_for_each(|i| {
        let path = dir.join(format!("{i}.png"));
        let image = RgbImage::from_raw(size, size, data.checked_record(i)?.to_vec())
            .expect("record size matches the manifest's image size");
        write_png(&path, &image)
    })?;
    let csv_path = dir.join(INDEX_FILE);
    let write_error = |source: std::io::Error| ExportError::Write {
        path: csv_path.clone(),
        source,
    };
    let mut csv = csv::Writer::from_path(&csv_path).map_err(|e| write_error(e.into()))?;
    for (i, row) in rows.iter().take(n).enumerate() {
        csv.serialize(ExportRow {
            index: i,
            source_path: &row.source_path,
            label: row.label,
        })
        .map_err(|e| write_error(e.into()))?;
    }
    csv.flush().map_err(write_error)?;
    Ok(n)
}

/// Removes `<index>.png` files of an earlier, larger export of the same split (index ≥ `n`),
/// which would otherwise sit beside the new ones as if `index.csv` described them.
fn remove_stale_images(dir: &Path, n: usize) -> Result<(), ExportError> {
    let error = |source| ExportError::Write {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(error)? {
        let entry = entry.map_err(error)?;
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_suffix(".png"))
            .filter(|stem| stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<usize>().ok());
        if index.is_some_and(|i| i >= n) {
            fs::remove_file(entry.path()).map_err(error)?;
        }
    }
    Ok(())
}

/// `DIR/<split>/index.csv`: which stored record (and source file) each PNG is.
pub const INDEX_FILE: &str = "index.csv";

/// One row of `index.csv`: `<index>.png` is record `index`, made from `source_path`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportRow<S = String> {
    pub index: usize,
    pub source_path: S,
    pub label: u32,
}

fn write_png(path: &Path, image: &RgbImage) -> Result<(), ExportError> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| ExportError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    fs::write(path, bytes).map_err(|source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rows_with_commas_and_quotes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        let mut csv = csv::Writer::from_path(&path).unwrap();
        for (index, source_path) in ["train/a/b.JPEG", "a,b", "say \"hi\""].iter().enumerate() {
            csv.serialize(ExportRow {
                index,
                source_path: *source_path,
                label: 7,
            })
            .unwrap();
        }
        drop(csv);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("index,source_path,label\n0,train/a/b.JPEG,7\n1,\"a,b\",7\n"),
            "{text}"
        );
        let rows: Vec<ExportRow> = csv::Reader::from_path(&path)
            .unwrap()
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows[2].source_path, "say \"hi\"");
    }
}
