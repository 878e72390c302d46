//! Encoding a rendered image as the file a job asks for: baseline, progressive, grayscale or
//! CMYK JPEG, PNG (named .JPEG), or a JPEG cut short.

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, SamplingFactor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::render::Canvas;
use super::EdgeKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    Baseline,
    Grayscale,
    Cmyk,
    Progressive,
    Png,
    Truncated,
    Empty,
}

impl Encoding {
    pub(super) fn for_edge(kind: EdgeKind) -> Self {
        match kind {
            EdgeKind::Grayscale => Encoding::Grayscale,
            EdgeKind::Cmyk => Encoding::Cmyk,
            EdgeKind::Progressive => Encoding::Progressive,
            EdgeKind::PngNamedJpeg => Encoding::Png,
            EdgeKind::Truncated => Encoding::Truncated,
            EdgeKind::Empty => Encoding::Empty,
        }
    }
}

pub(super) fn encode(
    canvas: &Canvas,
    encoding: Encoding,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<u8>, String> {
    // Real collections mix qualities; below 90 jpeg-encoder also switches to 4:2:0.
    let quality: u8 = rng.random_range(85..=92);
    match encoding {
        Encoding::Baseline => encode_jpeg(canvas, ColorType::Rgb, &canvas.pixels, quality, false),
        Encoding::Progressive => encode_jpeg(canvas, ColorType::Rgb, &canvas.pixels, quality, true),
        Encoding::Grayscale => {
            encode_jpeg(canvas, ColorType::Luma, &to_luma(canvas), quality, false)
        }
        Encoding::Cmyk => encode_jpeg(canvas, ColorType::Cmyk, &to_cmyk(canvas), quality, false),
        Encoding::Png => encode_png(canvas),
        Encoding::Truncated => {
            let mut jpeg = encode_jpeg(canvas, ColorType::Rgb, &canvas.pixels, quality, false)?;
            let keep = rng.random_range(0.4..0.6) * jpeg.len() as f64;
            jpeg.truncate(keep as usize);
            Ok(jpeg)
        }
        Encoding::Empty => Ok(Vec::new()),
    }
}

fn encode_jpeg(
    canvas: &Canvas,
    colour: ColorType,
    data: &[u8],
    quality: u8,
    progressive: bool,
) -> Result<Vec<u8>, String> {
    let width = u16::try_from(canvas.width).map_err(|e| e.to_string())?;
    let height = u16::try_from(canvas.height).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut encoder = Encoder::new(&mut buf, quality);
    encoder.set_progressive(progressive);
    // libjpeg (which produced real ImageNet files) averages when subsampling;
    // jpeg-encoder's default picks one pixel, which aliases the noise into
    // blotchy chroma.
    encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
    if colour == ColorType::Cmyk {
        // jpeg-encoder subsamples C, M and Y against K below quality 90; with
        // most of the colour in CMY that would blur it, and Photoshop does not
        // subsample CMYK either.
        encoder.set_sampling_factor(SamplingFactor::F_1_1);
    }
    encoder
        .encode(data, width, height, colour)
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

fn encode_png(canvas: &Canvas) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    PngEncoder::new(&mut buf)
        .write_image(
            &canvas.pixels,
            canvas.width,
            canvas.height,
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

pub(super) fn to_luma(canvas: &Canvas) -> Vec<u8> {
    canvas
        .pixels
        .chunks_exact(3)
        .map(|p| {
            let weighted = 299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]);
            ((weighted + 500) / 1000) as u8
        })
        .collect()
}

/// Naive RGB to CMYK with full black extraction (K = 255 - max(R, G, B)).
///
/// jpeg-encoder stores the inverse of these values with an Adobe marker, the
/// Photoshop convention; decoders that honour it (zune-jpeg, Pillow, libjpeg
/// users) compute R = (255 - C)(255 - K) / 255, which gives back the RGB input.
fn to_cmyk(canvas: &Canvas) -> Vec<u8> {
    let mut cmyk = Vec::with_capacity(canvas.pixels.len() / 3 * 4);
    for p in canvas.pixels.chunks_exact(3) {
        let max = u32::from(p[0].max(p[1]).max(p[2]));
        if max == 0 {
            cmyk.extend_from_slice(&[0, 0, 0, 255]);
            continue;
        }
        let ink = |v: u8| ((255 * (max - u32::from(v)) + max / 2) / max) as u8;
        cmyk.extend_from_slice(&[ink(p[0]), ink(p[1]), ink(p[2]), (255 - max) as u8]);
    }
    cmyk
}
