//! `alexnet export`: stored records back to PNG files a person can open.

use std::fs;
use std::io::Write;
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
    let size = data.image_size;
    (0..n).into_par_iter().try_for_each(|i| {
        let path = dir.join(format!("{i}.png"));
        let image = RgbImage::from_raw(size, size, data.checked_record(i)?.to_vec())
            .expect("record size matches the manifest's image size");
        write_png(&path, &image)
    })?;
    let csv_path = dir.join("index.csv");
    let mut csv = String::from("index,source_path,label\n");
    for (i, row) in rows.iter().take(n).enumerate() {
        csv.push_str(&format!(
            "{i},{},{}\n",
            csv_field(&row.source_path),
            row.label
        ));
    }
    fs::File::create(&csv_path)
        .and_then(|mut f| f.write_all(csv.as_bytes()))
        .map_err(|source| ExportError::Write {
            path: csv_path,
            source,
        })?;
    Ok(n)
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

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("train/a/b.JPEG"), "train/a/b.JPEG");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
