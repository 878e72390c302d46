//! The trainer's data source: shuffled, augmented batches from the memory-mapped shards.
//!
//! A background thread assembles batches with a rayon pool into recycled buffers and queues up
//! to `prefetch` of them. Every random draw comes from (seed, epoch, image index), so the
//! stream is identical for any number of threads and resumes exactly from (epoch, position).
//! Batches are channels-last, `(B, H·W, 3)`: `u8` crops (mean subtraction then happens on the
//! device) or mean-subtracted `f32`.

pub mod augment;
pub mod bench;
pub mod contact;
pub mod sampler;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::config::{LoaderConfig, Normalize};
use crate::dist::World;
use crate::shards::{self, ClassInfo, Manifest, ShardError, Split, SplitReader};
use augment::{Augmentation, Crop, Normalizer};
use sampler::Sampler;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{path}: the mean image has shape {found:?}, the dataset stores {size}×{size}×3; re-run `alexnet preprocess`")]
    MeanShape {
        path: std::path::PathBuf,
        found: Vec<usize>,
        size: u32,
    },
    #[error("the {split} split of {path} holds no images")]
    Empty {
        split: Split,
        path: std::path::PathBuf,
    },
    #[error("invalid loader settings: {0}")]
    Settings(String),
    #[error(
        "{shard}: record {record} (source image {source_path}) does not match its checksum: the \
         shard is damaged; {}",
        shards::FIX_VERIFY
    )]
    Damaged {
        shard: PathBuf,
        record: usize,
        source_path: String,
    },
    #[error("the loader stopped unexpectedly: {0}")]
    Worker(String),
    #[error("cannot draw the labels of the contact sheet {path}")]
    ContactSheetLabels {
        path: PathBuf,
        #[source]
        source: crate::canvas::DrawError,
    },
}

/// Everything the loader reads from a dataset directory, shared by the loader threads.
pub struct LoaderData {
    pub reader: SplitReader,
    pub labels: Vec<u32>,
    /// Each record's checksum from its shard index: a record is checked against it the first
    /// time this process reads it.
    checksums: Vec<u64>,
    /// One bit per record: already checked by this process.
    verified: Vec<AtomicU64>,
    /// The split's content fingerprint from the manifest (identifies the dataset).
    pub fingerprint: String,
    pub classes: Vec<ClassInfo>,
    pub image_size: u32,
    /// Training-set mean image, `size × size × 3`, 0..255 scale.
    pub mean_image: Vec<f32>,
    pub channel_mean: [f32; 3],
    pub channel_std: [f32; 3],
}

