//! The `alexnet` command: parses arguments (`cli`) and hands each subcommand to its library
//! module; the reports it prints are built where their data lives.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;

use alexnet::bench::BenchJob;
use alexnet::check::{CheckJob, ReferenceErrors};
use alexnet::cli::*;
use alexnet::config::{LoaderConfig, Pipeline};
use alexnet::device::{on_device, on_device_of_rank};
use alexnet::dist::Launch;
use alexnet::eval::{self, EvalOptions};
use alexnet::loader::bench::LoaderBenchReport;
use alexnet::loader::{contact, LoaderData, LoaderOptions, Output};
use alexnet::preprocess::{self, PreprocessOptions};
use alexnet::progress::Progress;
use alexnet::run::RunDir;
use alexnet::sample::{self, SampleOptions, ValLayout};
use alexnet::shards::Split;
use alexnet::train::TrainOptions;

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

/// `--pipeline` if given; else, when `use_saved`, the run's own `pipeline.toml` if it has one;
/// else the paper's.
fn run_pipeline(explicit: Option<&Path>, run: &Path, use_saved: bool) -> Result<Pipeline> {
    let saved = RunDir::new(run).pipeline();
    match explicit {
        None if use_saved && saved.exists() => Ok(Pipeline::load(&saved)?),
        other => load_pipeline(other),
    }
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
    print!(
        "{}",
        summary.report(&args.out, started.elapsed().as_secs_f64())
    );
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
    eprintln!("{}", options.describe(&pipeline));
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
    let dir = args.out.join(split.name());
    println!("wrote {n} PNG files and index.csv to {}", dir.display());
    Ok(())
}

fn run_bench_loader(args: BenchLoaderArgs) -> Result<()> {
    let mut config = loader_config(args.pipeline.as_deref(), args.seed)?;
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    if let Some(batch_size) = args.batch_size {
        config.batch_size = batch_size;
    }
    let data = open_training_data(&args.data)?;
    if args.verify {
        data.verify_checksums()?;
    }
    if args.trust_checksums {
        data.trust_checksums();
    }
    let progress = Progress::for_stderr();
    let (output, batches) = (args.output, args.batches);
    let report =
        LoaderBenchReport::measure(data, config, output, batches, args.baseline, progress)?;
    eprintln!("{report}");
    println!("{}", report.json());
    Ok(())
}

fn run_contact_sheet(args: ContactSheetArgs) -> Result<()> {
    let png = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    anyhow::ensure!(
        png,
        "--out {}: a contact sheet is written as PNG; name a .png file",
        args.out.display()
    );
    let config = loader_config(args.pipeline.as_deref(), args.seed)?;
    let data = open_training_data(&args.data)?;
    let mut options = LoaderOptions::train(&config, Output::U8);
    options.start.epoch = args.epoch;
    let drawn = contact::write_contact_sheet(data, options, args.count, &args.out)?;
    println!("wrote {drawn} samples to {}", args.out.display());
    Ok(())
}

