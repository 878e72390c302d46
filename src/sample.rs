//! Deterministic synthetic dataset in ImageNet's on-disk layout (`alexnet sample`).
//!
//! The generated tree is the project's demo data and the fixture for its tests:
//!
//! ```text
//! DIR/train/<wnid>/<wnid>_<n>.JPEG
//! DIR/val/ILSVRC2012_val_<8 digits>.JPEG        (ValLayout::Flat)
//! DIR/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG (ValLayout::Folders)
//! DIR/LOC_val_solution.csv                       (ValLayout::Flat only)
//! DIR/LOC_synset_mapping.txt
//! ```
//!
//! Each class is a shape or a texture drawn at a random position, scale and
//! rotation with random colours over a random gradient, so neither colour nor
//! position gives the label away, while a small CNN can still learn it. The
//! position is random only within the image's central square, away from its
//! edges (see [`object_region`]), so that the centre crop of preprocessing and
//! the 7/8 crops of training and evaluation always show the object.
//!
//! Every image draws its randomness from its own ChaCha8 stream seeded from
//! `(seed, split, class, index)`, so output is byte-identical for the same
//! options whatever the number of rayon threads.
//!
//! With [`SampleOptions::edge_cases`] the generator also plants the kinds of
//! awkward files that real ImageNet contains (grayscale, CMYK, progressive,
//! PNG-named-JPEG, truncated, empty) and reports where in
//! [`SampleSummary::edge_cases`].

use std::f32::consts::{PI, TAU};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, SamplingFactor};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::seed::splitmix64;

/// How the validation images are laid out under `DIR/val`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValLayout {
    /// `val/ILSVRC2012_val_XXXXXXXX.JPEG` with labels in `LOC_val_solution.csv`
    /// (the layout of the Kaggle ImageNet download).
    Flat,
    /// `val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG` (the layout after the usual
    /// `valprep.sh`); no CSV is written.
    Folders,
}

/// What to generate. See the field docs for the defaults.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Number of classes, `1..=MAX_CLASSES` (default 10).
    pub classes: usize,
    /// Regular training images per class (default 48).
    pub train_per_class: usize,
    /// Validation images per class (default 10).
    pub val_per_class: usize,
    /// Lower bound of an image's shorter side in pixels (default 64, at least 16).
    pub min_side: u32,
    /// Upper bound of an image's shorter side in pixels (default 800, at most 65535).
    /// Shorter sides are drawn log-uniformly, so most images are small.
    pub max_side: u32,
    /// Seed of every random choice (default 0).
    pub seed: u64,
    /// Validation layout (default [`ValLayout::Flat`]).
    pub val_layout: ValLayout,
    /// Plant the edge-case files described in [`EdgeKind`] (default true).
    pub edge_cases: bool,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            classes: 10,
            train_per_class: 48,
            val_per_class: 10,
            min_side: 64,
            max_side: 800,
            seed: 0,
            val_layout: ValLayout::Flat,
            edge_cases: true,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default)]
pub struct SampleSummary {
    /// Number of classes (one `train/<wnid>` folder each).
    pub classes: usize,
    /// Files written under `train/`, edge-case files included.
    pub train_files: usize,
    /// Files written under `val/`, edge-case files included.
    pub val_files: usize,
    /// Total bytes written, CSV and synset mapping included.
    pub bytes: u64,
    /// Every planted edge case, train ones first (in [`EdgeKind::ALL`] order), then val.
    pub edge_cases: Vec<EdgeCase>,
}

/// One planted edge-case file.
#[derive(Debug, Clone)]
pub struct EdgeCase {
    /// Path relative to the output directory, with `/` separators.
    pub path: String,
    /// What is special about the file.
    pub kind: EdgeKind,
}

/// Kinds of awkward files found in the real ImageNet training set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// Single-channel (luma) JPEG of a genuine class image.
    Grayscale,
    /// Four-channel CMYK JPEG with an Adobe APP14 marker, stored inverted as
    /// Photoshop does; decodes (with Adobe inversion) to the class image.
    Cmyk,
    /// Progressive JPEG (SOF2) of a genuine class image.
    Progressive,
    /// PNG file saved under a `.JPEG` name (like ImageNet's `n02105855_2933.JPEG`).
    PngNamedJpeg,
    /// Baseline JPEG cut to 40–60 % of its bytes, so the end-of-image marker is
    /// missing. Its shorter side is at least 300 px, regardless of `max_side`.
    Truncated,
    /// Zero-byte file.
    Empty,
}

impl EdgeKind {
    /// All kinds, in the order they are planted.
    pub const ALL: [EdgeKind; 6] = [
        EdgeKind::Grayscale,
        EdgeKind::Cmyk,
        EdgeKind::Progressive,
        EdgeKind::PngNamedJpeg,
        EdgeKind::Truncated,
        EdgeKind::Empty,
    ];

    /// Whether a robust preprocessing pipeline should skip (and report) this
    /// file rather than decode it.
    pub fn should_be_rejected(self) -> bool {
        matches!(self, EdgeKind::Truncated | EdgeKind::Empty)
    }

    /// Short stable name, e.g. for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            EdgeKind::Grayscale => "grayscale",
            EdgeKind::Cmyk => "cmyk",
            EdgeKind::Progressive => "progressive",
            EdgeKind::PngNamedJpeg => "png-named-jpeg",
            EdgeKind::Truncated => "truncated",
            EdgeKind::Empty => "empty",
        }
    }
}

/// Errors from [`generate`].
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Reading or writing `path` failed.
    #[error("I/O error on {}", path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// An encoder refused an image destined for `path`.
    #[error("cannot encode {}: {message}", path.display())]
    Encode {
        /// File that was being produced.
        path: PathBuf,
        /// Encoder's message.
        message: String,
    },
    /// The options or the output directory are unusable.
    #[error("invalid sample options: {0}")]
    InvalidOptions(String),
}

/// Largest supported `classes`: every pattern in three variants.
pub const MAX_CLASSES: usize = PATTERNS.len() * VARIANTS;

/// Smallest accepted `min_side`; below this the patterns become mush.
const MIN_SIDE_LIMIT: u32 = 16;

/// jpeg-encoder takes `u16` dimensions.
const MAX_JPEG_SIDE: u32 = u16::MAX as u32;

/// Truncating a tiny JPEG could cut into its headers; keep truncated files big.
const TRUNCATED_MIN_SIDE: u32 = 300;

/// Numbers in validation file names have eight digits.
const MAX_VAL_FILES: usize = 99_999_999;

/// Synthetic WordNet ids of the first `classes` classes, in class-index order
/// (which is also their sorted order). [`generate`] uses exactly these.
pub fn class_wnids(classes: usize) -> Vec<String> {
    (0..classes).map(wnid).collect()
}

/// Human-readable names of the first `classes` classes, as written to
/// `LOC_synset_mapping.txt` (e.g. `"checkerboard, fine"`).
pub fn class_names(classes: usize) -> Vec<String> {
    (0..classes).map(|c| class_spec(c).name()).collect()
}

fn wnid(class: usize) -> String {
    format!("n{:08}", 1000 + 7 * class)
}

/// Writes a synthetic dataset into `out`, which must be missing or empty.
///
/// The same options always produce byte-identical files.
pub fn generate(out: &Path, opts: &SampleOptions) -> Result<SampleSummary, SampleError> {
    validate(opts)?;
    prepare_output_dir(out)?;
    let plan = plan_jobs(opts);
    create_class_dirs(out, opts)?;

    let results = plan
        .jobs
        .par_iter()
        .map(|job| run_job(out, opts, job))
        .collect::<Result<Vec<_>, _>>()?;

    let mut summary = SampleSummary {
        classes: opts.classes,
        edge_cases: plan.edge_cases,
        ..SampleSummary::default()
    };
    for (job, result) in plan.jobs.iter().zip(&results) {
        summary.bytes += result.bytes;
        match job.split {
            Split::Train | Split::EdgeTrain => summary.train_files += 1,
            Split::Val | Split::EdgeVal => summary.val_files += 1,
        }
    }

    summary.bytes += write_file(
        out,
        "LOC_synset_mapping.txt",
        synset_mapping(opts.classes).as_bytes(),
    )?;
    if opts.val_layout == ValLayout::Flat {
        let csv = val_solution_csv(&plan.jobs, &results);
        summary.bytes += write_file(out, "LOC_val_solution.csv", csv.as_bytes())?;
    }
    Ok(summary)
}