impl LoaderData {
    /// Opens and validates one split of a dataset written by `alexnet preprocess`.
    pub fn open(dataset: &Path, split: Split) -> Result<Self, LoaderError> {
        let manifest = Manifest::read(dataset)?;
        let reader = SplitReader::open_with(dataset, &manifest, split)?;
        if reader.is_empty() {
            return Err(LoaderError::Empty {
                split,
                path: dataset.to_path_buf(),
            });
        }
        let rows = reader.read_index()?;
        let labels = rows.iter().map(|r| r.label).collect();
        let checksums = rows.iter().map(|r| r.checksum).collect();
        let verified = (0..rows.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        let fingerprint = manifest
            .split(split)
            .map(|s| s.fingerprint.clone())
            .unwrap_or_default();
        let mean_path = dataset.join(&manifest.mean.mean_image);
        let (shape, mean_image) = shards::read_mean(&mean_path, &manifest.mean)?;
        let size = manifest.image_size as usize;
        if shape != [size, size, 3] {
            return Err(LoaderError::MeanShape {
                path: mean_path,
                found: shape,
                size: manifest.image_size,
            });
        }
        Ok(Self {
            reader,
            labels,
            checksums,
            verified,
            fingerprint,
            classes: manifest.classes,
            image_size: manifest.image_size,
            mean_image,
            channel_mean: manifest.mean.channel_mean.map(|v| v as f32),
            channel_std: manifest.mean.channel_std.map(|v| v as f32),
        })
    }

    pub fn len(&self) -> usize {
        self.reader.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reader.is_empty()
    }

    /// Checks every record not yet checked by this process (reads the whole split).
    pub fn verify_checksums(&self) -> Result<(), LoaderError> {
        (0..self.len())
            .into_par_iter()
            .try_for_each(|i| self.verify_once(i))
    }

    /// The pixels of record `i`, checked against its checksum the first time this process
    /// reads it. Callers are the loader's workers, so the check costs parallel time.
    pub fn checked_record(&self, i: usize) -> Result<&[u8], LoaderError> {
        self.verify_once(i)?;
        Ok(self.reader.record(i))
    }

    fn verify_once(&self, i: usize) -> Result<(), LoaderError> {
        let (word, bit) = (&self.verified[i / 64], 1u64 << (i % 64));
        if word.load(Ordering::Relaxed) & bit != 0 {
            return Ok(());
        }
        if shards::record_checksum(self.reader.record(i)) != self.checksums[i] {
            return Err(self.damaged(i));
        }
        word.fetch_or(bit, Ordering::Relaxed);
        Ok(())
    }

    /// The error for a damaged record, naming its shard and source image.
    fn damaged(&self, i: usize) -> LoaderError {
        let (shard, record) = self.reader.locate(i);
        let paths = self.reader.shard_paths(shard);
        let source_path = shards::read_index(&paths.index)
            .ok()
            .and_then(|rows| rows.get(record).map(|r| r.source_path.clone()))
            .unwrap_or_else(|| "unknown: its index is unreadable".into());
        LoaderError::Damaged {
            shard: paths.records,
            record,
            source_path,
        }
    }

    /// Treats every record as checked (only for measuring what the checks cost).
    pub fn trust_checksums(&self) {
        for word in &self.verified {
            word.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// Refuses crops that don't fit the stored images.
    /// Whether `pipeline` is the one these shards were made for: its stored image size (crops
    /// of another scale would train and evaluate without a word) and its crop.
    pub fn check_pipeline(&self, pipeline: &crate::config::Pipeline) -> Result<(), LoaderError> {
        let expected = pipeline.preprocess.image_size;
        if expected != self.image_size {
            return Err(LoaderError::Settings(format!(
                "the pipeline's preprocess.image_size is {expected}, but the shards hold \
                 {0}×{0} images: pass the pipeline the data was preprocessed with (--pipeline), \
                 or preprocess the data with this one",
                self.image_size
            )));
        }
        self.check_crop(pipeline.loader.crop_size)
    }

    pub fn check_crop(&self, crop_size: u32) -> Result<(), LoaderError> {
        if crop_size == 0 || crop_size > self.image_size {
            return Err(LoaderError::Settings(format!(
                "crop size {crop_size} does not fit the stored {0}×{0} images (pass the \
                 pipeline the data was preprocessed with, --pipeline)",
                self.image_size
            )));
        }
        Ok(())
    }

    fn normalizer(&self, normalize: Normalize) -> Normalizer<'_> {
        match normalize {
            Normalize::MeanImage => Normalizer::MeanImage(&self.mean_image),
            Normalize::Channel => Normalizer::Channel {
                mean: self.channel_mean,
                inv_std: self.channel_std.map(|s| 1.0 / s.max(1e-6)),
            },
        }
    }
}

/// Pixel type of the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Raw crops; mean subtraction and lighting (see `Batch::lighting`) happen on the device.
    U8,
    /// Normalised crops with lighting applied.
    F32,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::U8 => "u8",
            Output::F32 => "f32",
        })
    }
}

/// Which views of each image a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shuffled, random crop + flip + lighting, one view per image.
    Train,
    /// In order, the centre crop only.
    Center,
    /// In order, the ten crops (four corners and centre, then mirrored), image-major.
    TenCrop,
}

impl Mode {
    pub fn views(self) -> usize {
        match self {
            Mode::Train | Mode::Center => 1,
            Mode::TenCrop => 10,
        }
    }
}

/// Where a stream starts (and where a resumed one continues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: u64,
    /// Samples of the epoch order already consumed (in training, by all ranks together).
    pub sample: usize,
}

/// Everything that defines a stream of batches.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub config: LoaderConfig,
    pub output: Output,
    pub mode: Mode,
    /// This process's part of a data-parallel job (see `dist`). In training every rank walks
    /// the same epoch order in batches of `batch_size` (the whole batch) and takes its slice
    /// of each (`World::slice`), so the ranks together see what one process would; in
    /// evaluation rank r takes every `world_size`-th image from r.
    pub rank: usize,
    pub world_size: usize,
    pub start: Position,
    /// Stop after this many epochs (counted from `start.epoch`); `None` runs forever.
    pub epochs: Option<u64>,
    /// Compute `Batch::digests` (a digest of each image's pixels, taken while they are still
    /// in the worker's cache), for comparing streams cheaply.
    pub digests: bool,
}

