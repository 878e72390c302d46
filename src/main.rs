//! The `alexnet` command: parses arguments and hands each subcommand to its library module.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use alexnet::config::{LoaderConfig, Pipeline};
use alexnet::eval::{self, EvalOptions};
use alexnet::loader::{bench, contact, LoaderData, LoaderOptions, Output};
use alexnet::preprocess::{self, PreprocessOptions};
use alexnet::progress::{Meter, Progress};
use alexnet::sample::{self, SampleOptions, ValLayout};
use alexnet::shards::Split;
use alexnet::train::bench::BenchJob;
use alexnet::train::device::{on_device, DeviceKind};
use alexnet::train::TrainOptions;

#[derive(Parser)]
#[command(
    name = "alexnet",
    version,
    about = "ImageNet → 256×256 shards → AlexNet, the 2012 recipe in Rust",
    long_about = "ImageNet → 256×256 shards → AlexNet, the 2012 recipe in Rust.\n\n\
        Typical use: `alexnet preprocess --input /data/imagenet --output /data/shards`.\n\
        Try it on generated data: `alexnet sample --out data/sample` first."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
            the latest checkpoint left off."
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
            (safetensors) work as well: pass the pipeline they were trained with."
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
            tensor, held to 1e-4 with --precision strict and 2e-2 with tf32 (elementwise kernels \
            to 1e-5). Exits with status 1 when any comparison fails; the last line is JSON."
    )]
    CheckFast(CheckFastArgs),
}

