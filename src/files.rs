//! Files, written so that nothing is ever half-written under its final name, and read with
//! errors that name the file: atomic writes, JSON, Parquet, `.npy`, small-file checksums.
//! Every on-disk format of the crate (shards, checkpoints, run logs, reports, plots) is
//! written through here; each format's module adds what its errors should advise.

use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    // The cause is printed after this by whoever prints the error chain.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is missing")]
    Missing { path: PathBuf },
    #[error("{path}: invalid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Npy { path: PathBuf, message: String },
    #[error("{path} does not match the checksum recorded for it: the file is damaged")]
    Checksum { path: PathBuf },
}

impl FileError {
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Missing { path }
            | Self::Json { path, .. }
            | Self::Parquet { path, .. }
            | Self::Npy { path, .. }
            | Self::Checksum { path } => path,
        }
    }
}

pub fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A missing file is `Missing` (its reader knows what that means); anything else is an I/O
/// error on that file.
fn missing_or_io(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| match source.kind() {
        io::ErrorKind::NotFound => FileError::Missing {
            path: path.to_path_buf(),
        },
        _ => FileError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// The most any file is read whole or streamed here (checkpoints are the largest, ~0.5 GB).
pub const READ_LIMIT: u64 = 16 << 30;

/// Refuses what must not be read: anything but a regular file (opening a FIFO blocks until a
/// writer comes, `/dev/zero` never ends) and a file of more than `limit` bytes. Symlinks are
/// followed. Returns the file's length.
pub fn check_readable(path: &Path, limit: u64) -> io::Result<u64> {
    let meta = fs::metadata(path)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else {
            special_kind(&kind).unwrap_or("a special file")
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file"),
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "it holds {} bytes, more than the {limit} such a file may have",
                meta.len()
            ),
        ));
    }
    Ok(meta.len())
}

#[cfg(unix)]
fn special_kind(kind: &fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    }
}

#[cfg(not(unix))]
fn special_kind(_: &fs::FileType) -> Option<&'static str> {
    None
}

/// Opens a regular file of at most `limit` bytes (`check_readable`), with the plain I/O
/// error, for readers that wrap it in errors of their own.
pub fn open_regular(path: &Path, limit: u64) -> io::Result<File> {
    check_readable(path, limit)?;
    File::open(path)
}

/// Reads a whole regular file of at most `limit` bytes, as `open_regular`.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    check_readable(path, limit)?;
    fs::read(path)
}

/// Reads a whole regular text file of at most `limit` bytes, as `open_regular`.
pub fn read_regular_text(path: &Path, limit: u64) -> io::Result<String> {
    check_readable(path, limit)?;
    fs::read_to_string(path)
}

/// Opens a regular file for reading.
pub fn open(path: &Path) -> Result<File, FileError> {
    open_regular(path, READ_LIMIT).map_err(missing_or_io(path))
}

/// Reads a whole regular file.
pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    read_regular(path, READ_LIMIT).map_err(missing_or_io(path))
}

/// `name.ext` → `name.ext.tmp`, the name files carry until they are complete.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename. The temporary name
/// holds the process id, so that processes writing the same file at once (parts of one job
/// writing `plan.json`) each rename a whole file of their own.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(name);
    let written = (|| {
        let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(bytes).map_err(io_error(&tmp))?;
        file.sync_all().map_err(io_error(&tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_error(path))
    })();
    if written.is_err() {
        // A full disk must not also leave the half-written copy behind.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Makes renames inside `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Checksum of a whole small file (an index, the mean image), as kept in receipts and the
/// manifest: xxh3-64 as 16 hex digits (JSON numbers can't hold 64 bits everywhere).
pub fn file_checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Reads a file that must match `checksum` (from a receipt or the manifest).
pub fn read_checked(path: &Path, checksum: &str) -> Result<Vec<u8>, FileError> {
    let bytes = read(path)?;
    if file_checksum(&bytes) != checksum {
        return Err(FileError::Checksum {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Reads a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|source| FileError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Serialises `value` as pretty JSON with a final newline and writes it atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let mut text = serde_json::to_vec_pretty(value).expect("our JSON formats always serialise");
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Writes one record batch as a Parquet file, atomically; returns its `file_checksum`.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<String, FileError> {
    let bytes = parquet_bytes(batch, path)?;
    write_atomic(path, &bytes)?;
    Ok(file_checksum(&bytes))
}

/// One record batch as the bytes of a Parquet file; `path` only names it in errors.
pub fn parquet_bytes(batch: &RecordBatch, path: &Path) -> Result<Vec<u8>, FileError> {
    let parquet_err = |e: parquet::errors::ParquetError| FileError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), None).map_err(parquet_err)?;
    writer.write(batch).map_err(parquet_err)?;
    writer.into_inner().map_err(parquet_err)
}

/// Reads every record batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, FileError> {
    parquet_from_bytes(read(path)?, path)
}

/// Parses a Parquet file held in memory; `path` only names it in errors.
pub fn parquet_from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Vec<RecordBatch>, FileError> {
    let unreadable = |e: &dyn std::fmt::Display| FileError::Parquet {
        path: path.to_path_buf(),
        message: format!("unreadable Parquet ({e})"),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| unreadable(&e))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))
}

/// Writes an f32 array in NumPy's `.npy` format (version 1.0, little-endian, C order, header
/// padded to 64 bytes as NumPy itself writes it); returns its `file_checksum`.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<String, FileError> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy shape");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let trailing = if shape.len() == 1 { "," } else { "" };
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}{trailing}), }}",
        dims.join(", ")
    );
    // The header (magic 6 + version 2 + length 2 + text) is padded to a multiple of 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &bytes)?;
    Ok(file_checksum(&bytes))
}