impl LoaderOptions {
    pub fn train(config: &LoaderConfig, output: Output) -> Self {
        Self {
            config: config.clone(),
            output,
            mode: Mode::Train,
            rank: 0,
            world_size: 1,
            start: Position::default(),
            epochs: None,
            digests: false,
        }
    }

    /// One pass over a split in order, every image once (last batch may be short).
    pub fn eval(config: &LoaderConfig, output: Output, mode: Mode) -> Self {
        Self {
            mode,
            epochs: Some(1),
            ..Self::train(config, output)
        }
    }
}

/// Pixels of a batch: `images × views × crop × crop × 3`, channels last.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl Pixels {
    /// The raw bytes (little-endian for f32), e.g. for checksums.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Pixels::U8(v) => v,
            Pixels::F32(v) => as_bytes(v),
        }
    }
}

/// One batch, and where it sits in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    /// Position of the whole batch's first image in the epoch order (see `LoaderOptions::rank`).
    pub position: usize,
    /// Where this rank's slice starts in the whole batch, and the whole batch's images (0 and
    /// `len()` for one process).
    pub first_image: usize,
    pub whole_batch: usize,
    /// Dataset index of each image.
    pub indices: Vec<u32>,
    pub labels: Vec<u32>,
    /// Per image, the RGB lighting offset (0..255 scale) a u8 consumer adds on the device;
    /// already applied in f32 batches.
    pub lighting: Vec<[f32; 3]>,
    /// Where each view was cut (image-major, `views` per image): a u8 consumer subtracts the
    /// mean image at these positions.
    pub crops: Vec<Crop>,
    pub crop_size: u32,
    pub views: usize,
    pub pixels: Pixels,
    /// Per image, `pixel_digest` of its pixels' bytes (all views) when
    /// `LoaderOptions::digests` is set; empty otherwise.
    pub digests: Vec<u64>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Where the stream continues after this batch (for checkpoints).
    pub fn next_position(&self) -> Position {
        Position {
            epoch: self.epoch,
            sample: self.position + self.whole_batch,
        }
    }

    fn empty(output: Output) -> Self {
        Self {
            epoch: 0,
            position: 0,
            first_image: 0,
            whole_batch: 0,
            indices: Vec::new(),
            labels: Vec::new(),
            lighting: Vec::new(),
            crops: Vec::new(),
            crop_size: 0,
            views: 0,
            digests: Vec::new(),
            pixels: match output {
                Output::U8 => Pixels::U8(Vec::new()),
                Output::F32 => Pixels::F32(Vec::new()),
            },
        }
    }
}

/// A running stream of batches. Dropping it stops the background thread and waits for it.
///
/// It yields `Err` once, and then ends, when a record fails its check or the background
/// thread fails: a stream never just stops short.
pub struct Loader {
    batches: Option<Receiver<Result<Batch, LoaderError>>>,
    recycle: Sender<Batch>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    pub fn start(data: Arc<LoaderData>, options: LoaderOptions) -> Result<Self, LoaderError> {
        let config = &options.config;
        data.check_crop(config.crop_size)?;
        if options.world_size == 0 || options.rank >= options.world_size {
            return Err(LoaderError::Settings(format!(
                "rank {} is not in 0..{}",
                options.rank, options.world_size
            )));
        }
        let sampler = Sampler::new(data.len(), config.seed);
        if options.mode == Mode::Train
            && config.drop_last
            && sampler.epoch_len() < config.batch_size
        {
            return Err(LoaderError::Settings(format!(
                "an epoch holds {} images, fewer than one batch of {}, and incomplete batches \
                 are dropped (loader.drop_last): lower the batch size",
                sampler.epoch_len(),
                config.batch_size
            )));
        }
        let threads = config.resolved_threads();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .map_err(|e| LoaderError::Settings(e.to_string()))?;
        let (batch_tx, batch_rx) = mpsc::sync_channel(config.prefetch);
        let (recycle_tx, recycle_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = Producer {
            data,
            options,
            sampler,
            pool,
            batches: batch_tx,
            recycled: recycle_rx,
            stop: stop.clone(),
        };
        let worker = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || producer.run())
            .map_err(|e| LoaderError::Settings(format!("cannot start the loader thread: {e}")))?;
        Ok(Self {
            batches: Some(batch_rx),
            recycle: recycle_tx,
            stop,
            worker: Some(worker),
        })
    }

