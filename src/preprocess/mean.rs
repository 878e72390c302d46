//! The training set's mean image and channel statistics, accumulated exactly (integer sums)
//! so that they do not depend on the order records are added in, nor on how the work was
//! split over workers, runs or machines.

use crate::shards::{MeanStats, CHANNELS};

const SUMS_MAGIC: &[u8; 8] = b"ALXSUMS1";

/// Exact per-pixel sums over the training records, so the mean does not depend on the order
/// in which records are added (or on which run, or which machine, added them).
pub struct MeanAccumulator {
    size: u32,
    sums: Vec<u64>,
    channel_sums: [u128; 3],
    channel_squares: [u128; 3],
    images: u64,
}

impl MeanAccumulator {
    pub fn new(size: u32) -> Self {
        Self {
            size,
            sums: vec![0; (size * size * CHANNELS) as usize],
            channel_sums: [0; 3],
            channel_squares: [0; 3],
            images: 0,
        }
    }

    #[allow(clippy::needless_range_loop)] // three channels side by side read best indexed
    pub fn add(&mut self, record: &[u8]) {
        let mut sums = [0u64; 3];
        let mut squares = [0u64; 3];
        for (pixel, pixel_sums) in record.chunks_exact(3).zip(self.sums.chunks_exact_mut(3)) {
            for c in 0..3 {
                let v = u64::from(pixel[c]);
                pixel_sums[c] += v;
                sums[c] += v;
                squares[c] += v * v;
            }
        }
        for c in 0..3 {
            self.channel_sums[c] += u128::from(sums[c]);
            self.channel_squares[c] += u128::from(squares[c]);
        }
        self.images += 1;
    }

    /// Adds another accumulator's sums (of other records).
    pub fn merge(&mut self, other: &MeanAccumulator) {
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        for c in 0..3 {
            self.channel_sums[c] += other.channel_sums[c];
            self.channel_squares[c] += other.channel_squares[c];
        }
        self.images += other.images;
    }

    /// The sums as bytes (`parts/*.sums`): magic `ALXSUMS1`, image size (u32), image count
    /// (u64), channel sums and sums of squares (3 + 3 u128), then the per-pixel sums (u64,
    /// HWC); all little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44 + 96 + self.sums.len() * 8);
        out.extend_from_slice(SUMS_MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.images.to_le_bytes());
        for v in self.channel_sums.iter().chain(&self.channel_squares) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in &self.sums {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads what `to_bytes` wrote; `None` if it is not sums of `size`×`size` images.
    pub fn from_bytes(bytes: &[u8], size: u32) -> Option<Self> {
        let mut acc = MeanAccumulator::new(size);
        let header = 8 + 4 + 8 + 6 * 16;
        if bytes.len() != header + acc.sums.len() * 8 || &bytes[..8] != SUMS_MAGIC {
            return None;
        }
        if u32::from_le_bytes(bytes[8..12].try_into().ok()?) != size {
            return None;
        }
        acc.images = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
        let u128_at =
            |i: usize| u128::from_le_bytes(bytes[20 + 16 * i..36 + 16 * i].try_into().unwrap());
        for c in 0..3 {
            acc.channel_sums[c] = u128_at(c);
            acc.channel_squares[c] = u128_at(3 + c);
        }
        for (sum, chunk) in acc.sums.iter_mut().zip(bytes[header..].chunks_exact(8)) {
            *sum = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        Some(acc)
    }

    /// Training images added so far.
    pub fn images(&self) -> u64 {
        self.images
    }

    pub fn mean_image(&self) -> Vec<f32> {
        let n = self.images.max(1) as f64;
        self.sums.iter().map(|&s| (s as f64 / n) as f32).collect()
    }

    pub fn channel_stats(&self) -> ([f64; 3], [f64; 3]) {
        let n = (self.images * self.size as u64 * self.size as u64).max(1) as f64;
        let mean = self.channel_sums.map(|s| s as f64 / n);
        let mut std = [0.0; 3];
        for c in 0..3 {
            std[c] = (self.channel_squares[c] as f64 / n - mean[c] * mean[c])
                .max(0.0)
                .sqrt();
        }
        (mean, std)
    }
}

/// Where the mean image comes from: the file of a complete directory, kept as it is, or the
/// training records.
pub enum MeanSource<'a> {
    Kept(MeanStats),
    Computed(&'a MeanAccumulator),
}