fn run_train(args: TrainArgs) -> Result<()> {
    let mut pipeline = run_pipeline(args.pipeline.as_deref(), &args.run, args.resume)?;
    if let Some(epochs) = args.epochs {
        pipeline.train.epochs = epochs;
    }
    args.device.apply(&mut pipeline);
    let launch = Launch::from_env().context("reading the data-parallel launch")?;
    let root = launch.as_ref().is_none_or(|l| l.world.is_root());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let first_signal = std::sync::Mutex::new(None::<Instant>);
    // Under a launcher one Ctrl-C arrives twice — from the terminal and passed on by torchrun —
    // so a second signal within moments of the first is the same request.
    let echo = if launch.is_some() { 2.0 } else { 0.0 };
    ctrlc::set_handler(move || {
        let mut first = first_signal.lock().unwrap_or_else(|e| e.into_inner());
        match *first {
            Some(at) if at.elapsed().as_secs_f64() >= echo => std::process::exit(130),
            Some(_) => {}
            None => {
                *first = Some(Instant::now());
                flag.store(true, Ordering::SeqCst);
                if root {
                    eprintln!(
                        "\nstopping after this step and saving a checkpoint (Ctrl-C again to quit \
                         now)"
                    );
                }
            }
        }
    })
    .context("installing the Ctrl-C handler")?;
    let seed = pipeline.train.seed;
    let local_rank = launch.as_ref().map_or(0, |l| l.world.local_rank);
    let options = TrainOptions {
        data: args.data.clone(),
        run: args.run.clone(),
        pipeline,
        resume: args.resume,
        progress: Progress::for_stderr(),
        stop,
        stop_after_steps: args.stop_after_steps,
        device_name: String::new(),
        pipeline_given: args.pipeline.is_some(),
        launch,
    };
    let outcome = on_device_of_rank(args.device.kind, local_rank, seed, options)?
        .with_context(|| format!("training run {}", args.run.display()))?;
    if root {
        eprint!("{}", outcome.summary(&args.data, &args.run));
    }
    if outcome.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

fn run_evaluate(args: EvaluateArgs) -> Result<()> {
    let mut pipeline = run_pipeline(args.pipeline.as_deref(), &args.run, true)?;
    args.device.apply(&mut pipeline);
    let launch = Launch::from_env().context("reading the data-parallel launch")?;
    let root = launch.as_ref().is_none_or(|l| l.world.is_root());
    let local_rank = launch.as_ref().map_or(0, |l| l.world.local_rank);
    let batch_images = args
        .batch_size
        .unwrap_or_else(|| (pipeline.loader.batch_size / 10).max(1));
    let options = EvalOptions {
        data: args.data.clone(),
        run: args.run.clone(),
        pipeline,
        pipeline_given: args.pipeline.is_some(),
        checkpoint: args.checkpoint.clone(),
        batch_images,
        progress: Progress::for_stderr(),
        device_name: String::new(),
        launch,
    };
    let report = on_device_of_rank(args.device.kind, local_rank, 0, options)?
        .with_context(|| format!("evaluating run {}", args.run.display()))?;
    if !root {
        return Ok(());
    }
    eprintln!("{}", report.summary());
    print!("{}", eval::table(&report));
    let dir = RunDir::new(&args.run).eval();
    eprintln!(
        "wrote {}/report.json, predictions.parquet and plots (*.png)",
        dir.display()
    );
    Ok(())
}

fn run_check_fast(args: CheckFastArgs) -> Result<()> {
    let mut pipeline = load_pipeline(args.pipeline.as_deref())?;
    args.device.apply(&mut pipeline);
    if let Some(path) = &args.write_case {
        alexnet::check::write_case(&pipeline, args.batch_size, args.classes, path)?;
        println!("wrote the checked step's case to {}", path.display());
        return Ok(());
    }
    let reference = match &args.reference_errors {
        Some(path) => {
            let reference: ReferenceErrors =
                alexnet::files::read_json(path).with_context(|| {
                    format!("reading PyTorch's reference errors {}", path.display())
                })?;
            let precision = format!("{:?}", pipeline.compute.precision).to_lowercase();
            anyhow::ensure!(
                reference.batch == args.batch_size && reference.precision == precision,
                "{} holds PyTorch's {} errors at batch {}, but this check is {precision} at batch \
                 {}: measure the same case (check-fast --write-case with these arguments, then \
                 benches/pytorch_precision.py)",
                path.display(),
                reference.precision,
                reference.batch,
                args.batch_size
            );
            Some(reference)
        }
        None => None,
    };
    let job = CheckJob {
        pipeline,
        batch: args.batch_size,
        classes: args.classes,
        reference,
    };
    let report = on_device(args.device.kind, job.pipeline.train.seed, job)??;
    print!("{report}");
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
    eprint!("{report}");
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
