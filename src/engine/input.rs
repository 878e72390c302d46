//! Batches onto the device: u8 crops go up as bytes (4× less than f32) and are normalised
//! there, as the loader's f32 path does on the host (`pixels::normalize`):
//! `x = (pixel − mean + lighting) × scale`, with the mean image taken at each crop's position.
//!
//! The mean image is cut per crop with one `gather` from a table of every mean-image row
//! segment a crop can start with (row y, left edge, mirrored or not): `stored × (stored −
//! crop + 1) × 2` rows of `crop × 3` floats (45 MB for 224 crops of 256 images). A batch then
//! uploads one index per crop row, not a mean image per crop.

use dfdx::prelude::*;

use crate::config::{LoaderConfig, Normalize};
use crate::device::TrainDevice;
use crate::loader::augment::Crop;
use crate::loader::{Batch, LoaderData, Pixels};
use crate::model::{Act, Mat};

/// The host side of normalisation, shared by the dfdx path and the fast path: the mean-row
/// table's layout and, per batch, the table rows its crops read and its lighting offsets.
/// The table itself (45 MB for 224 crops of 256 images) lives only on the device.
#[derive(Debug, Clone, Copy)]
pub struct MeanRowTable {
    stored: usize,
    crop: usize,
    /// Per-channel 1/std for `Normalize::Channel`, else ones.
    pub scale: [f32; 3],
}

impl MeanRowTable {
    /// The layout, and the table's rows to upload: `(stored × lefts × 2, crop × 3)`, row-major.
    pub fn build(data: &LoaderData, config: &LoaderConfig) -> (Self, Vec<f32>) {
        let stored = data.image_size as usize;
        let crop = config.crop_size as usize;
        let mean_at = |y: usize, x: usize, c: usize| match config.normalize {
            Normalize::MeanImage => data.mean_image[(y * stored + x) * 3 + c],
            Normalize::Channel => data.channel_mean[c],
        };
        let lefts = stored - crop + 1;
        let mut rows = Vec::with_capacity(stored * lefts * 2 * crop * 3);
        for y in 0..stored {
            for left in 0..lefts {
                for flip in [false, true] {
                    for x in 0..crop {
                        let src = if flip { left + crop - 1 - x } else { left + x };
                        rows.extend((0..3).map(|c| mean_at(y, src, c)));
                    }
                }
            }
        }
        let scale = match config.normalize {
            Normalize::Channel => data.channel_std.map(|s| 1.0 / s.max(1e-6)),
            Normalize::MeanImage => [1.0; 3],
        };
        (
            Self {
                stored,
                crop,
                scale,
            },
            rows,
        )
    }

    pub fn crop(&self) -> usize {
        self.crop
    }

    /// Floats per table row.
    pub fn row_len(&self) -> usize {
        self.crop * 3
    }

    /// Row of the table holding crop row `y` of a crop cut at `at`.
    fn table_row(&self, at: Crop, y: usize) -> usize {
        let lefts = self.stored - self.crop + 1;
        ((at.top as usize + y) * lefts + at.left as usize) * 2 + at.flip as usize
    }

    /// The table row of every crop row of `batch`, `images × views × crop` of them.
    pub fn batch_rows(&self, batch: &Batch) -> Vec<u32> {
        let crop = self.crop;
        batch
            .crops
            .iter()
            .flat_map(|&at| (0..crop).map(move |y| (at, y)))
            .map(|(at, y)| self.table_row(at, y) as u32)
            .collect()
    }

    /// Each crop's lighting offset (an image's views share it), `images × views × 3`.
    pub fn batch_lighting(batch: &Batch) -> Vec<f32> {
        let views = batch.views.max(1);
        batch
            .lighting
            .iter()
            .flat_map(|l| std::iter::repeat_n(*l, views))
            .flatten()
            .collect()
    }
}

/// A batch's crops as bytes (the loader's u8 output).
pub fn batch_bytes(batch: &Batch) -> &[u8] {
    let Pixels::U8(bytes) = &batch.pixels else {
        panic!("the trainer asks the loader for u8 batches");
    };
    bytes
}

/// The dfdx path's input: the table on the device, cut per crop with one `gather`.
pub struct InputStage<D: TrainDevice> {
    table: MeanRowTable,
    mean_rows: Mat<f32, D>,
    scale: Option<Tensor<(usize,), f32, D>>,
    /// The upload buffer, reused while the batch size stays the same.
    pixels: Option<D::Bytes>,
}

impl<D: TrainDevice> InputStage<D> {
    pub fn new(dev: &D, data: &LoaderData, config: &LoaderConfig) -> Self {
        let (table, rows) = MeanRowTable::build(data, config);
        let scale = (config.normalize == Normalize::Channel)
            .then(|| dev.tensor_from_vec(table.scale.to_vec(), (3,)));
        let shape = (rows.len() / table.row_len(), table.row_len());
        Self {
            mean_rows: dev.tensor_from_vec(rows, shape),
            table,
            scale,
            pixels: None,
        }
    }

    /// The normalised crops of a u8 batch, `(images × views, crop², 3)`.
    pub fn prepare(&mut self, dev: &D, batch: &Batch) -> Act<f32, D> {
        let bytes = batch_bytes(batch);
        let crop = self.table.crop;
        let n = batch.crops.len();
        debug_assert_eq!(bytes.len(), n * crop * crop * 3);
        let x = dev.upload_u8(&mut self.pixels, bytes, (n, crop * crop, 3));

        let rows: Vec<usize> = self
            .table
            .batch_rows(batch)
            .into_iter()
            .map(|r| r as usize)
            .collect();
        let rows = dev.tensor_from_vec(rows, (n * crop,));
        let mean: Mat<f32, D> = self.mean_rows.clone().gather(rows);
        let mean = mean.reshape_like(&(n, crop * crop, 3));

        let lighting: Mat<f32, D> =
            dev.tensor_from_vec(MeanRowTable::batch_lighting(batch), (n, 3));
        let x = x - mean + lighting.broadcast_like::<_, Axis<1>>(&(n, crop * crop, 3));
        match &self.scale {
            Some(scale) => {
                x * scale
                    .clone()
                    .broadcast_like::<_, Axes2<0, 1>>(&(n, crop * crop, 3))
            }
            None => x,
        }
    }
}