#[derive(clap::Args)]
struct CheckFastArgs {
    /// Pipeline whose network is checked [default: the paper's].
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Images in the checked training step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Classes of the checked network.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(clap::Args)]
struct EvaluateArgs {
    /// Shard directory written by `alexnet preprocess` (its val split is evaluated).
    #[arg(long)]
    data: PathBuf,
    /// Run directory: where the checkpoints are and RUN/eval/ is written.
    #[arg(long)]
    run: PathBuf,
    /// Pipeline the model was trained with [default: RUN/pipeline.toml, else the paper's].
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Checkpoint to evaluate (safetensors) [default: the run's latest].
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Images per batch; each is evaluated as ten crops [default: the pipeline's batch / 10].
    #[arg(long)]
    batch_size: Option<usize>,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(clap::Args)]
struct BenchTrainArgs {
    /// Shard directory written by `alexnet preprocess`.
    #[arg(long)]
    data: PathBuf,
    /// Pipeline file (TOML) [default: the paper's].
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Images per step [default: the pipeline's].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first (allocation, caches).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Steps profiled afterwards, synchronising the device after every stage.
    #[arg(long, default_value_t = 3)]
    profile_steps: usize,
    #[command(flatten)]
    device: DeviceArg,
}

/// `--device`, shared by the commands that run the network.
#[derive(clap::Args)]
struct DeviceArg {
    /// Where to run [default: cuda in a CUDA build, else cpu].
    #[arg(long = "device", value_name = "DEVICE", value_enum)]
    kind: Option<DeviceKind>,
    /// The convolutional layers on the fast path (own kernels: cuDNN and fused kernels on
    /// CUDA, plain loops on the CPU) or on dfdx's ops, the reference [default: the pipeline's
    /// compute.engine; auto = fast].
    #[arg(long, value_enum)]
    engine: Option<alexnet::config::Engine>,
    /// Fast-path convolutions on CUDA: TF32 tensor cores or strict fp32 [default: the
    /// pipeline's compute.precision, tf32].
    #[arg(long, value_enum)]
    precision: Option<alexnet::config::Precision>,
    /// How the fast path picks cuDNN's convolution algorithms: by heuristics (a resume
    /// repeats an uninterrupted run exactly) or by timing them [default: the pipeline's
    /// compute.algorithms, heuristic].
    #[arg(long, value_enum)]
    algorithms: Option<alexnet::config::Algorithms>,
}

impl DeviceArg {
    /// Applies `--engine`, `--precision` and `--algorithms` (none changes what is trained, so both may
    /// differ on resume).
    fn apply(&self, pipeline: &mut Pipeline) {
        if let Some(engine) = self.engine {
            pipeline.compute.engine = engine;
        }
        if let Some(precision) = self.precision {
            pipeline.compute.precision = precision;
        }
        if let Some(algorithms) = self.algorithms {
            pipeline.compute.algorithms = algorithms;
        }
    }
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Shard directory written by `alexnet preprocess` (needs train and val splits).
    #[arg(long)]
    data: PathBuf,
    /// Run directory for checkpoints and logs (created if absent).
    #[arg(long)]
    run: PathBuf,
    /// Pipeline file (TOML) [default: the paper's; with --resume, the run's pipeline.toml].
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Number of epochs [default: the pipeline's train.epochs].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
    /// Continue the run from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: DeviceArg,
    /// Save a checkpoint and stop after this many steps in total, as Ctrl-C does.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    stop_after_steps: Option<u64>,
}

#[derive(clap::Args)]
struct SampleArgs {
    /// Directory to create (must be empty or absent).
    #[arg(long)]
    out: PathBuf,
    /// Number of classes.
    #[arg(long, default_value_t = SampleOptions::default().classes)]
    classes: usize,
    /// Training images per class.
    #[arg(long, default_value_t = SampleOptions::default().train_per_class)]
    train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = SampleOptions::default().val_per_class)]
    val_per_class: usize,
    /// Smallest shorter side, in pixels.
    #[arg(long, default_value_t = SampleOptions::default().min_side)]
    min_side: u32,
    /// Largest shorter side, in pixels.
    #[arg(long, default_value_t = SampleOptions::default().max_side)]
    max_side: u32,
    /// Random seed: the same seed gives byte-identical files.
    #[arg(long, default_value_t = SampleOptions::default().seed)]
    seed: u64,
    /// Put validation images in val/<wnid>/ folders instead of a flat val/ with LOC_val_solution.csv.
    #[arg(long)]
    val_folders: bool,
    /// Leave out the broken and unusual files (CMYK, PNG named .JPEG, truncated, empty, ...).
    #[arg(long)]
    no_edge_cases: bool,
}

#[derive(clap::Args)]
struct PreprocessArgs {
    /// ImageNet-style input: train/<wnid>/*.JPEG and val/ (flat with LOC_val_solution.csv, or val/<wnid>/).
    #[arg(long)]
    input: PathBuf,
    /// Output directory for shards; given again, an interrupted run resumes and a finished
    /// one is checked against its inputs and repaired.
    #[arg(long)]
    output: PathBuf,
    /// Pipeline file (TOML); without it, the paper's settings (256×256).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = thread_count)]
    jobs: Option<usize>,
    /// LOC_val_solution.csv, when it is not in the input directory or up to three levels above.
    #[arg(long)]
    val_labels: Option<PathBuf>,
    /// Also check every stored record of a finished or interrupted output against its
    /// checksum (reads all shards), and rebuild the shards that fail.
    #[arg(long)]
    verify: bool,
    /// Print where the time went (reading, decoding by kind of file, resizing, writing).
    #[arg(long)]
    profile: bool,
    /// Build only part I of N (0 <= I < N): the shards whose number is I modulo N, so that N
    /// machines (or processes) share the work, into one shared --output or one each. The last
    /// part to finish in a directory merges the parts into the complete dataset.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    part: Option<alexnet::preprocess::Part>,
    /// Combine finished parts (e.g. copied together from per-machine directories) into the
    /// complete dataset: byte-identical to a single-machine run.
    #[arg(long)]
    merge: bool,
}

/// A worker-thread count: 1 to `config::MAX_THREADS`.
fn thread_count(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if (1..=alexnet::config::MAX_THREADS).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be between 1 and {} (this machine has {} cores)",
            alexnet::config::MAX_THREADS,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ))
    }
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Shard directory written by `alexnet preprocess`.
    #[arg(long)]
    data: PathBuf,
    /// Which split to export.
    #[arg(long, value_enum)]
    split: Split,
    /// Directory to write <split>/<index>.png and <split>/index.csv into.
    #[arg(long)]
    out: PathBuf,
    /// Export only the first N images.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(clap::Args)]
struct BenchLoaderArgs {
    /// Shard directory written by `alexnet preprocess`.
    #[arg(long)]
    data: PathBuf,
    /// Pipeline file (TOML) for crop size, batch size and augmentation; default: the paper's.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Loader threads [default: the pipeline's loader.threads, 0 = all cores].
    #[arg(long, value_parser = thread_count)]
    threads: Option<usize>,
    /// Batches to time.
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// Images per batch [default: the pipeline's loader.batch_size].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Seed of the sampler and augmentation [default: the pipeline's].
    #[arg(long)]
    seed: Option<u64>,
    /// Batch pixel type: raw crops (u8) or mean-subtracted (f32).
    #[arg(long, value_enum, default_value_t = Output::U8)]
    output: Output,
    /// Also time a bare loop that only copies random crops (the ceiling), in the same run.
    #[arg(long)]
    baseline: bool,
    /// Check every record against its checksum before starting (otherwise each is checked
    /// the first time it is read, as in training).
    #[arg(long)]
    verify: bool,
    /// Skip the first-read record checks, only to measure what they cost.
    #[arg(long, conflicts_with = "verify")]
    trust_checksums: bool,
}

