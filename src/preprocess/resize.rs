//! Resize + centre crop with torchvision's semantics: `Resize(size)` then `CenterCrop(size)` on
//! a PIL image, which is what ImageNet users compare against.
//!
//! Only the crop is ever computed: the source region under the crop is resampled straight to
//! `size × size`, with filter weights identical to resizing the whole image and cropping after
//! (the filter still reads source pixels outside the region, as Pillow's `box` argument does).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions};
use image::RgbImage;

use crate::pixels::half_even_midpoint;

/// Where the stored square comes from: the size the whole image would be resized to, and the
/// crop's top-left corner in that resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub resized_width: u32,
    pub resized_height: u32,
    pub crop_left: u32,
    pub crop_top: u32,
}

/// torchvision's `Resize(size)` + `CenterCrop(size)` geometry for a `width × height` image.
///
/// The shorter side becomes `size` and the longer `floor(size * long / short)` (torchvision
/// computes `int(size * long / short)` in floating point, which floors the exact quotient for
/// any realistic size); crop offsets are `round((resized - size) / 2)` with Python's
/// round-half-to-even.
pub fn torchvision_geometry(width: u32, height: u32, size: u32) -> Geometry {
    assert!(width > 0 && height > 0 && size > 0, "empty image or size");
    let scale_long = |long: u32, short: u32| (size as u64 * long as u64 / short as u64) as u32;
    let (resized_width, resized_height) = if width <= height {
        (size, scale_long(height, width))
    } else {
        (scale_long(width, height), size)
    };
    Geometry {
        resized_width,
        resized_height,
        crop_left: half_even_midpoint(resized_width - size),
        crop_top: half_even_midpoint(resized_height - size),
    }
}

/// Resizes and centre-crops RGB images into `size × size × 3` bytes. Keeps the resampler's
/// buffers between calls, so make one per worker thread.
pub struct CenterCropResizer {
    size: u32,
    resizer: fast_image_resize::Resizer,
}

