//! The command line: every subcommand's arguments, with the help text `--help` shows.
//! `main.rs` parses them and hands each command to its module.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Pipeline;
use crate::device::DeviceKind;
use crate::loader::Output;
use crate::sample::SampleOptions;
use crate::shards::Split;

#[derive(Parser)]
#[command(
    name = "alexnet",
    version,
    about = "ImageNet → 256×256 shards → AlexNet, the 2012 recipe in Rust",
    long_about = "ImageNet → 256×256 shards → AlexNet, the 2012 recipe in Rust.\n\n\
        Typical use: `alexnet preprocess --input /data/imagenet --output /data/shards`.\n\
        Try it on generated data: `alexnet sample --out data/sample` first."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate a small synthetic dataset in ImageNet's layout (for demos and tests).
    Sample(SampleArgs),
    /// Decode, resize and centre-crop an ImageNet-style folder into shards.
    Preprocess(PreprocessArgs),
    /// Write the stored images of one split back out as PNG files, with index.csv.
    Export(ExportArgs),
    /// Run the training data loader alone and report its throughput (last line: JSON).
    BenchLoader(BenchLoaderArgs),
    /// Write a PNG grid of augmented training samples with their class names.
    ContactSheet(ContactSheetArgs),
    /// Train AlexNet on preprocessed shards, validating every epoch and saving checkpoints.
    #[command(
        long_about = "Train AlexNet on preprocessed shards with the paper's recipe: SGD with momentum \
            and weight decay, dropout, random crops, flips and lighting, the learning rate divided by \
            10 when the validation error stops improving.\n\n\
            RUN receives pipeline.toml (the resolved settings), metrics.csv (one row per epoch), \
            steps.csv (one row per step) and checkpoints/ (safetensors with PyTorch's names). \
            Ctrl-C saves a checkpoint and exits with status 130; --resume continues exactly where \
            the latest checkpoint left off.\n\n\
            Several GPUs or machines: start one process per GPU with a launcher, e.g. `torchrun \
            --standalone --nproc-per-node 8 --no-python alexnet train ...` or `srun alexnet train \
            ...`. Each rank reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (or \
            Slurm's SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), takes its slice of every batch \
            (loader.batch_size stays the whole batch) and sums gradients with the others; rank 0 \
            writes RUN. ALEXNET_DIST_TIMEOUT (seconds, default 600) bounds every wait for another \
            rank; ALEXNET_DIST_CHECK_EVERY (steps, default 1000) sets how often the ranks compare \
            their weights."
    )]
    Train(TrainArgs),
    /// Measure training throughput with the loader feeding the device, and profile a step
    /// (last line: JSON).
    BenchTrain(BenchTrainArgs),
    /// Top-1/top-5 error of a checkpoint on the validation split (centre crop and 10 crops),
    /// with a report, per-image predictions and plots in RUN/eval/.
    #[command(
        long_about = "Evaluate a checkpoint the paper's way: top-1 and top-5 error of the centre \
            crop, and of ten crops (four corners and the centre, and their mirror images) with the \
            softmax outputs averaged; accuracy per class.\n\n\
            Writes RUN/eval/report.json, RUN/eval/predictions.parquet (one row per validation image), \
            RUN/eval/per_class.png and, when RUN has training logs, loss.png, error.png and \
            learning_rate.png. Checkpoints written by PyTorch with the same names and layouts \
            (safetensors) work as well: pass the pipeline they were trained with.\n\n\
            Under a launcher (torchrun, srun; see `alexnet train --help`) each rank evaluates its \
            share of the images and rank 0 writes the results."
    )]
    Evaluate(EvaluateArgs),
    /// Check the fast path against dfdx's ops on this device: every kernel against the host
    /// kernels, and one training step (logits, all 16 gradients, SGD) on the same weights.
    #[command(
        long_about = "Check the fast path against the dfdx path on this device. Every kernel \
            (normalisation, convolution forward/backward-data/backward-filter, bias+ReLU, LRN, \
            max-pooling, flattening, SGD) runs on random inputs of AlexNet's shapes and is \
            compared with the host kernels; then one training step of the pipeline's network runs \
            both ways from the same weights and batch, comparing the logits, the gradient of every \
            parameter and the SGD update (weights drawn N(0, 0.02²) with biases 0.1 rather than the \
            paper's N(0, 0.01²) and 1, whose activations tie exactly inside pooling windows, where \
            dfdx and the fast path legitimately route the gradient differently). Each comparison is ‖fast − reference‖ / ‖reference‖ per \
            tensor, held to 1e-4 with --precision strict, 2e-2 with tf32 and 5e-2 with bf16 \
            (elementwise kernels to 1e-5, their bf16-stored outputs to 1e-3; on the CPU bf16 is \
            emulated by the host kernels). Exits with status 1 when any comparison fails; the last line is JSON."
    )]
    CheckFast(CheckFastArgs),
}

