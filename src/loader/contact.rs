//! A contact sheet: a PNG grid of augmented training samples with their class names, so a
//! person can check crops, flips and colours by eye.

use std::path::Path;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use plotters::prelude::{RGBColor, Text};
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Loader, LoaderData, LoaderError, LoaderOptions, Output, Pixels};
use crate::canvas;

const GAP: u32 = 4;

/// Label text size in pixels: about a tenth of the crop, so that a class name of a few words
/// fits under it, but never below what stays readable.
fn label_size(crop: u32) -> u32 {
    (crop / 10).clamp(11, 20)
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
    let size = label_size(crop);
    let batch = Loader::start(data, options)?
        .next()
        .ok_or_else(|| LoaderError::Settings("the loader produced no batch".into()))??;
    let Pixels::U8(pixels) = &batch.pixels else {
        unreachable!("contact sheets use u8 batches")
    };
    let columns = (batch.len() as f64).sqrt().ceil() as u32;
    let rows = (batch.len() as u32).div_ceil(columns);
    // Room for descenders and a little air above and below the text.
    let label_height = size + size / 2;
    let cell_w = crop + GAP;
    let cell_h = crop + label_height + GAP;
    let mut sheet = RgbImage::from_pixel(
        columns * cell_w + GAP,
        rows * cell_h + GAP,
        Rgb([24, 24, 24]),
    );
    let view = (crop * crop * 3) as usize;
    let origin = |k: usize| {
        (
            GAP + (k as u32 % columns) * cell_w,
            GAP + (k as u32 / columns) * cell_h,
        )
    };
    for (k, sample) in pixels.chunks_exact(view).enumerate() {
        let (x0, y0) = origin(k);
        let light = batch.lighting[k];
        for (p, rgb) in sample.chunks_exact(3).enumerate() {
            let (x, y) = (p as u32 % crop, p as u32 / crop);
            let lit = [0, 1, 2].map(|c| (rgb[c] as f32 + light[c]).round().clamp(0.0, 255.0) as u8);
            sheet.put_pixel(x0 + x, y0 + y, Rgb(lit));
        }
    }
    let style = canvas::font(f64::from(size))
        .color(&RGBColor(235, 235, 235))
        .pos(Pos::new(HPos::Left, VPos::Center));
    canvas::draw_on(&mut sheet, |area| {
        for (k, &label) in batch.labels.iter().enumerate() {
            let (x0, y0) = origin(k);
            let name = format!("{label} {}", classes[label as usize].name);
            let text = canvas::fit(area, &name, &style, crop)?;
            let y = y0 + crop + label_height / 2;
            area.draw(&Text::new(text, (x0 as i32, y as i32), style.clone()))?;
        }
        Ok(())
    })
    .map_err(|source| LoaderError::ContactSheetLabels {
        path: path.to_path_buf(),
        source,
    })?;
    sheet
        .save(path)
        .map_err(|e| LoaderError::Settings(format!("cannot write {}: {e}", path.display())))?;
    Ok(batch.len())
}