    /// Hands a consumed batch's buffers back for reuse (optional, saves allocations).
    pub fn recycle(&self, batch: Batch) {
        let _ = self.recycle.send(batch);
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.batches.as_ref()?.recv() {
            Ok(Ok(batch)) => Some(Ok(batch)),
            Ok(Err(e)) => {
                self.batches = None;
                Some(Err(e))
            }
            // The producer is gone: either the stream is complete or the thread panicked.
            Err(_) => {
                self.batches = None;
                let worker = self.worker.take()?;
                match worker.join() {
                    Ok(()) => None,
                    Err(panic) => Some(Err(LoaderError::Worker(panic_message(&panic)))),
                }
            }
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a worker thread panicked".into())
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the queue wakes a producer blocked on a full queue.
        drop(self.batches.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The background side of a `Loader`.
struct Producer {
    data: Arc<LoaderData>,
    options: LoaderOptions,
    sampler: Sampler,
    pool: rayon::ThreadPool,
    batches: SyncSender<Result<Batch, LoaderError>>,
    recycled: Receiver<Batch>,
    stop: Arc<AtomicBool>,
}

impl Producer {
    fn run(self) {
        let opts = &self.options;
        let batch_size = opts.config.batch_size;
        let mut position = opts.start;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some(epochs) = opts.epochs {
                if position.epoch >= opts.start.epoch + epochs {
                    return;
                }
            }
            let order = self.epoch_order(position.epoch);
            while position.sample < order.len() {
                let n = batch_size.min(order.len() - position.sample);
                if n < batch_size && opts.mode == Mode::Train && opts.config.drop_last {
                    break;
                }
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut batch = self
                    .recycled
                    .try_recv()
                    .unwrap_or_else(|_| Batch::empty(opts.output));
                let whole = &order[position.sample..position.sample + n];
                let rows = match opts.mode {
                    Mode::Train => self.world().slice(n),
                    Mode::Center | Mode::TenCrop => 0..n,
                };
                let filled = self.fill(&mut batch, position, &whole[rows.clone()]);
                batch.first_image = rows.start;
                batch.whole_batch = n;
                let filled = filled.map(|()| batch);
                let failed = filled.is_err();
                if self.batches.send(filled).is_err() || failed {
                    return; // the consumer is gone, or has been told why the stream ends
                }
                position.sample += n;
            }
            position = Position {
                epoch: position.epoch + 1,
                sample: 0,
            };
        }
    }

    fn world(&self) -> World {
        World {
            rank: self.options.rank,
            size: self.options.world_size,
            local_rank: 0,
        }
    }

    fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        match self.options.mode {
            Mode::Train => self.sampler.epoch(epoch),
            // Evaluation reads in dataset order; rank r takes every world_size-th image from r.
            Mode::Center | Mode::TenCrop => (self.options.rank..self.data.len())
                .step_by(self.options.world_size)
                .map(|i| i as u32)
                .collect(),
        }
    }

    /// Assembles `indices` into `batch`, in parallel, reusing its buffers.
    fn fill(
        &self,
        batch: &mut Batch,
        position: Position,
        indices: &[u32],
    ) -> Result<(), LoaderError> {
        let opts = &self.options;
        let config = &opts.config;
        let (stored, crop) = (self.data.image_size, config.crop_size);
        let views = opts.mode.views();

        batch.epoch = position.epoch;
        batch.position = position.sample;
        batch.crop_size = crop;
        batch.views = views;
        batch.indices.clear();
        batch.indices.extend_from_slice(indices);
        batch.labels.clear();
        batch
            .labels
            .extend(indices.iter().map(|&i| self.data.labels[i as usize]));
        let augment = |i: u32| match opts.mode {
            Mode::Train => {
                let mut rng = sampler::sample_rng(config.seed, position.epoch, i);
                Augmentation::draw(&mut rng, stored, crop, config.flip, config.lighting_std)
            }
            Mode::Center | Mode::TenCrop => Augmentation {
                crop: augment::center_crop(stored, crop),
                lighting: [0.0; 3],
            },
        };
        let draws: Vec<Augmentation> = indices.iter().map(|&i| augment(i)).collect();
        batch.lighting.clear();
        batch.lighting.extend(draws.iter().map(|a| a.lighting));

        let views_of = |a: &Augmentation| -> Vec<Crop> {
            match opts.mode {
                Mode::TenCrop => augment::ten_crops(stored, crop).to_vec(),
                _ => vec![a.crop],
            }
        };
        let images: Vec<(usize, Vec<Crop>, [f32; 3])> = indices
            .iter()
            .zip(&draws)
            .map(|(&i, a)| (i as usize, views_of(a), a.lighting))
            .collect();
        batch.crops.clear();
        batch.crops.extend(
            images
                .iter()
                .flat_map(|(_, views, _)| views.iter().copied()),
        );
        let digests = match &mut batch.pixels {
            Pixels::U8(buf) => {
                self.write_views(buf, &images, opts.digests, |record, at, _, out| {
                    augment::crop_u8(record, stored, crop, at, out)
                })
            }
            Pixels::F32(buf) => {
                let norm = self.data.normalizer(config.normalize);
                self.write_views(buf, &images, opts.digests, |record, at, lighting, out| {
                    augment::crop_f32(record, stored, crop, at, lighting, &norm, out)
                })
            }
        };
        batch.digests = digests?;
        Ok(())
    }

    /// Writes every view of every image into `buf` (resized to fit) on the pool, one image per
    /// task, checking each record the first time it is read, and returns the per-image pixel
    /// digests when `digests` is set (else nothing).
    fn write_views<T: Copy + Default + Send + Sync>(
        &self,
        buf: &mut Vec<T>,
        images: &[(usize, Vec<Crop>, [f32; 3])],
        digests: bool,
        write: impl Fn(&[u8], Crop, [f32; 3], &mut [T]) + Sync,
    ) -> Result<Vec<u64>, LoaderError> {
        let crop = self.options.config.crop_size as usize;
        let view_len = crop * crop * 3;
        let image_len = view_len * self.options.mode.views();
        buf.resize(images.len() * image_len, T::default());
        let data = &self.data;
        let per_image: Vec<u64> = self.pool.install(|| {
            buf.par_chunks_mut(image_len)
                .zip(images)
                .map(|(out, &(index, ref views, lighting))| {
                    let record = data.checked_record(index)?;
                    for (view, &at) in out.chunks_exact_mut(view_len).zip(views) {
                        write(record, at, lighting, view);
                    }
                    // Digest while the pixels are still in this core's cache.
                    Ok(if digests {
                        pixel_digest(as_bytes(out))
                    } else {
                        0
                    })
                })
                .collect::<Result<_, LoaderError>>()
        })?;
        Ok(if digests { per_image } else { Vec::new() })
    }
}

/// The bytes of a slice of plain numbers (u8 or f32), for digests.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: only instantiated with u8 and f32, which have no padding or invalid bit
    // patterns; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// A cheap digest of one image's pixel bytes: eight independent Fletcher-style lanes of u64
/// words (plain additions, which vectorise), folded with xxh3. Sensitive to every byte and to
/// the order of 64-byte blocks.
pub fn pixel_digest(bytes: &[u8]) -> u64 {
    let mut sums = [0u64; 8];
    let mut sums_of_sums = [0u64; 8];
    let (blocks, tail) = bytes.as_chunks::<64>();
    for block in blocks {
        let (words, _) = block.as_chunks::<8>();
        for lane in 0..8 {
            sums[lane] = sums[lane].wrapping_add(u64::from_le_bytes(words[lane]));
            sums_of_sums[lane] = sums_of_sums[lane].wrapping_add(sums[lane]);
        }
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for v in sums.iter().chain(&sums_of_sums) {
        h.update(&v.to_le_bytes());
    }
    h.update(tail);
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.digest()
}

/// A digest of a batch stream — every image's pixels (via `Batch::digests`, or computed here
/// when the loader didn't) and every label, in order — for checking that two runs produced
/// the same batches.
#[derive(Default)]
pub struct StreamChecksum(xxhash_rust::xxh3::Xxh3);

impl StreamChecksum {
    pub fn add(&mut self, batch: &Batch) {
        let computed;
        let digests = if batch.digests.len() == batch.len() {
            &batch.digests
        } else {
            let bytes = batch.pixels.as_bytes();
            let per_image = bytes.len() / batch.len().max(1);
            computed = bytes
                .chunks_exact(per_image.max(1))
                .map(pixel_digest)
                .collect::<Vec<_>>();
            &computed
        };
        for (digest, label) in digests.iter().zip(&batch.labels) {
            self.0.update(&digest.to_le_bytes());
            self.0.update(&label.to_le_bytes());
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0.digest())
    }
}

#[cfg(test)]
mod tests;