impl CenterCropResizer {
    pub fn new(size: u32) -> Self {
        Self {
            size,
            resizer: fast_image_resize::Resizer::new(),
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Writes the stored version of `image` into `out` (`size × size × 3` bytes, HWC RGB).
    pub fn resize_into(&mut self, image: &RgbImage, out: &mut [u8]) {
        let (width, height) = image.dimensions();
        self.resize_shrunk_into(image, (width, height), 8, out);
    }

    /// Like `resize_into`, for an image decoded at `eighths / 8` of its `source` size (JPEG's
    /// DCT scaling: each 8×8 block became `eighths` × `eighths` pixels): the geometry is the
    /// source's, the crop box is mapped onto the smaller image.
    pub fn resize_shrunk_into(
        &mut self,
        image: &RgbImage,
        source: (u32, u32),
        eighths: u32,
        out: &mut [u8],
    ) {
        let size = self.size;
        assert_eq!(out.len(), (size * size * 3) as usize, "output buffer size");
        let (width, height) = image.dimensions();
        let g = torchvision_geometry(source.0, source.1, size);
        if eighths == 8 && (g.resized_width, g.resized_height) == (width, height) {
            // Pillow returns the image unchanged when asked for its own size.
            copy_crop(image, g.crop_left, g.crop_top, size, out);
            return;
        }
        // Source pixels per resized pixel, then per pixel of the (possibly shrunk) image.
        let shrink = 8.0 / eighths as f64;
        let scale_x = source.0 as f64 / g.resized_width as f64 / shrink;
        let scale_y = source.1 as f64 / g.resized_height as f64 / shrink;
        let left = g.crop_left as f64 * scale_x;
        let top = g.crop_top as f64 * scale_y;
        // A shrunk image's last pixel row/column may cover fewer source pixels than the
        // others; never let rounding push the box past the edge.
        let crop_width = (size as f64 * scale_x).min(width as f64 - left);
        let crop_height = (size as f64 * scale_y).min(height as f64 - top);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(left, top, crop_width, crop_height);
        let src = ImageRef::new(width, height, image.as_raw(), PixelType::U8x3)
            .expect("an RgbImage buffer always matches its dimensions");
        let mut dst = Image::from_slice_u8(size, size, out, PixelType::U8x3)
            .expect("output buffer size checked above");
        self.resizer
            .resize(&src, &mut dst, &options)
            .expect("source and destination are both U8x3 and the crop is inside the image");
    }
}

fn copy_crop(image: &RgbImage, left: u32, top: u32, size: u32, out: &mut [u8]) {
    let row_bytes = (size * 3) as usize;
    let stride = image.width() as usize * 3;
    let raw = image.as_raw();
    for (y, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
        let start = (top as usize + y) * stride + left as usize * 3;
        dst.copy_from_slice(&raw[start..start + row_bytes]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn geometry_matches_torchvision_examples() {
        // Values worked out by hand from torchvision's formulas.
        // 500×375 (a typical ImageNet photo): 256 * 500 / 375 = 341.33 → 341; (341-256)/2 = 42.5 → 42.
        assert_eq!(
            torchvision_geometry(500, 375, 256),
            Geometry {
                resized_width: 341,
                resized_height: 256,
                crop_left: 42,
                crop_top: 0
            }
        );
        // Portrait 375×500: same, transposed.
        assert_eq!(
            torchvision_geometry(375, 500, 256),
            Geometry {
                resized_width: 256,
                resized_height: 341,
                crop_left: 0,
                crop_top: 42
            }
        );
        // 500×333 → 384.38 → 384, offset exactly 64.
        assert_eq!(torchvision_geometry(500, 333, 256).resized_width, 384);
        assert_eq!(torchvision_geometry(500, 333, 256).crop_left, 64);
        // ImageNet's smallest: 500×33 upscales to 3878×256.
        assert_eq!(torchvision_geometry(500, 33, 256).resized_width, 3878);
        // Square images need no crop.
        let sq = torchvision_geometry(800, 800, 256);
        assert_eq!(
            (
                sq.resized_width,
                sq.resized_height,
                sq.crop_left,
                sq.crop_top
            ),
            (256, 256, 0, 0)
        );
    }

    proptest! {
        #[test]
        fn geometry_is_a_centred_square_inside_the_resized_image(
            w in 1u32..5000, h in 1u32..5000, size in 1u32..600,
        ) {
            let g = torchvision_geometry(w, h, size);
            prop_assert_eq!(g.resized_width.min(g.resized_height), size);
            prop_assert!(g.crop_left + size <= g.resized_width);
            prop_assert!(g.crop_top + size <= g.resized_height);
            // Centred to within half a pixel.
            let slack_x = (g.resized_width - size) as i64 - 2 * g.crop_left as i64;
            let slack_y = (g.resized_height - size) as i64 - 2 * g.crop_top as i64;
            prop_assert!(slack_x.abs() <= 1 && slack_y.abs() <= 1);
            // The long side keeps the aspect ratio to within one pixel.
            let aspect = w as f64 / h as f64;
            let resized_aspect = g.resized_width as f64 / g.resized_height as f64;
            let tolerance = 1.0 / g.resized_width.min(g.resized_height) as f64;
            prop_assert!((aspect - resized_aspect).abs() <= aspect.max(1.0) * tolerance + 1e-9);
        }
    }

    /// A slow, obviously-correct model of Pillow's `Image.resize(size, BILINEAR)` on an RGB
    /// image (libImaging/Resample.c): a separable triangle filter whose support is scaled by the
    /// reduction factor, weights normalised per output pixel, horizontal pass first, the
    /// intermediate rounded to 8 bits, then the vertical pass. Everything in f64.
    fn reference_resize(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
        fn weights(in_size: u32, out_size: u32) -> Vec<Vec<(usize, f64)>> {
            let scale = in_size as f64 / out_size as f64;
            let filter_scale = scale.max(1.0);
            let support = filter_scale; // bilinear support is 1 in filter units
            (0..out_size)
                .map(|o| {
                    let center = (o as f64 + 0.5) * scale;
                    let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
                    let hi = ((center + support + 0.5).floor() as usize).min(in_size as usize);
                    let mut taps: Vec<(usize, f64)> = (lo..hi)
                        .map(|i| {
                            let x = (i as f64 - center + 0.5) / filter_scale;
                            (i, (1.0 - x.abs()).max(0.0))
                        })
                        .collect();
                    let total: f64 = taps.iter().map(|t| t.1).sum();
                    for t in &mut taps {
                        t.1 /= total;
                    }
                    taps
                })
                .collect()
        }
        let (w, h) = src.dimensions();
        let wx = weights(w, out_w);
        let wy = weights(h, out_h);
        let to_u8 = |v: f64| v.round().clamp(0.0, 255.0) as u8;
        let mut mid = RgbImage::new(out_w, h);
        for y in 0..h {
            for (x, taps) in wx.iter().enumerate() {
                let mut acc = [0.0f64; 3];
                for &(i, wgt) in taps {
                    let p = src.get_pixel(i as u32, y);
                    for c in 0..3 {
                        acc[c] += p[c] as f64 * wgt;
                    }
                }
                mid.put_pixel(x as u32, y, image::Rgb(acc.map(to_u8)));
            }
        }
        let mut out = RgbImage::new(out_w, out_h);
        for (y, taps) in wy.iter().enumerate() {
            for x in 0..out_w {
                let mut acc = [0.0f64; 3];
                for &(i, wgt) in taps {
                    let p = mid.get_pixel(x, i as u32);
                    for c in 0..3 {
                        acc[c] += p[c] as f64 * wgt;
                    }
                }
                out.put_pixel(x, y as u32, image::Rgb(acc.map(to_u8)));
            }
        }
        out
    }

    /// Reference: resize the whole image, then crop, exactly as torchvision does.
    fn reference_stored(src: &RgbImage, size: u32) -> Vec<u8> {
        let g = torchvision_geometry(src.width(), src.height(), size);
        let resized = if (g.resized_width, g.resized_height) == src.dimensions() {
            src.clone()
        } else {
            reference_resize(src, g.resized_width, g.resized_height)
        };
        image::imageops::crop_imm(&resized, g.crop_left, g.crop_top, size, size)
            .to_image()
            .into_raw()
    }

    /// A deterministic test image with edges, gradients and noise in every channel.
    fn test_image(w: u32, h: u32, seed: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let n = (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ seed)
                .wrapping_mul(2_654_435_761)
                >> 24;
            let stripe = if (x / 7 + y / 5) % 2 == 0 { 200 } else { 40 };
            image::Rgb([
                ((x * 255) / w.max(1)) as u8,
                stripe,
                ((y * 255) / h.max(1)) as u8 ^ n as u8,
            ])
        })
    }

    fn compare(w: u32, h: u32, size: u32) -> (f64, u8) {
        let src = test_image(w, h, w * 31 + h);
        let mut ours = vec![0u8; (size * size * 3) as usize];
        CenterCropResizer::new(size).resize_into(&src, &mut ours);
        let reference = reference_stored(&src, size);
        let diffs: Vec<u8> = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        (mean, *diffs.iter().max().unwrap())
    }

    #[test]
    fn crop_first_resize_matches_the_slow_reference() {
        // Downscales by various factors, upscales, extreme aspect ratios, odd excesses and
        // sizes already equal to the target on one axis.
        let cases = [
            (500, 375, 64),
            (375, 500, 64),
            (640, 480, 100),
            (1001, 333, 64),
            (90, 40, 64),
            (33, 500, 64),
            (64, 200, 64),
            (257, 256, 256),
            (130, 129, 128),
            (2000, 1500, 96),
            (96, 96, 96),
        ];
        for (w, h, size) in cases {
            let (mean, max) = compare(w, h, size);
            // Fixed-point rounding in the fast path may differ from f64 by one level.
            assert!(
                mean < 0.2 && max <= 2,
                "{w}x{h} -> {size}: mean abs diff {mean:.4}, max {max}"
            );
        }
    }

    #[test]
    fn image_already_at_size_is_copied_exactly() {
        let src = test_image(300, 256, 1);
        let mut ours = vec![0u8; 256 * 256 * 3];
        CenterCropResizer::new(256).resize_into(&src, &mut ours);
        let expected = image::imageops::crop_imm(&src, 22, 0, 256, 256).to_image();
        assert_eq!(ours, expected.into_raw());
    }

    #[test]
    fn flat_colour_stays_flat() {
        let src = RgbImage::from_pixel(777, 313, image::Rgb([12, 200, 77]));
        let mut ours = vec![0u8; 64 * 64 * 3];
        CenterCropResizer::new(64).resize_into(&src, &mut ours);
        assert!(ours.chunks_exact(3).all(|p| p == [12, 200, 77]));
    }
}
