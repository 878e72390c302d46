//! Turning one stored image into network input: crops, flips, mean subtraction, PCA lighting.
//!
//! All images are HWC RGB. A crop at (`left`, `top`) of a `stored × stored` image, optionally
//! mirrored, maps output pixel (y, x) to stored pixel (top + y, left + x) — or, mirrored,
//! (top + y, left + crop − 1 − x). Normalisation reads the mean at the *stored* position, so it
//! equals subtracting the mean image first and cropping after, as the paper describes.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::pixels::{self, half_even_midpoint};
use crate::seed::standard_normal;

/// ImageNet's RGB covariance eigenvalues and eigenvectors (pixels in 0..1), as widely used for
/// the paper's "PCA lighting"; `EIGVEC[c][i]` is channel `c` of eigenvector `i`.
pub const PCA_EIGVAL: [f32; 3] = [0.2175, 0.0188, 0.0045];
pub const PCA_EIGVEC: [[f32; 3]; 3] = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
];

/// Where a crop is cut and whether it is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub left: u32,
    pub top: u32,
    pub flip: bool,
}

/// One training sample's random draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    pub crop: Crop,
    /// RGB offset added to every pixel, 0..255 scale (zero without lighting noise).
    pub lighting: [f32; 3],
}

impl Augmentation {
    /// A uniformly random crop position (0..=stored−crop on both axes), a fair coin for the
    /// mirror, and α ~ N(0, `lighting_std`) per eigenvector.
    pub fn draw(
        rng: &mut ChaCha8Rng,
        stored: u32,
        crop: u32,
        flip: bool,
        lighting_std: f32,
    ) -> Self {
        let left = rng.random_range(0..=stored - crop);
        let top = rng.random_range(0..=stored - crop);
        let flip = flip && rng.random_bool(0.5);
        let lighting = if lighting_std > 0.0 {
            let alpha = [0; 3].map(|_| standard_normal(rng) * lighting_std);
            lighting_offset(alpha)
        } else {
            [0.0; 3]
        };
        Self {
            crop: Crop { left, top, flip },
            lighting,
        }
    }
}

/// Σᵢ αᵢ λᵢ pᵢ, scaled to 0..255.
pub fn lighting_offset(alpha: [f32; 3]) -> [f32; 3] {
    let mut rgb = [0.0f32; 3];
    for (c, value) in rgb.iter_mut().enumerate() {
        *value = (0..3)
            .map(|i| PCA_EIGVEC[c][i] * alpha[i] * PCA_EIGVAL[i])
            .sum::<f32>()
            * 255.0;
    }
    rgb
}

/// The evaluation crops: torchvision's `CenterCrop`, and `TenCrop` (four corners and the
/// centre, then the same five mirrored), in that order.
pub fn center_crop(stored: u32, crop: u32) -> Crop {
    let offset = half_even_midpoint(stored - crop);
    Crop {
        left: offset,
        top: offset,
        flip: false,
    }
}

pub fn ten_crops(stored: u32, crop: u32) -> [Crop; 10] {
    let far = stored - crop;
    let c = center_crop(stored, crop);
    let five = [(0, 0), (far, 0), (0, far), (far, far), (c.left, c.top)];
    let mut out = [c; 10];
    for (k, (left, top)) in five.into_iter().enumerate() {
        out[k] = Crop {
            left,
            top,
            flip: false,
        };
        out[k + 5] = Crop {
            left,
            top,
            flip: true,
        };
    }
    out
}

/// Copies a crop of `record` into `out` (`crop × crop × 3` bytes).
pub fn crop_u8(record: &[u8], stored: u32, crop: u32, at: Crop, out: &mut [u8]) {
    let (stored, crop) = (stored as usize, crop as usize);
    let row = crop * 3;
    debug_assert_eq!(out.len(), crop * row);
    for (y, dst) in out.chunks_exact_mut(row).enumerate() {
        let start = ((at.top as usize + y) * stored + at.left as usize) * 3;
        let src = &record[start..start + row];
        if at.flip {
            // Whole-pixel array copies: a 3-byte slice copy would be a call per pixel.
            let (dst, _) = dst.as_chunks_mut::<3>();
            let (src, _) = src.as_chunks::<3>();
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        } else {
            dst.copy_from_slice(src);
        }
    }
}