fn validate(opts: &SampleOptions) -> Result<(), SampleError> {
    let invalid = |msg: String| Err(SampleError::InvalidOptions(msg));
    if opts.classes == 0 || opts.classes > MAX_CLASSES {
        return invalid(format!(
            "classes must be between 1 and {MAX_CLASSES}, got {}",
            opts.classes
        ));
    }
    if opts.min_side < MIN_SIDE_LIMIT {
        return invalid(format!(
            "min_side must be at least {MIN_SIDE_LIMIT}, got {}",
            opts.min_side
        ));
    }
    if opts.max_side > MAX_JPEG_SIDE {
        return invalid(format!(
            "max_side must be at most {MAX_JPEG_SIDE}, got {}",
            opts.max_side
        ));
    }
    if opts.min_side > opts.max_side {
        return invalid(format!(
            "min_side ({}) is larger than max_side ({})",
            opts.min_side, opts.max_side
        ));
    }
    let val_files = opts.classes.checked_mul(opts.val_per_class);
    if val_files.is_none_or(|n| n >= MAX_VAL_FILES) {
        return invalid(format!(
            "{} classes x {} val images do not fit ImageNet's 8-digit val numbering",
            opts.classes, opts.val_per_class
        ));
    }
    Ok(())
}

/// Refuses to mix generated files with anything already in `out`, so a stale
/// or unrelated tree can never be mistaken for a sample.
fn prepare_output_dir(out: &Path) -> Result<(), SampleError> {
    let io_err = |source| SampleError::Io {
        path: out.to_path_buf(),
        source,
    };
    match fs::metadata(out) {
        Ok(meta) if !meta.is_dir() => Err(SampleError::InvalidOptions(format!(
            "{} exists and is not a directory; choose an empty directory",
            out.display()
        ))),
        Ok(_) => {
            let mut entries = fs::read_dir(out).map_err(io_err)?;
            if entries.next().is_some() {
                Err(SampleError::InvalidOptions(format!(
                    "{} is not empty; choose an empty directory or delete it first",
                    out.display()
                )))
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(out).map_err(io_err),
        Err(e) => Err(io_err(e)),
    }
}

fn create_class_dirs(out: &Path, opts: &SampleOptions) -> Result<(), SampleError> {
    let mut dirs = vec![out.join("val")];
    for wnid in class_wnids(opts.classes) {
        dirs.push(out.join("train").join(&wnid));
        if opts.val_layout == ValLayout::Folders {
            dirs.push(out.join("val").join(&wnid));
        }
    }
    for dir in dirs {
        fs::create_dir_all(&dir).map_err(|source| SampleError::Io { path: dir, source })?;
    }
    Ok(())
}

fn synset_mapping(classes: usize) -> String {
    class_wnids(classes)
        .iter()
        .zip(class_names(classes))
        .map(|(wnid, name)| format!("{wnid} {name}\n"))
        .collect()
}

/// `LOC_val_solution.csv`, rows in file-number order, one box per drawn object.
fn val_solution_csv(jobs: &[Job], results: &[JobResult]) -> String {
    let mut rows: Vec<(usize, String)> = jobs
        .iter()
        .zip(results)
        .filter_map(|(job, result)| {
            let number = job.val_number?;
            let wnid = wnid(job.class);
            let boxes: Vec<String> = result
                .boxes
                .iter()
                .map(|b| format!("{wnid} {} {} {} {}", b.x0, b.y0, b.x1, b.y1))
                .collect();
            Some((
                number,
                format!("{},{}\n", val_stem(number), boxes.join(" ")),
            ))
        })
        .collect();
    rows.sort_by_key(|(number, _)| *number);
    let mut csv = String::from("ImageId,PredictionString\n");
    csv.extend(rows.into_iter().map(|(_, row)| row));
    csv
}

fn val_stem(number: usize) -> String {
    format!("ILSVRC2012_val_{number:08}")
}

// ---------------------------------------------------------------------------
// Planning: every file is a self-contained job, so jobs can run in any order.

/// Which random stream an image uses; part of its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Train = 1,
    Val = 2,
    EdgeTrain = 3,
    EdgeVal = 4,
}

/// Tag for the stream that shuffles validation labels; distinct from all splits.
const VAL_ORDER_STREAM: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeRule {
    /// Log-uniform shorter side, aspect skewed towards 1.
    Random,
    /// Aspect exactly 3, landscape.
    Wide,
    /// Aspect exactly 3, portrait.
    Tall,
    /// Shorter side exactly `min_side`.
    Shortest,
    /// Shorter side exactly `max_side`.
    Longest,
    /// Shorter side at least [`TRUNCATED_MIN_SIDE`], ignoring `max_side`.
    Large,
}

/// A few regular train images are pinned to the extremes of the size range so
/// consumers always meet them, however few images are generated.
const EXTREME_SIZES: [SizeRule; 4] = [
    SizeRule::Wide,
    SizeRule::Tall,
    SizeRule::Shortest,
    SizeRule::Longest,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Baseline,
    Grayscale,
    Cmyk,
    Progressive,
    Png,
    Truncated,
    Empty,
}

impl Encoding {
    fn for_edge(kind: EdgeKind) -> Self {
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

#[derive(Debug, Clone)]
struct Job {
    /// Relative to the output directory, `/`-separated.
    rel_path: String,
    class: usize,
    split: Split,
    /// Index within (split, class) for seeding.
    index: u64,
    size: SizeRule,
    encoding: Encoding,
    /// 1-based `ILSVRC2012_val_` number for validation files.
    val_number: Option<usize>,
}

struct Plan {
    jobs: Vec<Job>,
    edge_cases: Vec<EdgeCase>,
}

fn plan_jobs(opts: &SampleOptions) -> Plan {
    let wnids = class_wnids(opts.classes);
    let mut jobs = Vec::new();
    let mut edge_cases = Vec::new();

    for (class, wnid) in wnids.iter().enumerate() {
        for n in 0..opts.train_per_class {
            jobs.push(Job {
                rel_path: train_path(wnid, n),
                class,
                split: Split::Train,
                index: n as u64,
                size: pinned_size(opts.classes, class, n),
                encoding: Encoding::Baseline,
                val_number: None,
            });
        }
    }

    if opts.edge_cases {
        // Round-robin over classes so the edge cases land in the first classes,
        // numbered after the regular files of their class.
        for (k, kind) in EdgeKind::ALL.into_iter().enumerate() {
            let class = k % opts.classes;
            let rel_path = train_path(&wnids[class], opts.train_per_class + k / opts.classes);
            edge_cases.push(EdgeCase {
                path: rel_path.clone(),
                kind,
            });
            jobs.push(Job {
                rel_path,
                class,
                split: Split::EdgeTrain,
                index: k as u64,
                size: edge_size(kind),
                encoding: Encoding::for_edge(kind),
                val_number: None,
            });
        }
    }

    let val_labels = shuffled_val_labels(opts);
    for (i, &class) in val_labels.iter().enumerate() {
        let number = i + 1;
        jobs.push(Job {
            rel_path: val_path(opts.val_layout, &wnids[class], number),
            class,
            split: Split::Val,
            index: number as u64,
            size: SizeRule::Random,
            encoding: Encoding::Baseline,
            val_number: Some(number),
        });
    }

    if opts.edge_cases && !val_labels.is_empty() {
        let number = val_labels.len() + 1;
        let class = opts.classes - 1;
        let rel_path = val_path(opts.val_layout, &wnids[class], number);
        edge_cases.push(EdgeCase {
            path: rel_path.clone(),
            kind: EdgeKind::Truncated,
        });
        jobs.push(Job {
            rel_path,
            class,
            split: Split::EdgeVal,
            index: 0,
            size: SizeRule::Large,
            encoding: Encoding::Truncated,
            val_number: Some(number),
        });
    }

    Plan { jobs, edge_cases }
}

fn train_path(wnid: &str, n: usize) -> String {
    format!("train/{wnid}/{wnid}_{n}.JPEG")
}

fn val_path(layout: ValLayout, wnid: &str, number: usize) -> String {
    match layout {
        ValLayout::Flat => format!("val/{}.JPEG", val_stem(number)),
        ValLayout::Folders => format!("val/{wnid}/{}.JPEG", val_stem(number)),
    }
}

fn pinned_size(classes: usize, class: usize, n: usize) -> SizeRule {
    // Spread the extremes over classes so no class is special.
    EXTREME_SIZES
        .iter()
        .enumerate()
        .find(|(k, _)| k % classes == class && k / classes == n)
        .map_or(SizeRule::Random, |(_, &rule)| rule)
}

fn edge_size(kind: EdgeKind) -> SizeRule {
    match kind {
        EdgeKind::Truncated => SizeRule::Large,
        _ => SizeRule::Random,
    }
}

/// ImageNet's validation files are not grouped by class; neither are ours.
fn shuffled_val_labels(opts: &SampleOptions) -> Vec<usize> {
    let mut labels: Vec<usize> = (0..opts.classes)
        .flat_map(|class| std::iter::repeat_n(class, opts.val_per_class))
        .collect();
    let mut rng = stream_rng(opts.seed, VAL_ORDER_STREAM, 0, 0);
    labels.shuffle(&mut rng);
    labels
}

// ---------------------------------------------------------------------------
// Running a job.

struct JobResult {
    bytes: u64,
    boxes: Vec<BBox>,
}

fn run_job(out: &Path, opts: &SampleOptions, job: &Job) -> Result<JobResult, SampleError> {
    if job.encoding == Encoding::Empty {
        let bytes = write_file(out, &job.rel_path, &[])?;
        return Ok(JobResult {
            bytes,
            boxes: Vec::new(),
        });
    }
    let (image, mut rng) = render_job(opts, job);
    let encoded =
        encode(&image.canvas, job.encoding, &mut rng).map_err(|message| SampleError::Encode {
            path: out.join(&job.rel_path),
            message,
        })?;
    let bytes = write_file(out, &job.rel_path, &encoded)?;
    Ok(JobResult {
        bytes,
        boxes: image.boxes,
    })
}

/// Renders the job's image and returns the stream positioned for encoding
/// choices, so tests can reproduce exactly what a file contains.
fn render_job(opts: &SampleOptions, job: &Job) -> (Rendered, ChaCha8Rng) {
    let mut rng = stream_rng(opts.seed, job.split as u64, job.class as u64, job.index);
    let (width, height) = pick_dimensions(&mut rng, job.size, opts);
    let image = render_class_image(&mut rng, job.class, width, height);
    (image, rng)
}

/// Independent stream per image: mixing the coordinates through SplitMix64
/// gives unrelated seeds even for neighbouring indices.
fn stream_rng(seed: u64, stream: u64, class: u64, index: u64) -> ChaCha8Rng {
    let mut state = seed;
    for part in [stream, class, index] {
        state = splitmix64(state ^ splitmix64(part));
    }
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        state = splitmix64(state);
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Writes via a hidden temporary file and a rename, so an interrupted run never
/// leaves a half-written file under its final name.
fn write_file(out: &Path, rel_path: &str, data: &[u8]) -> Result<u64, SampleError> {
    let path = out.join(rel_path);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SampleError::Io { path, source }
    };
    fs::write(&tmp, data).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(data.len() as u64)
}

// ---------------------------------------------------------------------------
// Encoding.

fn encode(canvas: &Canvas, encoding: Encoding, rng: &mut ChaCha8Rng) -> Result<Vec<u8>, String> {
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

fn to_luma(canvas: &Canvas) -> Vec<u8> {
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

// ---------------------------------------------------------------------------
// Image sizes.

fn pick_dimensions(rng: &mut ChaCha8Rng, rule: SizeRule, opts: &SampleOptions) -> (u32, u32) {
    let short = match rule {
        SizeRule::Random | SizeRule::Wide | SizeRule::Tall => {
            log_uniform(rng, opts.min_side, opts.max_side)
        }
        SizeRule::Shortest => opts.min_side,
        SizeRule::Longest => opts.max_side,
        SizeRule::Large => {
            // Bounded above so the truncated file stays cheap to produce.
            let lo = opts.min_side.max(TRUNCATED_MIN_SIDE);
            let hi = lo.max(opts.max_side.min(480));
            log_uniform(rng, lo, hi)
        }
    };
    let aspect = match rule {
        SizeRule::Wide | SizeRule::Tall => 3.0,
        SizeRule::Large => rng.random_range(1.0..1.5),
        // Squaring a uniform variate skews towards 1 like real photos
        // (about 60 % of images below 1.5) while still reaching 3.
        _ => 3f64.powf(rng.random::<f64>().powi(2)),
    };
    let landscape = match rule {
        SizeRule::Wide => true,
        SizeRule::Tall => false,
        _ => rng.random_bool(0.7),
    };
    let long = ((f64::from(short) * aspect).floor() as u32).clamp(short, MAX_JPEG_SIDE);
    if landscape {
        (long, short)
    } else {
        (short, long)
    }
}

fn log_uniform(rng: &mut ChaCha8Rng, lo: u32, hi: u32) -> u32 {
    if lo >= hi {
        return lo;
    }
    let (ln_lo, ln_hi) = (f64::from(lo).ln(), f64::from(hi).ln());
    let value = rng.random_range(ln_lo..=ln_hi).exp().round() as u32;
    value.clamp(lo, hi)
}

// ---------------------------------------------------------------------------
// Classes.

/// Base visual patterns. Shapes are single objects; textures fill a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Disc,
    Ring,
    Square,
    Triangle,
    Plus,
    Star,
    Target,
    Frame,
    HorizontalStripes,
    VerticalStripes,
    DiagonalStripes,
    Checkerboard,
    PolkaDots,
    Waves,
    Grid,
    DiagonalGrid,
}

/// Class order: shapes and textures interleaved so that even a handful of
/// classes mixes both, and the default ten are the most distinct ones.
const PATTERNS: [Pattern; 16] = [
    Pattern::Disc,
    Pattern::HorizontalStripes,
    Pattern::Square,
    Pattern::Checkerboard,
    Pattern::Triangle,
    Pattern::PolkaDots,
    Pattern::Plus,
    Pattern::DiagonalStripes,
    Pattern::Ring,
    Pattern::Grid,
    Pattern::Star,
    Pattern::Waves,
    Pattern::Target,
    Pattern::VerticalStripes,
    Pattern::Frame,
    Pattern::DiagonalGrid,
];

/// Classes beyond the first `PATTERNS.len()` reuse a pattern with a different
/// parameter: shapes come as pairs or trios, textures as fine or coarse.
const VARIANTS: usize = 3;

impl Pattern {
    fn is_texture(self) -> bool {
        matches!(
            self,
            Pattern::HorizontalStripes
                | Pattern::VerticalStripes
                | Pattern::DiagonalStripes
                | Pattern::Checkerboard
                | Pattern::PolkaDots
                | Pattern::Waves
                | Pattern::Grid
                | Pattern::DiagonalGrid
        )
    }

    fn name(self) -> &'static str {
        match self {
            Pattern::Disc => "filled disc",
            Pattern::Ring => "ring, annulus",
            Pattern::Square => "filled square",
            Pattern::Triangle => "filled triangle",
            Pattern::Plus => "plus sign, cross",
            Pattern::Star => "five-pointed star",
            Pattern::Target => "target, concentric rings",
            Pattern::Frame => "square frame",
            Pattern::HorizontalStripes => "striped, horizontal bands",
            Pattern::VerticalStripes => "striped, vertical bands",
            Pattern::DiagonalStripes => "striped, diagonal bands",
            Pattern::Checkerboard => "checkerboard",
            Pattern::PolkaDots => "polka dots",
            Pattern::Waves => "wavy lines",
            Pattern::Grid => "grid lines",
            Pattern::DiagonalGrid => "diagonal lattice",
        }
    }

    /// Smallest feature (stripe, gap, line) as a fraction of the texture period.
    fn feature_fraction(self) -> f32 {
        match self {
            Pattern::PolkaDots => 0.4,
            Pattern::Grid | Pattern::DiagonalGrid => 0.3,
            _ => 0.5,
        }
    }

    /// Texture orientation in radians; only meaningful for textures. The
    /// jitter keeps orientation-defined classes apart (stripes vs. lattice).
    fn texture_angle(self, rng: &mut ChaCha8Rng) -> f32 {
        let jitter = rng.random_range(-10f32..=10.0).to_radians();
        let quarter = PI / 4.0;
        match self {
            Pattern::VerticalStripes => 2.0 * quarter + jitter,
            Pattern::DiagonalStripes => {
                let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                sign * quarter + jitter
            }
            Pattern::DiagonalGrid => quarter + jitter,
            Pattern::PolkaDots => rng.random_range(0.0..TAU),
            _ => jitter,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ClassSpec {
    pattern: Pattern,
    variant: usize,
}

fn class_spec(class: usize) -> ClassSpec {
    ClassSpec {
        pattern: PATTERNS[class % PATTERNS.len()],
        variant: class / PATTERNS.len(),
    }
}

impl ClassSpec {
    fn name(self) -> String {
        let suffix = match (self.pattern.is_texture(), self.variant) {
            (_, 0) => "",
            (false, 1) => ", pair",
            (false, _) => ", trio",
            (true, 1) => ", fine",
            (true, _) => ", coarse",
        };
        format!("{}{suffix}", self.pattern.name())
    }

    /// Range of the smallest texture feature, as a fraction of the short side.
    /// The fine band stays above 1/40 so it survives a resize to ~128 px.
    fn feature_band(self) -> (f32, f32) {
        match self.variant {
            0 => (0.045, 0.065),
            1 => (0.028, 0.036),
            _ => (0.085, 0.11),
        }
    }

    /// Range of an object's diameter as a fraction of the short side, at
    /// most [`MAX_DIAMETER_FRACTION`].
    fn diameter_band(self) -> (f32, f32) {
        match (self.pattern.is_texture(), self.variant) {
            (true, 2) => (0.5, MAX_DIAMETER_FRACTION),
            (true, _) => (0.4, 0.7),
            (false, 0) => (0.25, 0.7),
            (false, 1) => (0.25, 0.42),
            (false, _) => (0.22, 0.33),
        }
    }

    fn copies(self) -> usize {
        if self.pattern.is_texture() {
            1
        } else {
            self.variant + 1
        }
    }
}

// ---------------------------------------------------------------------------
// Rendering.

type Rgb = [u8; 3];

struct Canvas {
    width: u32,
    height: u32,
    /// Row-major RGB8.
    pixels: Vec<u8>,
}

/// Inclusive pixel bounds of a drawn object, ImageNet-style `x_min y_min x_max y_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BBox {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl BBox {
    fn include(&mut self, x: u32, y: u32) {
        self.x0 = self.x0.min(x);
        self.y0 = self.y0.min(y);
        self.x1 = self.x1.max(x);
        self.y1 = self.y1.max(y);
    }
}

struct Rendered {
    canvas: Canvas,
    /// One box per class object.
    boxes: Vec<BBox>,
}

/// Largest object diameter as a fraction of the short side. With the margin of
/// [`object_region`] a 7/8 crop at any offset still shows most of the object.
const MAX_DIAMETER_FRACTION: f32 = 0.7;

/// Objects keep `1/OBJECT_MARGIN_DIVISOR` of the central square's side clear
/// on every side: training crops 7/8 of the square at a random offset and
/// evaluation its centre 7/8, so objects stay in the central 7/8.
const OBJECT_MARGIN_DIVISOR: u32 = 16;

/// How far beyond an object's radius [`paint`] may touch pixels: its window
/// reaches one pixel further, plus a pixel against rounding of the centre.
const PAINT_SLACK: f32 = 2.0;

/// Inclusive pixel bounds that every class object lies inside: the central
/// square of the image (side = shorter side, centred like a centre crop) less a
/// margin of 1/16 of its side all round.
///
/// Preprocessing resizes the shorter side to S and centre-crops S×S, cutting
/// off the ends of elongated images; training then takes random 7/8 crops of
/// that square. An object placed anywhere in the image would often end up
/// outside the crop, leaving a plain-background sample.
fn object_region(width: u32, height: u32) -> BBox {
    let short = width.min(height);
    let margin = short.div_ceil(OBJECT_MARGIN_DIVISOR);
    let (left, top) = ((width - short) / 2, (height - short) / 2);
    BBox {
        x0: left + margin,
        y0: top + margin,
        x1: left + short - 1 - margin,
        y1: top + short - 1 - margin,
    }
}

/// Luma difference between an object and what it is drawn on. Luma rather
/// than RGB distance keeps the class visible in the grayscale edge case.
const MIN_LUMA_CONTRAST: f32 = 60.0;

fn render_class_image(rng: &mut ChaCha8Rng, class: usize, width: u32, height: u32) -> Rendered {
    let spec = class_spec(class);
    let short = width.min(height) as f32;

    // All colours are drawn independently of the class.
    let background = random_colour(rng);
    let background_end = shifted_colour(rng, background, 48);
    let foreground = contrasting_colour(rng, &[background, background_end]);
    let secondary = contrasting_colour(rng, &[foreground]);

    let angle = rng.random_range(0.0..TAU);
    let mut canvas = gradient_canvas(width, height, background, background_end, angle);
    draw_distractors(&mut canvas, rng, short);

    let region = object_region(width, height);
    // Only tiny images need the cap; it keeps the object inside the region.
    let max_radius = (region.x1 + 1 - region.x0) as f32 / 2.0 - PAINT_SLACK;
    let (lo, hi) = spec.diameter_band();
    let radii: Vec<f32> = (0..spec.copies())
        .map(|_| (0.5 * short * rng.random_range(lo..=hi)).min(max_radius))
        .collect();
    let centres = place_without_overlap(rng, region, &radii);
    let mut boxes = Vec::new();
    for (&radius, &(cx, cy)) in radii.iter().zip(&centres) {
        let drawn = if spec.pattern.is_texture() {
            draw_texture_patch(
                &mut canvas,
                rng,
                spec,
                (cx, cy, radius),
                [foreground, secondary],
            )
        } else {
            draw_shape(&mut canvas, rng, spec.pattern, (cx, cy, radius), foreground)
        };
        // The centre is inside the image, so something is always drawn;
        // fall back to the whole image rather than lose the label.
        boxes.push(drawn.unwrap_or(BBox {
            x0: 0,
            y0: 0,
            x1: width - 1,
            y1: height - 1,
        }));
    }

    add_noise(&mut canvas, rng);
    Rendered { canvas, boxes }
}

fn random_colour(rng: &mut ChaCha8Rng) -> Rgb {
    [rng.random(), rng.random(), rng.random()]
}

fn shifted_colour(rng: &mut ChaCha8Rng, colour: Rgb, max_shift: i32) -> Rgb {
    colour.map(|c| (i32::from(c) + rng.random_range(-max_shift..=max_shift)).clamp(0, 255) as u8)
}

fn luma(c: Rgb) -> f32 {
    0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
}

fn contrasting_colour(rng: &mut ChaCha8Rng, against: &[Rgb]) -> Rgb {
    let contrasts = |c: Rgb| {
        against
            .iter()
            .all(|&a| (luma(c) - luma(a)).abs() >= MIN_LUMA_CONTRAST)
    };
    for _ in 0..64 {
        let candidate = random_colour(rng);
        if contrasts(candidate) {
            return candidate;
        }
    }
    // Practically unreachable; black or white always contrasts enough with
    // colours this close to each other.
    let mean = against.iter().map(|&c| luma(c)).sum::<f32>() / against.len().max(1) as f32;
    if mean > 127.5 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// Linear gradient along `angle`, from `from` at one edge to `to` at the other.
fn gradient_canvas(width: u32, height: u32, from: Rgb, to: Rgb, angle: f32) -> Canvas {
    let (sin, cos) = angle.sin_cos();
    let (w, h) = (width as f32, height as f32);
    let extent = (w * cos.abs() + h * sin.abs()).max(1.0);
    let from = from.map(f32::from);
    let delta = [0, 1, 2].map(|i| f32::from(to[i]) - from[i]);

    let stride = width as usize * 3;
    let mut pixels = vec![0u8; stride * height as usize];
    for (y, row) in pixels.chunks_exact_mut(stride).enumerate() {
        let row_offset = (y as f32 + 0.5 - h / 2.0) * sin;
        for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
            let t = 0.5 + ((x as f32 + 0.5 - w / 2.0) * cos + row_offset) / extent;
            for (i, channel) in pixel.iter_mut().enumerate() {
                // `as u8` saturates; adding 0.5 rounds without a libm call.
                *channel = (from[i] + delta[i] * t + 0.5) as u8;
            }
        }
    }
    Canvas {
        width,
        height,
        pixels,
    }
}

/// Small ellipses of random colour anywhere; they belong to no class and
/// teach the model to ignore clutter.
fn draw_distractors(canvas: &mut Canvas, rng: &mut ChaCha8Rng, short: f32) {
    let count = rng.random_range(0..=3);
    for _ in 0..count {
        let colour = random_colour(rng);
        let rx = short * rng.random_range(0.025..0.07);
        let ry = short * rng.random_range(0.025..0.07);
        let cx = rng.random_range(0.0..canvas.width as f32);
        let cy = rng.random_range(0.0..canvas.height as f32);
        let (sin, cos) = rng.random_range(0.0..PI).sin_cos();
        paint(canvas, (cx, cy, rx.max(ry)), [colour, colour], |dx, dy| {
            let u = (dx * cos + dy * sin) / rx;
            let v = (-dx * sin + dy * cos) / ry;
            (u * u + v * v <= 1.0).then_some(0)
        });
    }
}

/// Centres for circles of the given radii such that everything [`paint`]
/// touches for them lies inside `region` (see [`object_region`]) and, when
/// there is room, the circles do not overlap each other.
fn place_without_overlap(rng: &mut ChaCha8Rng, region: BBox, radii: &[f32]) -> Vec<(f32, f32)> {
    let mut centres: Vec<(f32, f32)> = Vec::with_capacity(radii.len());
    for (i, &r) in radii.iter().enumerate() {
        let mut candidate = (0.0, 0.0);
        for _ in 0..50 {
            candidate = (
                random_coordinate(rng, r, region.x0, region.x1),
                random_coordinate(rng, r, region.y0, region.y1),
            );
            let clear = centres.iter().zip(&radii[..i]).all(|(&(x, y), &other)| {
                let gap = r + other + 2.0;
                (x - candidate.0).powi(2) + (y - candidate.1).powi(2) >= gap * gap
            });
            if clear {
                break;
            }
        }
        centres.push(candidate);
    }
    centres
}

/// A centre coordinate, uniform over the positions where the pixels painted
/// around it (`radius + PAINT_SLACK` either side) stay within pixels
/// `first..=last`; their midpoint if there is no room to move.
fn random_coordinate(rng: &mut ChaCha8Rng, radius: f32, first: u32, last: u32) -> f32 {
    let reach = radius + PAINT_SLACK;
    let (lo, hi) = (first as f32 + reach, (last + 1) as f32 - reach);
    if hi <= lo {
        (first + last + 1) as f32 / 2.0
    } else {
        rng.random_range(lo..=hi)
    }
}

fn draw_shape(
    canvas: &mut Canvas,
    rng: &mut ChaCha8Rng,
    pattern: Pattern,
    (cx, cy, radius): (f32, f32, f32),
    colour: Rgb,
) -> Option<BBox> {
    let (sin, cos) = rng.random_range(0.0..TAU).sin_cos();
    paint(canvas, (cx, cy, radius), [colour, colour], |dx, dy| {
        let u = (dx * cos + dy * sin) / radius;
        let v = (-dx * sin + dy * cos) / radius;
        shape_contains(pattern, u, v).then_some(0)
    })
}

/// Whether unit-radius local coordinates `(u, v)` fall inside the shape.
fn shape_contains(pattern: Pattern, u: f32, v: f32) -> bool {
    let rho2 = u * u + v * v;
    match pattern {
        Pattern::Disc => rho2 <= 1.0,
        Pattern::Ring => (0.55 * 0.55..=1.0).contains(&rho2),
        Pattern::Square => u.abs() <= 0.7 && v.abs() <= 0.7,
        Pattern::Triangle => triangle_contains(u, v),
        Pattern::Plus => {
            let (a, b) = (u.abs(), v.abs());
            (a <= 0.27 && b <= 0.95) || (b <= 0.27 && a <= 0.95)
        }
        Pattern::Star => star_contains(u, v),
        // Five bands of 0.2: filled, gap, filled, gap, filled (outermost).
        Pattern::Target => rho2 <= 1.0 && ((rho2.sqrt() * 5.0) as u32).is_multiple_of(2),
        Pattern::Frame => (0.42..=0.72).contains(&u.abs().max(v.abs())),
        _ => false,
    }
}

/// Equilateral triangle with circumradius 1 (inradius 0.5) centred on the origin.
fn triangle_contains(u: f32, v: f32) -> bool {
    (0..3).all(|k| {
        let (sin, cos) = (PI / 2.0 + k as f32 * TAU / 3.0).sin_cos();
        u * cos + v * sin <= 0.5
    })
}

/// Five-pointed star with tips at radius 1 and notches at radius 0.4.
fn star_contains(u: f32, v: f32) -> bool {
    let rho = (u * u + v * v).sqrt();
    if rho > 1.0 {
        return false;
    }
    let sector = v.atan2(u) / (TAU / 5.0);
    // 1 at a tip, 0 halfway between tips.
    let towards_tip = (frac(sector) - 0.5).abs() * 2.0;
    rho <= 0.4 + 0.6 * towards_tip
}

/// A patch (disc or square, randomly) filled with the class texture. The patch
/// outline is random so that only the texture identifies the class.
fn draw_texture_patch(
    canvas: &mut Canvas,
    rng: &mut ChaCha8Rng,
    spec: ClassSpec,
    (cx, cy, radius): (f32, f32, f32),
    colours: [Rgb; 2],
) -> Option<BBox> {
    let short = canvas.width.min(canvas.height) as f32;
    let (lo, hi) = spec.feature_band();
    let feature = short * rng.random_range(lo..=hi);
    let period = (feature / spec.pattern.feature_fraction()).max(2.0);
    let (tex_sin, tex_cos) = spec.pattern.texture_angle(rng).sin_cos();
    let phase = (rng.random::<f32>(), rng.random::<f32>());
    let round_patch = rng.random_bool(0.5);
    let (patch_sin, patch_cos) = rng.random_range(0.0..TAU).sin_cos();
    let pattern = spec.pattern;

    paint(canvas, (cx, cy, radius), colours, |dx, dy| {
        let u = (dx * patch_cos + dy * patch_sin) / radius;
        let v = (-dx * patch_sin + dy * patch_cos) / radius;
        let inside = if round_patch {
            u * u + v * v <= 1.0
        } else {
            u.abs() <= 0.8 && v.abs() <= 0.8
        };
        if !inside {
            return None;
        }
        let tu = (dx * tex_cos + dy * tex_sin) / period + phase.0;
        let tv = (-dx * tex_sin + dy * tex_cos) / period + phase.1;
        Some(texture_colour(pattern, tu, tv))
    })
}

/// Colour index (0 or 1) of a texture at texture coordinates measured in periods.
fn texture_colour(pattern: Pattern, tu: f32, tv: f32) -> usize {
    let first = match pattern {
        Pattern::HorizontalStripes | Pattern::VerticalStripes | Pattern::DiagonalStripes => {
            frac(tv) < 0.5
        }
        Pattern::Checkerboard => (fast_floor(2.0 * tu) + fast_floor(2.0 * tv)) as i64 % 2 == 0,
        Pattern::PolkaDots => {
            let (a, b) = (frac(tu) - 0.5, frac(tv) - 0.5);
            a * a + b * b <= 0.3 * 0.3
        }
        Pattern::Waves => frac(tv + 0.4 * (TAU * tu / 3.0).sin()) < 0.5,
        Pattern::Grid | Pattern::DiagonalGrid => frac(tu) < 0.3 || frac(tv) < 0.3,
        _ => true,
    };
    if first {
        0
    } else {
        1
    }
}

/// `f32::floor` without a libm call: on baseline x86-64 the standard one is not
/// inlined, and texture sampling runs it several times per sub-sample. Exact for
/// |t| < 2^31, far beyond any coordinate used here.
fn fast_floor(t: f32) -> f32 {
    let truncated = t as i32 as f32;
    if truncated > t {
        truncated - 1.0
    } else {
        truncated
    }
}

/// Fractional part in [0, 1), also for negative `t`.
fn frac(t: f32) -> f32 {
    t - fast_floor(t)
}

/// Blends `sample` into the canvas around `(cx, cy)` within `reach` pixels.
///
/// `sample` gets offsets from the centre and returns a colour index or `None`
/// for "leave the canvas alone". Four samples per pixel anti-alias the edges,
/// which matters once the image is shrunk for training. Returns the bounds of
/// the pixels touched.
fn paint(
    canvas: &mut Canvas,
    (cx, cy, reach): (f32, f32, f32),
    colours: [Rgb; 2],
    sample: impl Fn(f32, f32) -> Option<usize>,
) -> Option<BBox> {
    const OFFSETS: [(f32, f32); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
    let clamp_to = |v: f32, extent: u32| (v.max(0.0) as u32).min(extent);
    let (x_start, x_end) = (
        clamp_to((cx - reach - 1.0).floor(), canvas.width),
        clamp_to((cx + reach + 1.0).ceil(), canvas.width),
    );
    let (y_start, y_end) = (
        clamp_to((cy - reach - 1.0).floor(), canvas.height),
        clamp_to((cy + reach + 1.0).ceil(), canvas.height),
    );

    let mut bounds: Option<BBox> = None;
    let stride = canvas.width as usize * 3;
    for y in y_start..y_end {
        let row = &mut canvas.pixels[y as usize * stride..(y as usize + 1) * stride];
        for x in x_start..x_end {
            let mut hits = [0u32; 2];
            for (ox, oy) in OFFSETS {
                if let Some(index) = sample(x as f32 + ox - cx, y as f32 + oy - cy) {
                    hits[index] += 1;
                }
            }
            let covered = hits[0] + hits[1];
            if covered == 0 {
                continue;
            }
            let pixel = &mut row[x as usize * 3..x as usize * 3 + 3];
            for (i, channel) in pixel.iter_mut().enumerate() {
                let mixed = hits[0] * u32::from(colours[0][i])
                    + hits[1] * u32::from(colours[1][i])
                    + (4 - covered) * u32::from(*channel);
                *channel = ((mixed + 2) / 4) as u8;
            }
            match bounds.as_mut() {
                Some(b) => b.include(x, y),
                None => {
                    bounds = Some(BBox {
                        x0: x,
                        y0: y,
                        x1: x,
                        y1: y,
                    })
                }
            }
        }
    }
    bounds
}

/// Uniform per-channel noise in [-8, 8], like sensor noise, so that flat
/// regions are never perfectly flat.
fn add_noise(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let stride = canvas.width as usize * 3;
    let mut noise = vec![0u8; stride];
    for row in canvas.pixels.chunks_exact_mut(stride) {
        rng.fill_bytes(&mut noise);
        for (channel, &n) in row.iter_mut().zip(&noise) {
            let delta = ((i32::from(n) * 17) >> 8) - 8;
            *channel = (i32::from(*channel) + delta).clamp(0, 255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Cursor;

    fn small_options() -> SampleOptions {
        SampleOptions {
            classes: 3,
            train_per_class: 4,
            val_per_class: 3,
            min_side: 48,
            max_side: 160,
            seed: 7,
            val_layout: ValLayout::Flat,
            edge_cases: true,
        }
    }

    /// Every file under `root`, keyed by `/`-separated relative path.
    fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
        fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, files);
                } else {
                    let rel = path.strip_prefix(root).unwrap();
                    let rel: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    files.insert(rel.join("/"), fs::read(&path).unwrap());
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(root, root, &mut files);
        files
    }

    fn generate_tree(opts: &SampleOptions) -> (SampleSummary, BTreeMap<String, Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sample");
        let summary = generate(&out, opts).unwrap();
        (summary, read_tree(&out))
    }

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .unwrap()
            .into_dimensions()
            .unwrap()
    }

    fn decode(bytes: &[u8]) -> image::DynamicImage {
        image::load_from_memory(bytes).unwrap()
    }

    /// (marker, payload) of every JPEG segment before the first scan.
    fn jpeg_segments(bytes: &[u8]) -> Vec<(u8, &[u8])> {
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "not a JPEG");
        let mut segments = Vec::new();
        let mut at = 2;
        while at + 4 <= bytes.len() && bytes[at] == 0xFF {
            let marker = bytes[at + 1];
            let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            segments.push((marker, &bytes[at + 4..at + 2 + len]));
            if marker == 0xDA {
                break;
            }
            at += 2 + len;
        }
        segments
    }

    /// (SOF marker, number of components).
    fn frame_info(bytes: &[u8]) -> (u8, u8) {
        jpeg_segments(bytes)
            .into_iter()
            .find(|(m, _)| matches!(m, 0xC0..=0xC2))
            .map(|(m, payload)| (m, payload[5]))
            .expect("no SOF segment")
    }

    fn edge_path(summary: &SampleSummary, kind: EdgeKind) -> &str {
        &summary
            .edge_cases
            .iter()
            .find(|e| e.kind == kind && e.path.starts_with("train/"))
            .unwrap()
            .path
    }

    fn job_for<'a>(plan: &'a Plan, path: &str) -> &'a Job {
        plan.jobs.iter().find(|j| j.rel_path == path).unwrap()
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let total: u64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum();
        total as f64 / a.len() as f64
    }

    fn mean_abs_diff_f64(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
    }

    /// Per-channel means of `block` x `block` tiles of an 8-bit image with
    /// `channels` interleaved channels (partial tiles at the edges are dropped).
    /// Averaging cancels the per-pixel noise, on which two lossy encodings
    /// disagree most, and keeps what a downscaled training image shows.
    fn block_means(pixels: &[u8], width: u32, channels: usize, block: usize) -> Vec<f64> {
        let width = width as usize;
        let height = pixels.len() / channels / width;
        let mut means = Vec::new();
        for by in 0..height / block {
            for bx in 0..width / block {
                for channel in 0..channels {
                    let mut sum = 0u32;
                    for y in by * block..(by + 1) * block {
                        for x in bx * block..(bx + 1) * block {
                            sum += u32::from(pixels[(y * width + x) * channels + channel]);
                        }
                    }
                    means.push(f64::from(sum) / (block * block) as f64);
                }
            }
        }
        means
    }

    #[test]
    fn same_options_give_identical_bytes_and_seeds_differ() {
        let opts = small_options();
        let (summary_a, a) = generate_tree(&opts);
        let (summary_b, b) = generate_tree(&opts);
        assert_eq!(a, b);
        assert_eq!(summary_a.bytes, summary_b.bytes);

        // Also independent of the thread count.
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (_, c) = single.install(|| generate_tree(&opts));
        assert_eq!(a, c);

        let (_, other) = generate_tree(&SampleOptions { seed: 8, ..opts });
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>()
        );
        let differing = a
            .iter()
            .filter(|(path, bytes)| other[*path] != **bytes)
            .count();
        // Everything but the synset mapping and the empty file changes.
        assert!(differing >= a.len() - 2, "only {differing} files differ");
    }

    #[test]
    fn layout_and_counts_match_summary() {
        let opts = small_options();
        let (summary, files) = generate_tree(&opts);
        let wnids = class_wnids(opts.classes);

        assert_eq!(summary.classes, 3);
        assert_eq!(summary.train_files, 3 * 4 + EdgeKind::ALL.len());
        assert_eq!(summary.val_files, 3 * 3 + 1);
        assert_eq!(
            summary.bytes,
            files.values().map(|f| f.len() as u64).sum::<u64>()
        );

        let train: Vec<&String> = files.keys().filter(|p| p.starts_with("train/")).collect();
        let val: Vec<&String> = files.keys().filter(|p| p.starts_with("val/")).collect();
        assert_eq!(train.len(), summary.train_files);
        assert_eq!(val.len(), summary.val_files);
        assert_eq!(files.len(), train.len() + val.len() + 2);

        for path in &train {
            let parts: Vec<&str> = path.split('/').collect();
            assert_eq!(parts.len(), 3, "{path}");
            assert!(wnids.iter().any(|w| w == parts[1]), "{path}");
            let number = parts[2]
                .strip_prefix(&format!("{}_", parts[1]))
                .and_then(|rest| rest.strip_suffix(".JPEG"))
                .unwrap_or_else(|| panic!("bad train name {path}"));
            number.parse::<usize>().unwrap();
            assert!(!number.starts_with('0') || number == "0", "{path}");
        }
        for w in &wnids {
            for n in 0..opts.train_per_class {
                assert!(files.contains_key(&format!("train/{w}/{w}_{n}.JPEG")));
            }
        }
        for number in 1..=summary.val_files {
            assert!(files.contains_key(&format!("val/ILSVRC2012_val_{number:08}.JPEG")));
        }

        let mapping = String::from_utf8(files["LOC_synset_mapping.txt"].clone()).unwrap();
        let lines: Vec<&str> = mapping.lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, (w, name)) in lines.iter().zip(wnids.iter().zip(class_names(3))) {
            assert_eq!(*line, format!("{w} {name}"));
        }
        assert!(files.keys().all(|p| !p.contains(".tmp")));
    }

    #[test]
    fn val_csv_labels_existing_files_with_boxes_inside() {
        let opts = small_options();
        let (summary, files) = generate_tree(&opts);
        let wnids = class_wnids(opts.classes);
        let csv = String::from_utf8(files["LOC_val_solution.csv"].clone()).unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("ImageId,PredictionString"));

        let mut labels = Vec::new();
        let mut seen = BTreeSet::new();
        for line in lines {
            let (id, prediction) = line.split_once(',').unwrap();
            assert!(seen.insert(id.to_string()), "duplicate row {id}");
            let bytes = &files[&format!("val/{id}.JPEG")];
            let (width, height) = dimensions(bytes);
            let fields: Vec<&str> = prediction.split(' ').collect();
            assert_eq!(fields.len() % 5, 0, "{line}");
            for entry in fields.chunks(5) {
                assert!(wnids.iter().any(|w| w == entry[0]), "{line}");
                assert_eq!(entry[0], fields[0], "mixed labels in {line}");
                let b: Vec<u32> = entry[1..].iter().map(|v| v.parse().unwrap()).collect();
                assert!(b[0] <= b[2] && b[2] < width, "{line} in {width}x{height}");
                assert!(b[1] <= b[3] && b[3] < height, "{line} in {width}x{height}");
            }
            labels.push(fields[0].to_string());
        }
        assert_eq!(seen.len(), summary.val_files);
        // Interleaved like ImageNet, not grouped by class.
        let mut sorted = labels.clone();
        sorted.sort();
        assert_ne!(labels, sorted);
    }

    #[test]
    fn folder_layout_puts_val_images_under_their_wnid() {
        let opts = SampleOptions {
            val_layout: ValLayout::Folders,
            edge_cases: false,
            ..small_options()
        };
        let (summary, files) = generate_tree(&opts);
        assert_eq!(summary.val_files, 9);
        assert!(summary.edge_cases.is_empty());
        assert!(!files.contains_key("LOC_val_solution.csv"));
        let val: Vec<&String> = files.keys().filter(|p| p.starts_with("val/")).collect();
        assert_eq!(val.len(), 9);
        for w in class_wnids(3) {
            let in_class = val
                .iter()
                .filter(|p| p.starts_with(&format!("val/{w}/ILSVRC2012_val_")))
                .count();
            assert_eq!(in_class, 3);
        }
    }

    #[test]
    fn edge_cases_have_their_promised_properties() {
        let opts = small_options();
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(dir.path(), &opts).unwrap();
        let files = read_tree(dir.path());
        let plan = plan_jobs(&opts);
        assert_eq!(summary.edge_cases.len(), EdgeKind::ALL.len() + 1);

        for edge in &summary.edge_cases {
            let bytes = &files[&edge.path];
            assert!(edge.path.ends_with(".JPEG"));
            match edge.kind {
                EdgeKind::Grayscale => {
                    assert_eq!(frame_info(bytes), (0xC0, 1));
                    assert_eq!(decode(bytes).color(), image::ColorType::L8);
                }
                EdgeKind::Cmyk => {
                    assert_eq!(frame_info(bytes), (0xC0, 4));
                    let adobe = jpeg_segments(bytes)
                        .into_iter()
                        .any(|(m, p)| m == 0xEE && p.starts_with(b"Adobe"));
                    assert!(adobe, "no Adobe APP14 marker");
                }
                EdgeKind::Progressive => {
                    assert_eq!(frame_info(bytes), (0xC2, 3));
                    decode(bytes);
                }
                EdgeKind::PngNamedJpeg => {
                    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
                    assert_eq!(decode(bytes).color(), image::ColorType::Rgb8);
                }
                EdgeKind::Truncated => {
                    assert!(!bytes.ends_with(&[0xFF, 0xD9]));
                    let (width, height) = dimensions(bytes);
                    assert!(width.min(height) >= TRUNCATED_MIN_SIDE);
                    // A prefix of 40-60 % of the complete file.
                    let job = job_for(&plan, &edge.path);
                    let (image, mut rng) = render_job(&opts, job);
                    let full = encode(&image.canvas, Encoding::Baseline, &mut rng).unwrap();
                    assert!(full.starts_with(bytes));
                    let ratio = bytes.len() as f64 / full.len() as f64;
                    assert!((0.39..=0.61).contains(&ratio), "kept {ratio}");
                }
                EdgeKind::Empty => assert!(bytes.is_empty()),
            }
            assert_eq!(
                edge.kind.should_be_rejected(),
                matches!(edge.kind, EdgeKind::Truncated | EdgeKind::Empty)
            );
        }

        // Numbered after the regular files, in the first classes.
        let wnids = class_wnids(3);
        assert_eq!(
            edge_path(&summary, EdgeKind::Grayscale),
            format!("train/{0}/{0}_4.JPEG", wnids[0])
        );
        assert_eq!(
            edge_path(&summary, EdgeKind::Empty),
            format!("train/{0}/{0}_5.JPEG", wnids[2])
        );
        let val_edge = summary.edge_cases.last().unwrap();
        assert_eq!(val_edge.path, "val/ILSVRC2012_val_00000010.JPEG");
        assert_eq!(val_edge.kind, EdgeKind::Truncated);
    }

    #[test]
    fn cmyk_decodes_back_to_the_rgb_image() {
        for seed in 0..4 {
            let opts = SampleOptions {
                seed,
                ..small_options()
            };
            let dir = tempfile::tempdir().unwrap();
            let summary = generate(dir.path(), &opts).unwrap();
            let path = edge_path(&summary, EdgeKind::Cmyk);
            let cmyk = decode(&fs::read(dir.path().join(path)).unwrap()).to_rgb8();

            let plan = plan_jobs(&opts);
            let (image, mut rng) = render_job(&opts, job_for(&plan, path));
            let (width, height) = (image.canvas.width, image.canvas.height);
            assert_eq!(cmyk.dimensions(), (width, height));
            let rgb_jpeg = encode(&image.canvas, Encoding::Baseline, &mut rng).unwrap();
            let rgb = decode(&rgb_jpeg).to_rgb8();

            let vs_rendered = mean_abs_diff(cmyk.as_raw(), &image.canvas.pixels);
            assert!(
                vs_rendered < 6.0,
                "seed {seed}: CMYK vs rendered: {vs_rendered}"
            );
            let vs_rgb_jpeg = mean_abs_diff_f64(
                &block_means(cmyk.as_raw(), width, 3, 4),
                &block_means(rgb.as_raw(), width, 3, 4),
            );
            assert!(
                vs_rgb_jpeg < 6.0,
                "seed {seed}: CMYK vs RGB JPEG: {vs_rgb_jpeg}"
            );
            // With the wrong inversion convention the image would come back negated.
            let inverted: Vec<u8> = image.canvas.pixels.iter().map(|p| 255 - p).collect();
            assert!(mean_abs_diff(cmyk.as_raw(), &inverted) > 30.0);
        }
    }

    #[test]
    fn valid_edge_cases_are_images_of_their_class() {
        let opts = small_options();
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(dir.path(), &opts).unwrap();
        let plan = plan_jobs(&opts);
        for edge in summary
            .edge_cases
            .iter()
            .filter(|e| !e.kind.should_be_rejected())
        {
            let job = job_for(&plan, &edge.path);
            let folder = edge.path.split('/').nth(1).unwrap();
            assert_eq!(folder, wnid(job.class));
            let decoded = decode(&fs::read(dir.path().join(&edge.path)).unwrap());
            let (image, _) = render_job(&opts, job);
            let (expected, actual, channels) = match edge.kind {
                EdgeKind::Grayscale => (to_luma(&image.canvas), decoded.to_luma8().into_raw(), 1),
                _ => (image.canvas.pixels.clone(), decoded.to_rgb8().into_raw(), 3),
            };
            let width = image.canvas.width;
            let diff = mean_abs_diff_f64(
                &block_means(&actual, width, channels, 4),
                &block_means(&expected, width, channels, 4),
            );
            assert!(diff < 3.0, "{} differs by {diff}", edge.path);
        }
    }

    #[test]
    fn image_sizes_respect_bounds_and_reach_the_extremes() {
        let opts = small_options();
        let (summary, files) = generate_tree(&opts);
        let edges: BTreeSet<&str> = summary.edge_cases.iter().map(|e| e.path.as_str()).collect();
        let mut widest = 0.0f64;
        let mut tallest = 0.0f64;
        let mut shortest = u32::MAX;
        let mut longest = 0;
        for (path, bytes) in &files {
            if !path.ends_with(".JPEG") || edges.contains(path.as_str()) {
                continue;
            }
            let (width, height) = dimensions(bytes);
            let (short, long) = (width.min(height), width.max(height));
            assert!(
                (opts.min_side..=opts.max_side).contains(&short),
                "{path}: {width}x{height}"
            );
            assert!(long <= 3 * short, "{path}: {width}x{height}");
            widest = widest.max(f64::from(width) / f64::from(height));
            tallest = tallest.max(f64::from(height) / f64::from(width));
            shortest = shortest.min(short);
            longest = longest.max(short);
        }
        assert!(widest > 2.9 && tallest > 2.9, "{widest} {tallest}");
        assert_eq!((shortest, longest), (opts.min_side, opts.max_side));
    }

    #[test]
    fn refuses_bad_options_and_non_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let bad = [
            SampleOptions {
                classes: 0,
                ..small_options()
            },
            SampleOptions {
                classes: MAX_CLASSES + 1,
                ..small_options()
            },
            SampleOptions {
                min_side: 200,
                max_side: 100,
                ..small_options()
            },
            SampleOptions {
                min_side: 4,
                ..small_options()
            },
            SampleOptions {
                max_side: 70_000,
                ..small_options()
            },
        ];
        for opts in bad {
            let err = generate(&dir.path().join("out"), &opts).unwrap_err();
            assert!(
                matches!(err, SampleError::InvalidOptions(_)),
                "{opts:?}: {err}"
            );
        }
        assert!(!dir.path().join("out").exists());

        fs::write(dir.path().join("stray.txt"), b"x").unwrap();
        let err = generate(dir.path(), &small_options()).unwrap_err();
        assert!(matches!(err, SampleError::InvalidOptions(_)), "{err}");
        assert!(err.to_string().contains("empty"));
    }

    #[test]
    fn no_val_edge_case_without_val_images() {
        let opts = SampleOptions {
            classes: 2,
            train_per_class: 1,
            val_per_class: 0,
            ..small_options()
        };
        let (summary, files) = generate_tree(&opts);
        assert_eq!(summary.val_files, 0);
        assert_eq!(summary.train_files, 2 + EdgeKind::ALL.len());
        assert!(summary
            .edge_cases
            .iter()
            .all(|e| e.path.starts_with("train/")));
        let csv = String::from_utf8(files["LOC_val_solution.csv"].clone()).unwrap();
        assert_eq!(csv, "ImageId,PredictionString\n");
    }

    #[test]
    fn objects_stay_inside_the_central_square_away_from_its_edges() {
        // 1:3, 3:1, square and in-between, from the smallest allowed side up.
        let sizes = [
            (16, 48),
            (48, 16),
            (16, 16),
            (64, 192),
            (192, 64),
            (64, 64),
            (101, 303),
            (303, 101),
            (100, 150),
            (150, 100),
            (160, 480),
            (480, 160),
        ];
        for (k, &(width, height)) in sizes.iter().enumerate() {
            let short = width.min(height) as f32;
            // The central square in pixel-edge coordinates, and its inner 7/8.
            let (left, top) = ((width as f32 - short) / 2.0, (height as f32 - short) / 2.0);
            let margin = short / 16.0;
            let (mut lo_centre, mut hi_centre) = ([f32::MAX; 2], [f32::MIN; 2]);
            let mut worst_visible = 1.0f32;
            for class in 0..MAX_CLASSES {
                for draw in 0..4 {
                    let mut rng = stream_rng(draw, 1000, class as u64, k as u64);
                    let image = render_class_image(&mut rng, class, width, height);
                    assert_eq!(image.boxes.len(), class_spec(class).copies());
                    for b in &image.boxes {
                        let at = format!("class {class} draw {draw} {width}x{height}: {b:?}");
                        let span = [(b.x0, b.x1, left), (b.y0, b.y1, top)];
                        for (axis, (first, last, start)) in span.into_iter().enumerate() {
                            // Pixels first..=last cover [first, last + 1).
                            let (from, to) = (first as f32, (last + 1) as f32);
                            assert!(from >= start + margin - 0.5, "{at}");
                            assert!(to <= start + short - margin, "{at}");
                            // paint's window: a pixel beyond the radius, plus rounding.
                            assert!(to - from <= MAX_DIAMETER_FRACTION * short + 4.0, "{at}");
                            // Share of the object inside 7/8 crops at both extremes.
                            for offset in [0.0, short / 8.0] {
                                let crop = (start + offset, start + offset + short * 7.0 / 8.0);
                                let seen = (to.min(crop.1) - from.max(crop.0)).max(0.0);
                                worst_visible = worst_visible.min(seen / (to - from));
                            }
                            let centre = (from + to) / 2.0;
                            lo_centre[axis] = lo_centre[axis].min(centre);
                            hi_centre[axis] = hi_centre[axis].max(centre);
                        }
                    }
                }
            }
            assert!(worst_visible >= 0.6, "{width}x{height}: {worst_visible}");
            // Positions still vary over much of the square (less in tiny
            // images, where the paint slack takes a larger share).
            for axis in 0..2 {
                let spread = hi_centre[axis] - lo_centre[axis];
                assert!(
                    spread >= 0.5 * short - 4.0,
                    "{width}x{height} axis {axis}: centres spread {spread}"
                );
            }
        }
    }

    #[test]
    fn wnids_and_names_are_unique_and_sorted() {
        let wnids = class_wnids(MAX_CLASSES);
        let mut sorted = wnids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(wnids, sorted);
        assert!(wnids.iter().all(|w| w.len() == 9
            && w.starts_with('n')
            && w[1..].bytes().all(|b| b.is_ascii_digit())));
        let names: BTreeSet<String> = class_names(MAX_CLASSES).into_iter().collect();
        assert_eq!(names.len(), MAX_CLASSES);
        assert_eq!(EdgeKind::ALL.map(EdgeKind::name).len(), 6);
    }
}