#[derive(clap::Args)]
pub struct CheckFastArgs {
    /// Pipeline whose network is checked [default: the paper's].
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Images in the checked training step.
    #[arg(long, default_value_t = 8, value_parser = batch_size)]
    pub batch_size: usize,
    /// Classes of the checked network.
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=100_000))]
    pub classes: usize,
    /// Write the checked step's weights, input, labels and dropout masks (safetensors, PyTorch's
    /// names) to this file and stop: what `benches/pytorch_precision.py` measures PyTorch's own
    /// precision error on.
    #[arg(long, value_name = "FILE")]
    pub write_case: Option<PathBuf>,
    /// PyTorch's own error on the same case in this precision (the JSON that
    /// `benches/pytorch_precision.py` writes): each tensor of the step is then held to twice
    /// PyTorch's error for it (never less than strict fp32's 1e-4) instead of the fixed one.
    #[arg(long, value_name = "FILE")]
    pub reference_errors: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// Shard directory written by `alexnet preprocess` (its val split is evaluated).
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory: where the checkpoints are and RUN/eval/ is written.
    #[arg(long)]
    pub run: PathBuf,
    /// Pipeline the model was trained with [default: RUN/pipeline.toml, else the paper's].
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Checkpoint to evaluate (safetensors) [default: the run's latest].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Images per batch; each is evaluated as ten crops [default: the pipeline's batch / 10].
    #[arg(long, value_parser = images_of_ten_crops)]
    pub batch_size: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    /// Shard directory written by `alexnet preprocess`.
    #[arg(long)]
    pub data: PathBuf,
    /// Pipeline file (TOML) [default: the paper's].
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Images per step [default: the pipeline's].
    #[arg(long, value_parser = batch_size)]
    pub batch_size: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps first (allocation, caches).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Steps profiled afterwards, synchronising the device after every stage.
    #[arg(long, default_value_t = 3)]
    pub profile_steps: usize,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// `--device`, shared by the commands that run the network.
#[derive(clap::Args)]
pub struct DeviceArg {
    /// Where to run [default: cuda in a CUDA build, else cpu].
    #[arg(long = "device", value_name = "DEVICE", value_enum)]
    pub kind: Option<DeviceKind>,
    /// The convolutional layers on the fast path (own kernels: cuDNN and fused kernels on
    /// CUDA, plain loops on the CPU) or on dfdx's ops, the reference [default: the pipeline's
    /// compute.engine; auto = fast].
    #[arg(long, value_enum)]
    pub engine: Option<crate::config::Engine>,
    /// Fast-path arithmetic: TF32 tensor cores, strict fp32, or bf16 activations with fp32
    /// accumulation and master weights (emulated on the CPU) [default: the pipeline's
    /// compute.precision, tf32].
    #[arg(long, value_enum)]
    pub precision: Option<crate::config::Precision>,
    /// How the fast path picks cuDNN's convolution algorithms: by heuristics (a resume
    /// repeats an uninterrupted run exactly) or by timing them [default: the pipeline's
    /// compute.algorithms, heuristic].
    #[arg(long, value_enum)]
    pub algorithms: Option<crate::config::Algorithms>,
    /// How the fast path lays out activations: channels first (nchw) or channels last (nhwc,
    /// what cuDNN's tensor-core convolutions read) [default: the pipeline's compute.layout,
    /// nchw].
    #[arg(long, value_enum)]
    pub layout: Option<crate::config::Layout>,
    /// Record each training step's forward and backward passes once as CUDA graphs and replay
    /// them (on the CPU: check that they would replay) [default: the pipeline's
    /// compute.graphs, off].
    #[arg(long, value_enum)]
    pub graphs: Option<crate::config::Graphs>,
}

impl DeviceArg {
    /// Applies `--engine`, `--precision`, `--algorithms`, `--layout` and `--graphs` (none
    /// changes what is trained, so each may differ on resume).
    pub fn apply(&self, pipeline: &mut Pipeline) {
        if let Some(engine) = self.engine {
            pipeline.compute.engine = engine;
        }
        if let Some(precision) = self.precision {
            pipeline.compute.precision = precision;
        }
        if let Some(algorithms) = self.algorithms {
            pipeline.compute.algorithms = algorithms;
        }
        if let Some(layout) = self.layout {
            pipeline.compute.layout = layout;
        }
        if let Some(graphs) = self.graphs {
            pipeline.compute.graphs = graphs;
        }
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Shard directory written by `alexnet preprocess` (needs train and val splits).
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory for checkpoints and logs (created if absent).
    #[arg(long)]
    pub run: PathBuf,
    /// Pipeline file (TOML) [default: the paper's; with --resume, the run's pipeline.toml].
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Number of epochs [default: the pipeline's train.epochs].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Continue the run from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Save a checkpoint and stop after this many steps in total, as Ctrl-C does.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after_steps: Option<u64>,
}

#[derive(clap::Args)]
pub struct SampleArgs {
    /// Directory to create (must be empty or absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of classes.
    #[arg(long, default_value_t = SampleOptions::default().classes)]
    pub classes: usize,
    /// Training images per class.
    #[arg(long, default_value_t = SampleOptions::default().train_per_class)]
    pub train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = SampleOptions::default().val_per_class)]
    pub val_per_class: usize,
    /// Smallest shorter side, in pixels.
    #[arg(long, default_value_t = SampleOptions::default().min_side)]
    pub min_side: u32,
    /// Largest shorter side, in pixels.
    #[arg(long, default_value_t = SampleOptions::default().max_side)]
    pub max_side: u32,
    /// Random seed: the same seed gives byte-identical files.
    #[arg(long, default_value_t = SampleOptions::default().seed)]
    pub seed: u64,
    /// Put validation images in val/<wnid>/ folders instead of a flat val/ with LOC_val_solution.csv.
    #[arg(long)]
    pub val_folders: bool,
    /// Leave out the broken and unusual files (CMYK, PNG named .JPEG, truncated, empty, ...).
    #[arg(long)]
    pub no_edge_cases: bool,
}

#[derive(clap::Args)]
pub struct PreprocessArgs {
    /// ImageNet-style input: train/<wnid>/*.JPEG and val/ (flat with LOC_val_solution.csv, or val/<wnid>/).
    #[arg(long)]
    pub input: PathBuf,
    /// Output directory for shards; given again, an interrupted run resumes and a finished
    /// one is checked against its inputs and repaired.
    #[arg(long)]
    pub output: PathBuf,
    /// Pipeline file (TOML); without it, the paper's settings (256×256).
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = thread_count)]
    pub jobs: Option<usize>,
    /// LOC_val_solution.csv, when it is not in the input directory or up to three levels above.
    #[arg(long)]
    pub val_labels: Option<PathBuf>,
    /// Also check every stored record of a finished or interrupted output against its
    /// checksum (reads all shards), and rebuild the shards that fail.
    #[arg(long)]
    pub verify: bool,
    /// Print where the time went (reading, decoding by kind of file, resizing, writing).
    #[arg(long)]
    pub profile: bool,
    /// Build only part I of N (0 <= I < N): the shards whose number is I modulo N, so that N
    /// machines (or processes) share the work, into one shared --output or one each. The last
    /// part to finish in a directory merges the parts into the complete dataset.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    pub part: Option<crate::preprocess::Part>,
    /// Combine finished parts (e.g. copied together from per-machine directories) into the
    /// complete dataset: byte-identical to a single-machine run.
    #[arg(long)]
    pub merge: bool,
}