/// How f32 batches are normalised: `(pixel + lighting − shift) × scale`, with `shift` per
/// stored pixel (mean image) or per channel.
pub enum Normalizer<'a> {
    /// The training-set mean image, `stored × stored × 3`, 0..255 scale.
    MeanImage(&'a [f32]),
    /// Per-channel mean and 1/std (0..255 scale).
    Channel { mean: [f32; 3], inv_std: [f32; 3] },
}

/// Writes a normalised crop of `record` into `out` (`crop × crop × 3` floats).
///
/// Each row is computed in stored order over flat arrays (which vectorises: 12 floats = four
/// pixels per step, so the per-channel constants line up), then mirrored in place if needed.
pub fn crop_f32(
    record: &[u8],
    stored: u32,
    crop: u32,
    at: Crop,
    lighting: [f32; 3],
    norm: &Normalizer,
    out: &mut [f32],
) {
    let (stored, crop) = (stored as usize, crop as usize);
    let row = crop * 3;
    debug_assert_eq!(out.len(), crop * row);
    // Constants repeating per channel, so that a row is one flat loop.
    let lighting12: [f32; 12] = std::array::from_fn(|k| lighting[k % 3]);
    let (scale, channel_row): ([f32; 3], Vec<f32>) = match norm {
        Normalizer::MeanImage(_) => ([1.0; 3], Vec::new()),
        Normalizer::Channel { mean, inv_std } => {
            (*inv_std, (0..row).map(|k| mean[k % 3]).collect())
        }
    };
    let scale12: [f32; 12] = std::array::from_fn(|k| scale[k % 3]);
    for (y, dst) in out.chunks_exact_mut(row).enumerate() {
        let start = ((at.top as usize + y) * stored + at.left as usize) * 3;
        let src = &record[start..start + row];
        let mean = match norm {
            Normalizer::MeanImage(mean) => &mean[start..start + row],
            Normalizer::Channel { .. } => &channel_row[..],
        };
        let (d12, d_tail) = dst.as_chunks_mut::<12>();
        let (s12, s_tail) = src.as_chunks::<12>();
        let (m12, m_tail) = mean.as_chunks::<12>();
        for ((d, s), m) in d12.iter_mut().zip(s12).zip(m12) {
            for k in 0..12 {
                d[k] = pixels::normalize(s[k], m[k], lighting12[k], scale12[k]);
            }
        }
        for (k, ((d, s), m)) in d_tail.iter_mut().zip(s_tail).zip(m_tail).enumerate() {
            *d = pixels::normalize(*s, *m, lighting12[k], scale12[k]);
        }
        if at.flip {
            dst.as_chunks_mut::<3>().0.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A 6×6 stored image whose pixel (y, x) channel c holds 100·c + 10·y + x.
    fn numbered() -> Vec<u8> {
        (0..6)
            .flat_map(|y| {
                (0..6).flat_map(move |x| (0..3).map(move |c| (100 * c + 10 * y + x) as u8))
            })
            .collect()
    }

    #[test]
    fn crop_and_flip_pick_the_hand_computed_pixels() {
        let record = numbered();
        let mut out = vec![0u8; 3 * 3 * 3];
        crop_u8(
            &record,
            6,
            3,
            Crop {
                left: 2,
                top: 1,
                flip: false,
            },
            &mut out,
        );
        // Row 0 of the crop is stored row 1, columns 2, 3, 4.
        assert_eq!(&out[..9], &[12, 112, 212, 13, 113, 213, 14, 114, 214]);
        // Row 2 is stored row 3.
        assert_eq!(&out[18..21], &[32, 132, 232]);
        crop_u8(
            &record,
            6,
            3,
            Crop {
                left: 2,
                top: 1,
                flip: true,
            },
            &mut out,
        );
        // Mirrored: columns 4, 3, 2.
        assert_eq!(&out[..9], &[14, 114, 214, 13, 113, 213, 12, 112, 212]);
        assert_eq!(&out[24..27], &[32, 132, 232]);
    }

    #[test]
    fn f32_crops_subtract_the_mean_at_the_stored_position() {
        let record = numbered();
        // Mean image = 1000 + stored index, so every output value says where it came from.
        let mean: Vec<f32> = (0..record.len()).map(|i| i as f32 / 4.0).collect();
        let mut out = vec![0f32; 2 * 2 * 3];
        let at = Crop {
            left: 3,
            top: 4,
            flip: true,
        };
        crop_f32(
            &record,
            6,
            2,
            at,
            [1.0, 2.0, 3.0],
            &Normalizer::MeanImage(&mean),
            &mut out,
        );
        // Output (0, 0) mirrored = stored (4, 4); channel 1 value 144, mean index (4·6+4)·3+1.
        let idx = (4 * 6 + 4) * 3 + 1;
        assert_eq!(out[1], 144.0 + 2.0 - idx as f32 / 4.0);
        // Output (1, 1) = stored (5, 3), channel 2.
        let idx = (5 * 6 + 3) * 3 + 2;
        assert_eq!(out[(2 + 1) * 3 + 2], 253.0 + 3.0 - idx as f32 / 4.0);

        let norm = Normalizer::Channel {
            mean: [10.0, 20.0, 30.0],
            inv_std: [0.5, 0.25, 2.0],
        };
        crop_f32(
            &record,
            6,
            2,
            Crop {
                left: 0,
                top: 0,
                flip: false,
            },
            [0.0; 3],
            &norm,
            &mut out,
        );
        assert_eq!(
            &out[..3],
            &[
                (0.0 - 10.0) * 0.5,
                (100.0 - 20.0) * 0.25,
                (200.0 - 30.0) * 2.0
            ]
        );
    }

    #[test]
    fn u8_and_f32_paths_agree() {
        let record: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let zeros = vec![0f32; record.len()];
        for flip in [false, true] {
            let at = Crop {
                left: 1,
                top: 3,
                flip,
            };
            let mut a = vec![0u8; 5 * 5 * 3];
            let mut b = vec![0f32; 5 * 5 * 3];
            crop_u8(&record, 8, 5, at, &mut a);
            crop_f32(
                &record,
                8,
                5,
                at,
                [0.0; 3],
                &Normalizer::MeanImage(&zeros),
                &mut b,
            );
            assert!(a.iter().zip(&b).all(|(x, y)| *x as f32 == *y));
        }
    }

    #[test]
    fn random_crops_cover_every_offset_and_flip_half_the_time() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen = [[false; 33]; 2];
        let mut flips = 0;
        for _ in 0..20_000 {
            let a = Augmentation::draw(&mut rng, 256, 224, true, 0.0);
            seen[0][a.crop.left as usize] = true;
            seen[1][a.crop.top as usize] = true;
            flips += a.crop.flip as u32;
            assert_eq!(a.lighting, [0.0; 3]);
        }
        assert!(
            seen.iter().all(|axis| axis.iter().all(|&s| s)),
            "offsets 0..=32 all drawn"
        );
        assert!((9_500..10_500).contains(&flips), "{flips} flips of 20000");
        let a = Augmentation::draw(&mut rng, 256, 224, false, 0.0);
        assert!(!a.crop.flip);
    }

    #[test]
    fn lighting_noise_has_the_papers_scale() {
        // One unit of α along the first eigenvector moves RGB by 255·λ₁·p₁.
        let off = lighting_offset([1.0, 0.0, 0.0]);
        for c in 0..3 {
            assert!((off[c] - 255.0 * 0.2175 * PCA_EIGVEC[c][0]).abs() < 1e-4);
        }
        // With σ = 0.1 the offsets are a few levels: std of the first channel ≈ 255·0.1·|Σ|.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 20_000;
        let draws: Vec<f32> = (0..n)
            .map(|_| Augmentation::draw(&mut rng, 8, 8, false, 0.1).lighting[0])
            .collect();
        let mean = draws.iter().sum::<f32>() / n as f32;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f32>() / n as f32;
        let expected: f32 = (0..3)
            .map(|i| (255.0 * 0.1 * PCA_EIGVAL[i] * PCA_EIGVEC[0][i]).powi(2))
            .sum();
        assert!(mean.abs() < 0.1, "{mean}");
        assert!((var / expected - 1.0).abs() < 0.05, "{var} vs {expected}");
    }

    #[test]
    fn eval_crops_are_torchvisions() {
        assert_eq!(
            center_crop(256, 224),
            Crop {
                left: 16,
                top: 16,
                flip: false
            }
        );
        let ten = ten_crops(256, 224);
        let corners: Vec<(u32, u32)> = ten[..5].iter().map(|c| (c.left, c.top)).collect();
        assert_eq!(corners, [(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)]);
        assert!(ten[..5].iter().all(|c| !c.flip) && ten[5..].iter().all(|c| c.flip));
        assert_eq!(ten[7].left, 0);
        assert_eq!(ten[7].top, 32);
    }
}