#[derive(clap::Args)]
struct ContactSheetArgs {
    /// Shard directory written by `alexnet preprocess`.
    #[arg(long)]
    data: PathBuf,
    /// PNG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Pipeline file (TOML); default: the paper's.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Number of samples in the grid.
    #[arg(long, default_value_t = 36, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    count: usize,
    /// Seed of the sampler and augmentation [default: the pipeline's].
    #[arg(long)]
    seed: Option<u64>,
    /// Epoch whose order and augmentations to show.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample(args) => run_sample(args),
        Command::Preprocess(args) => run_preprocess(args),
        Command::Export(args) => run_export(args),
        Command::BenchLoader(args) => run_bench_loader(args),
        Command::ContactSheet(args) => run_contact_sheet(args),
        Command::Train(args) => run_train(args),
        Command::CheckFast(args) => run_check_fast(args),
        Command::BenchTrain(args) => run_bench_train(args),
        Command::Evaluate(args) => run_evaluate(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn load_pipeline(path: Option<&Path>) -> Result<Pipeline> {
    match path {
        Some(path) => Ok(Pipeline::load(path)?),
        None => Ok(Pipeline::default()),
    }
}

fn run_sample(args: SampleArgs) -> Result<()> {
    let options = SampleOptions {
        classes: args.classes,
        train_per_class: args.train_per_class,
        val_per_class: args.val_per_class,
        min_side: args.min_side,
        max_side: args.max_side,
        seed: args.seed,
        val_layout: if args.val_folders {
            ValLayout::Folders
        } else {
            ValLayout::Flat
        },
        edge_cases: !args.no_edge_cases,
    };
    let started = Instant::now();
    let summary = sample::generate(&args.out, &options)
        .with_context(|| format!("generating sample data in {}", args.out.display()))?;
    println!(
        "wrote {} classes, {} train and {} val files ({:.1} MiB) to {} in {:.1}s",
        summary.classes,
        summary.train_files,
        summary.val_files,
        summary.bytes as f64 / (1 << 20) as f64,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    for edge in &summary.edge_cases {
        println!("  edge case {:<14} {}", edge.kind.name(), edge.path);
    }
    Ok(())
}

fn run_preprocess(args: PreprocessArgs) -> Result<()> {
    let pipeline = load_pipeline(args.pipeline.as_deref())?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = PreprocessOptions {
        input: args.input,
        output: args.output,
        jobs,
        val_labels: args.val_labels,
        progress: Progress::for_stderr(),
        verify: args.verify,
        profile: args.profile,
        part: args.part,
        merge: args.merge,
    };
    let size = pipeline.preprocess.image_size;
    let what = match (options.part, options.merge) {
        (Some(part), _) => format!("part {part} of preprocessing"),
        (None, true) => "merging the parts of".to_string(),
        (None, false) => "preprocessing".to_string(),
    };
    eprintln!(
        "{what} {} → {} ({} pipeline, {size}×{size}, {jobs} jobs)",
        options.input.display(),
        options.output.display(),
        pipeline.name,
    );
    let summary = preprocess::run(&pipeline, &options).with_context(|| {
        format!(
            "preprocessing {} into {}",
            options.input.display(),
            options.output.display()
        )
    })?;
    print!("{summary}");
    Ok(())
}

fn run_export(args: ExportArgs) -> Result<()> {
    let split = args.split;
    let n = alexnet::export::export(&args.data, split, &args.out, args.limit)
        .with_context(|| format!("exporting {split} from {}", args.data.display()))?;
    println!(
        "wrote {n} PNG files and index.csv to {}",
        args.out.join(split.name()).display()
    );
    Ok(())
}

/// The pipeline's loader settings with a command-line seed applied.
fn loader_config(pipeline: Option<&Path>, seed: Option<u64>) -> Result<LoaderConfig> {
    let mut config = load_pipeline(pipeline)?.loader;
    if let Some(seed) = seed {
        config.seed = seed;
    }
    Ok(config)
}

fn open_training_data(data: &Path) -> Result<Arc<LoaderData>> {
    let opened = LoaderData::open(data, Split::Train)
        .with_context(|| format!("opening {}", data.display()))?;
    Ok(Arc::new(opened))
}

fn run_bench_loader(args: BenchLoaderArgs) -> Result<()> {
    let mut config = loader_config(args.pipeline.as_deref(), args.seed)?;
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    if let Some(batch_size) = args.batch_size {
        anyhow::ensure!(batch_size > 0, "--batch-size must be at least 1");
        config.batch_size = batch_size;
    }
    let threads = config.resolved_threads();
    let output = args.output;
    let data = open_training_data(&args.data)?;
    if args.verify {
        data.verify_checksums()?;
    }
    if args.trust_checksums {
        data.trust_checksums();
    }
    let baseline = args.baseline.then(|| {
        let elapsed = bench::bare_loop(
            &data,
            config.crop_size,
            config.batch_size,
            args.batches,
            threads,
            output,
        );
        (args.batches * config.batch_size) as f64 / elapsed.as_secs_f64()
    });
    let mut bar = Meter::new(
        Progress::for_stderr(),
        "bench-loader",
        "batches",
        args.batches as u64,
        0,
    );
    let options = LoaderOptions {
        digests: true,
        ..LoaderOptions::train(&config, output)
    };
    let result = bench::run_loader(data, options, args.batches, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish();
    eprintln!(
        "{} batches of {} ({}×{} {}), {} threads: {:.0} images/s{}",
        result.batches,
        config.batch_size,
        config.crop_size,
        config.crop_size,
        args.output,
        threads,
        result.images_per_sec(),
        baseline.map_or(String::new(), |b| format!(
            " ({:.0}% of the bare copy loop's {b:.0})",
            100.0 * result.images_per_sec() / b
        )),
    );
    let mut report = serde_json::json!({
        "images_per_sec": result.images_per_sec(),
        "checksum": result.checksum,
        "batches": result.batches,
        "images": result.images,
        "seconds": result.elapsed.as_secs_f64(),
        "batch_size": config.batch_size,
        "crop_size": config.crop_size,
        "threads": threads,
        "output": args.output,
    });
    if let Some(b) = baseline {
        report["bare_loop_images_per_sec"] = serde_json::json!(b);
    }
    println!("{report}");
    Ok(())
}

fn run_contact_sheet(args: ContactSheetArgs) -> Result<()> {
    let config = loader_config(args.pipeline.as_deref(), args.seed)?;
    let data = open_training_data(&args.data)?;
    let mut options = LoaderOptions::train(&config, Output::U8);
    options.start.epoch = args.epoch;
    let drawn = contact::write_contact_sheet(data, options, args.count, &args.out)?;
    println!("wrote {drawn} samples to {}", args.out.display());
    Ok(())
}

/// `--pipeline` if given; else, when `use_saved`, the run's own `pipeline.toml` if it has one;
/// else the paper's.
fn run_pipeline(explicit: Option<&Path>, run: &Path, use_saved: bool) -> Result<Pipeline> {
    let saved = alexnet::train::rundir::RunDir::new(run).pipeline();
    match explicit {
        None if use_saved && saved.exists() => Ok(Pipeline::load(&saved)?),
        other => load_pipeline(other),
    }
}

fn run_train(args: TrainArgs) -> Result<()> {
    let mut pipeline = run_pipeline(args.pipeline.as_deref(), &args.run, args.resume)?;
    if let Some(epochs) = args.epochs {
        pipeline.train.epochs = epochs;
    }
    args.device.apply(&mut pipeline);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and saving a checkpoint (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    let seed = pipeline.train.seed;
    let options = TrainOptions {
        data: args.data.clone(),
        run: args.run.clone(),
        pipeline,
        resume: args.resume,
        progress: Progress::for_stderr(),
        stop,
        stop_after_steps: args.stop_after_steps,
        device_name: String::new(),
    };
    let outcome = on_device(args.device.kind, seed, options)?
        .with_context(|| format!("training run {}", args.run.display()))?;

    let resume_hint = format!(
        "alexnet train --data {} --run {} --resume",
        args.data.display(),
        args.run.display()
    );
    if outcome.interrupted {
        let saved = outcome.checkpoint.as_deref().map(Path::display);
        eprintln!(
            "stopped at step {} (epoch {} of {}); saved {}\ncontinue with: {resume_hint}",
            outcome.steps,
            outcome.epochs_done + 1,
            outcome.epochs,
            saved.map(|p| p.to_string()).unwrap_or_default(),
        );
        std::process::exit(130);
    }
    if let Some(last) = &outcome.last_epoch {
        eprintln!(
            "done: {} epochs, {} steps, {:.1} min of training; final validation (centre crop): \
             top-1 error {:.2}%, top-5 error {:.2}%",
            outcome.epochs_done,
            outcome.steps,
            outcome.seconds / 60.0,
            100.0 * last.val.top1_error(),
            100.0 * last.val.top5_error(),
        );
    }
    if let Some(path) = &outcome.checkpoint {
        eprintln!("checkpoint: {}", path.display());
    }
    let run_dir = alexnet::train::rundir::RunDir::new(&args.run);
    eprintln!("metrics: {}", run_dir.metrics().display());
    Ok(())
}

fn run_evaluate(args: EvaluateArgs) -> Result<()> {
    let mut pipeline = run_pipeline(args.pipeline.as_deref(), &args.run, true)?;
    args.device.apply(&mut pipeline);
    let batch_images = args
        .batch_size
        .unwrap_or_else(|| (pipeline.loader.batch_size / 10).max(1));
    anyhow::ensure!(batch_images > 0, "--batch-size must be at least 1");
    let options = EvalOptions {
        data: args.data.clone(),
        run: args.run.clone(),
        pipeline,
        checkpoint: args.checkpoint.clone(),
        batch_images,
        progress: Progress::for_stderr(),
        device_name: String::new(),
    };
    let report = on_device(args.device.kind, 0, options)?
        .with_context(|| format!("evaluating run {}", args.run.display()))?;
    eprintln!(
        "evaluated {} on {} validation images ({} views each) in {:.1} s, {:.0} images/s on {}",
        report.checkpoint.display(),
        report.images,
        report.views_per_image,
        report.seconds,
        report.images_per_sec,
        report.device,
    );
    print!("{}", eval::table(&report));
    let dir = args.run.join("eval");
    eprintln!(
        "wrote {}/report.json, predictions.parquet and plots (*.png)",
        dir.display()
    );
    Ok(())
}

fn run_check_fast(args: CheckFastArgs) -> Result<()> {
    let mut pipeline = load_pipeline(args.pipeline.as_deref())?;
    args.device.apply(&mut pipeline);
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let job = alexnet::fast::check::CheckJob {
        pipeline,
        batch: args.batch_size,
        classes: args.classes,
    };
    let report = on_device(args.device.kind, job.pipeline.train.seed, job)??;
    println!(
        "fast path vs reference on {} ({}): relative error per tensor",
        report.device,
        format!("{:?}", report.precision).to_lowercase()
    );
    for (c, tolerance) in &report.results {
        let verdict = if c.relative_error <= *tolerance {
            "ok"
        } else {
            "FAIL"
        };
        println!(
            "  {:<40} {:>10.2e}  (tolerance {:.0e}, norm {:.2e})  {verdict}",
            c.name, c.relative_error, tolerance, c.norm
        );
    }
    let failures = report.failures();
    println!("{}", serde_json::to_string(&report)?);
    anyhow::ensure!(
        failures == 0,
        "{failures} of {} comparisons exceed their tolerance",
        report.results.len()
    );
    Ok(())
}

fn run_bench_train(args: BenchTrainArgs) -> Result<()> {
    let mut pipeline = load_pipeline(args.pipeline.as_deref())?;
    if let Some(batch_size) = args.batch_size {
        anyhow::ensure!(batch_size > 0, "--batch-size must be at least 1");
        pipeline.loader.batch_size = batch_size;
    }
    args.device.apply(&mut pipeline);
    let data = open_training_data(&args.data)?;
    let job = BenchJob {
        pipeline,
        data,
        steps: args.steps.max(1),
        warmup: args.warmup,
        profile_steps: args.profile_steps,
    };
    let report = on_device(args.device.kind, job.pipeline.train.seed, job)??;
    eprintln!("{:<28} {:>9}", "stage (profiled, median)", "ms");
    for (name, ms) in &report.phases_ms {
        eprintln!("{name:<28} {ms:>9.2}");
    }
    for (name, ms) in &report.stages_ms {
        eprintln!("  {name:<26} {ms:>9.2}");
    }
    eprintln!(
        "{:.1} images/s, median step {:.1} ms (unsynchronised steps, loader feeding)",
        report.images_per_sec, report.step_ms_median
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