/// Reads an f32 `.npy` file: (shape, data).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), FileError> {
    npy_f32_from_bytes(&read(path)?, path)
}

/// Parses `.npy` bytes holding f32 in C order (with `npyz`); `path` only names the file in
/// errors. The data must fill the file exactly: trailing bytes mean damage.
pub fn npy_f32_from_bytes(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f32>), FileError> {
    let bad = |message: String| FileError::Npy {
        path: path.to_path_buf(),
        message,
    };
    let mut cursor = Cursor::new(bytes);
    let header = npyz::NpyHeader::from_reader(&mut cursor)
        .map_err(|e| bad(format!("not a readable .npy file ({e})")))?;
    let start = cursor.position() as usize;
    let file = npyz::NpyFile::with_header(header, &bytes[start..]);
    let is_f32 = matches!(file.dtype(), npyz::DType::Plain(t) if t.size_field() == 4
        && t.type_char() == npyz::TypeChar::Float);
    if !is_f32 || file.order() != npyz::Order::C {
        return Err(bad(format!(
            "expected f32 in C order, found {} in {:?} order",
            file.dtype().descr(),
            file.order()
        )));
    }
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let expected = shape.iter().try_fold(4usize, |n, &d| n.checked_mul(d));
    if expected != Some(bytes.len() - start) {
        return Err(bad(format!(
            "{} data bytes do not match the shape {shape:?}",
            bytes.len() - start
        )));
    }
    let data = file
        .into_vec::<f32>()
        .map_err(|e| bad(format!("unreadable .npy data ({e})")))?;
    Ok((shape, data))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: a directory holds the final name.
        let target = dir.path().join("out.bin");
        std::fs::create_dir(&target).unwrap();
        assert!(write_atomic(&target, b"data").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the directory is left: {names:?}");
    }

    use super::*;

    #[test]
    fn npy_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let checksum = write_npy_f32(&path, &[2, 4, 3], &data).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(checksum, file_checksum(&bytes));
        // NumPy's own layout: the data starts at a multiple of 64 bytes.
        assert_eq!((bytes.len() - 24 * 4) % 64, 0);
        assert_eq!(read_npy_f32(&path).unwrap(), (vec![2, 4, 3], data.clone()));
        assert_eq!(
            npy_f32_from_bytes(&bytes, &path).unwrap().0,
            vec![2, 4, 3],
            "parsed from memory too"
        );
        // Truncated data, extra bytes, a foreign file.
        for damaged in [
            bytes[..bytes.len() - 1].to_vec(),
            [bytes.clone(), vec![0]].concat(),
            b"not an npy file at all".to_vec(),
        ] {
            let err = npy_f32_from_bytes(&damaged, &path).unwrap_err();
            assert!(matches!(err, FileError::Npy { .. }), "{err}");
        }
        // f64 is refused, not misread.
        let mut f64_file = bytes.clone();
        let at = f64_file.windows(3).position(|w| w == b"<f4").unwrap();
        f64_file[at + 2] = b'8';
        let err = npy_f32_from_bytes(&f64_file, &path).unwrap_err();
        assert!(err.to_string().contains("expected f32"), "{err}");
    }

    #[test]
    fn a_missing_file_is_missing_and_a_damaged_one_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert!(matches!(read(&path), Err(FileError::Missing { .. })));
        write_json(&path, &vec![1, 2, 3]).unwrap();
        let sum = file_checksum(&fs::read(&path).unwrap());
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap(), vec![1, 2, 3]);
        assert!(read_checked(&path, &sum).is_ok());
        fs::write(&path, b"[1, 2, 4]\n").unwrap();
        assert!(matches!(
            read_checked(&path, &sum),
            Err(FileError::Checksum { .. })
        ));
        assert!(!tmp_path(&path).exists());
    }
}
