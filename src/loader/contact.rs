//! A contact sheet: a PNG grid of augmented training samples with their class names, so a
//! person can check crops, flips and colours by eye.

use std::path::Path;
use std::sync::Arc;

use image::{Rgb, RgbImage};

use super::{Loader, LoaderData, LoaderError, LoaderOptions, Output, Pixels};
use crate::text;

const GAP: u32 = 4;

/// 5×7 glyphs drawn 2× read well under 224-pixel crops; small crops keep them 1× so the class
/// name still fits.
fn label_scale(crop: u32) -> u32 {
    if crop >= 192 {
        2
    } else {
        1
    }
}

/// Renders the first `count` samples of the training stream (as the trainer would see them,
/// lighting noise included, before mean subtraction) into a grid and writes it as PNG.
/// Returns how many samples it drew (fewer than `count` when an epoch is shorter).
pub fn write_contact_sheet(
    data: Arc<LoaderData>,
    options: LoaderOptions,
    count: usize,
    path: &Path,
) -> Result<usize, LoaderError> {
    let classes = data.classes.clone();
    let options = LoaderOptions {
        output: Output::U8,
        config: crate::config::LoaderConfig {
            batch_size: count.max(1),
            drop_last: false,
            ..options.config
        },
        ..options
    };
    let crop = options.config.crop_size;
    let scale = label_scale(crop);
    let batch = Loader::start(data, options)?
        .next()
        .ok_or_else(|| LoaderError::Settings("the loader produced no batch".into()))??;
    let Pixels::U8(pixels) = &batch.pixels else {
        unreachable!("contact sheets use u8 batches")
    };
    let columns = (batch.len() as f64).sqrt().ceil() as u32;
    let rows = (batch.len() as u32).div_ceil(columns);
    let label_height = text::GLYPH_HEIGHT * scale + 2 * scale;
    let cell_w = crop + GAP;
    let cell_h = crop + label_height + GAP;
    let mut sheet = RgbImage::from_pixel(
        columns * cell_w + GAP,
        rows * cell_h + GAP,
        Rgb([24, 24, 24]),
    );
    let view = (crop * crop * 3) as usize;
    for (k, sample) in pixels.chunks_exact(view).enumerate() {
        let (x0, y0) = (
            GAP + (k as u32 % columns) * cell_w,
            GAP + (k as u32 / columns) * cell_h,
        );
        let light = batch.lighting[k];
        for (p, rgb) in sample.chunks_exact(3).enumerate() {
            let (x, y) = (p as u32 % crop, p as u32 / crop);
            let lit = [0, 1, 2].map(|c| (rgb[c] as f32 + light[c]).round().clamp(0.0, 255.0) as u8);
            sheet.put_pixel(x0 + x, y0 + y, Rgb(lit));
        }
        let class = &classes[batch.labels[k] as usize];
        let label = text::fit_text(&format!("{} {}", batch.labels[k], class.name), crop, scale);
        text::draw_text(
            &mut sheet,
            x0 as i64,
            (y0 + crop + scale) as i64,
            &label,
            Rgb([235, 235, 235]),
            scale,
        );
    }
    sheet
        .save(path)
        .map_err(|e| LoaderError::Settings(format!("cannot write {}: {e}", path.display())))?;
    Ok(batch.len())
}