/// A worker-thread count: 1 to `config::MAX_THREADS`.
/// A batch size: 1 to `config::MAX_BATCH`.
pub fn batch_size(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if (1..=crate::config::MAX_BATCH).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be between 1 and {}",
            crate::config::MAX_BATCH
        ))
    }
}

/// A batch of images of ten crops each: 1 to `config::MAX_BATCH / 10`.
pub fn images_of_ten_crops(text: &str) -> Result<usize, String> {
    let n = batch_size(text)?;
    let most = crate::config::MAX_BATCH / 10;
    if n <= most {
        Ok(n)
    } else {
        Err(format!(
            "must be between 1 and {most} (each image is ten crops)"
        ))
    }
}

pub fn thread_count(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if (1..=crate::config::MAX_THREADS).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be between 1 and {} (this machine has {} cores)",
            crate::config::MAX_THREADS,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ))
    }
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Shard directory written by `alexnet preprocess`.
    #[arg(long)]
    pub data: PathBuf,
    /// Which split to export.
    #[arg(long, value_enum)]
    pub split: Split,
    /// Directory to write <split>/<index>.png and <split>/index.csv into.
    #[arg(long)]
    pub out: PathBuf,
    /// Export only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(clap::Args)]
pub struct BenchLoaderArgs {
    /// Shard directory written by `alexnet preprocess`.
    #[arg(long)]
    pub data: PathBuf,
    /// Pipeline file (TOML) for crop size, batch size and augmentation; default: the paper's.
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Loader threads [default: the pipeline's loader.threads, 0 = all cores].
    #[arg(long, value_parser = thread_count)]
    pub threads: Option<usize>,
    /// Batches to time.
    #[arg(long, default_value_t = 200)]
    pub batches: usize,
    /// Images per batch [default: the pipeline's loader.batch_size].
    #[arg(long, value_parser = batch_size)]
    pub batch_size: Option<usize>,
    /// Seed of the sampler and augmentation [default: the pipeline's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Batch pixel type: raw crops (u8) or mean-subtracted (f32).
    #[arg(long, value_enum, default_value_t = Output::U8)]
    pub output: Output,
    /// Also time a bare loop that only copies random crops (the ceiling), in the same run.
    #[arg(long)]
    pub baseline: bool,
    /// Check every record against its checksum before starting (otherwise each is checked
    /// the first time it is read, as in training).
    #[arg(long)]
    pub verify: bool,
    /// Skip the first-read record checks, only to measure what they cost.
    #[arg(long, conflicts_with = "verify")]
    pub trust_checksums: bool,
}

#[derive(clap::Args)]
pub struct ContactSheetArgs {
    /// Shard directory written by `alexnet preprocess`.
    #[arg(long)]
    pub data: PathBuf,
    /// PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Pipeline file (TOML); default: the paper's.
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Number of samples in the grid.
    #[arg(long, default_value_t = 36, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub count: usize,
    /// Seed of the sampler and augmentation [default: the pipeline's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Epoch whose order and augmentations to show.
    #[arg(long, default_value_t = 0)]
    pub epoch: u64,
}
