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
//! edges (see `render::object_region`), so that the centre crop of preprocessing and
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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::seed::splitmix64;

mod encode;
mod plan;
mod render;

use encode::{encode, Encoding};
use plan::{pick_dimensions, plan_jobs, Job, Split};
use render::{class_spec, render_class_image, BBox, Rendered, PATTERNS, VARIANTS};

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

impl SampleSummary {
    /// What was written, for a person: counts, size and every planted edge case.
    pub fn report(&self, out: &Path, seconds: f64) -> String {
        let mut text = format!(
            "wrote {} classes, {} train and {} val files ({:.1} MiB) to {} in {seconds:.1}s\n",
            self.classes,
            self.train_files,
            self.val_files,
            self.bytes as f64 / (1 << 20) as f64,
            out.display(),
        );
        for edge in &self.edge_cases {
            text += &format!("  edge case {:<14} {}\n", edge.kind.name(), edge.path);
        }
        text
    }
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

#[cfg(test)]
mod tests;
