//! Deterministic randomness: every random draw in the project comes from a ChaCha stream whose
//! seed is mixed from counters (seed, epoch, image, step, ...), so results never depend on
//! thread scheduling and a resumed run draws exactly what an uninterrupted one would.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Mixes words into one seed (splitmix64 finaliser steps), so nearby inputs give unrelated
/// streams.
pub fn mix_seed(words: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &w in words {
        h ^= w
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    h
}

/// One SplitMix64 step: a well-mixed 64-bit value from any input.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The threshold of dropout rate `p`: a unit is kept when its draw (`dropout_draw`) is at
/// least this (32-bit draws against a threshold: exact enough, and fast).
pub fn dropout_threshold(p: f64) -> u64 {
    (p * 4_294_967_296.0) as u64
}

/// The 32-bit draw of unit `unit` of image `image` in the dropout mask keyed `key`.
/// Counter-based: each unit's draw is computed alone, in any order, on any device (the CUDA
/// kernel `dropout_mask` computes the same).
pub fn dropout_draw(key: u64, image: u64, unit: u64) -> u64 {
    splitmix64(splitmix64(key ^ splitmix64(image)).wrapping_add(unit)) >> 32
}

/// The dropout mask keyed `key` of the batch rows `images` (`images.len() × units` values):
/// 0 with probability `p`, else `keep`. Row `i`'s values depend only on `key` and `i`, so an
/// image's mask is the same however a batch is cut (into ranks' slices, say).
pub fn dropout_mask<T: Copy + Default + Send + Sync>(
    key: u64,
    p: f64,
    images: std::ops::Range<u64>,
    units: usize,
    keep: T,
) -> Vec<T> {
    let threshold = dropout_threshold(p);
    let mut values = vec![T::default(); (images.end - images.start) as usize * units];
    values
        .par_chunks_mut(units.max(1))
        .enumerate()
        .for_each(|(row, values)| {
            let image = images.start + row as u64;
            for (unit, value) in values.iter_mut().enumerate() {
                if dropout_draw(key, image, unit as u64) >= threshold {
                    *value = keep;
                }
            }
        });
    values
}

/// Box–Muller; two uniforms per normal keeps the stream simple and reproducible.
pub fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mixing_separates_neighbouring_inputs_and_repeats_itself() {
        assert_eq!(mix_seed(&[1, 2, 3]), mix_seed(&[1, 2, 3]));
        assert_ne!(mix_seed(&[1, 2, 3]), mix_seed(&[1, 2, 4]));
        assert_ne!(mix_seed(&[1, 2]), mix_seed(&[2, 1]));
        assert_ne!(splitmix64(0), splitmix64(1));
    }

    #[test]
    fn normals_have_mean_zero_and_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws: Vec<f64> = (0..20_000)
            .map(|_| standard_normal(&mut rng) as f64)
            .collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
