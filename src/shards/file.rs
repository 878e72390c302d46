//! Shard files: a header page, then fixed-size records; written under a temporary name and
//! checked on open.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::*;
use crate::files;

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
        let file = files::open(path)?;
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
