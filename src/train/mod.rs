//! The training loop: the paper's recipe (SGD with momentum, weight decay, dropout, random
//! crops, flips and lighting; the learning rate divided by 10 when validation error stalls),
//! with validation every epoch, checkpoints that resume exactly, and logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::HumanCount;

use crate::config::Pipeline;
use crate::device::{self, FastDevice};
use crate::dist::watchdog::Watchdog;
use crate::dist::{Control, DistError, Launch, World};
use crate::engine::head::DropoutKey;
use crate::engine::metrics::Tally;
use crate::engine::replicas::{Alone, Replicas, StepSync};
use crate::engine::sgd::Sgd;
use crate::engine::{EngineError, StepEngine};
use crate::kernels::replay::ReplayStats;
use crate::loader::{Batch, Loader, LoaderData, LoaderError, LoaderOptions, Mode, Output};
use crate::model::checkpoint::CheckpointError;
use crate::model::{AlexNet, ModelError, Spec};
use crate::progress::{Meter, Progress};
use crate::run::state::{self, StateError, TrainState};
use crate::run::{CsvLog, EpochRow, LogError, RunDir, StepRow};
use crate::shards::Split;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(
        "{run} already holds a training run; pass --resume to continue it, or choose another --run"
    )]
    RunExists { run: PathBuf },
    #[error("nothing to resume: {run} has no checkpoints (start it without --resume)")]
    NothingToResume { run: PathBuf },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "the pipeline's [{section}] settings differ from those run {run} was trained with \
         ({differences}, as trained and now); {advice}"
    )]
    PipelineChanged {
        run: PathBuf,
        section: String,
        differences: String,
        advice: String,
    },
    #[error("the training and validation shards disagree: {0}; preprocess them together")]
    DataMismatch(String),
    #[error(
        "training diverged at step {step} (epoch {epoch}): {what}; stopped without saving. {hint}"
    )]
    Diverged {
        step: u64,
        epoch: u64,
        what: String,
        hint: String,
    },
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("the {split} loader ended after {got} of {expected} images without saying why")]
    ShortStream {
        split: Split,
        got: u64,
        expected: u64,
    },
    #[error("training stopped at step {step} (epoch {epoch}): {error}; {checkpoint}")]
    Engine {
        step: u64,
        epoch: u64,
        error: EngineError,
        checkpoint: String,
    },
    // Not a `#[from]` source: the message holds it already, and a source would print it twice.
    #[error("cannot open the training engine: {0}")]
    EngineSetup(EngineError),
    #[error("{run} is already at step {step}; --stop-after-steps {limit} would train nothing")]
    AlreadyPastStop { run: PathBuf, step: u64, limit: u64 },
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error(
        "rank {rank} finds no checkpoints to resume from in {run}: either the run has none yet \
         (start it without --resume), or that directory is not on a file system every machine \
         shares (every rank reads the run's checkpoint when it resumes)"
    )]
    RunNotShared { rank: usize, run: PathBuf },
    #[error(
        "the ranks' weights differ at step {step} ({checksums}): a rank computed differently \
         (faulty GPU or memory?); stopped without saving. The last good checkpoint is \
         {checkpoint}; continue with --resume"
    )]
    ReplicasDiffer {
        step: u64,
        checksums: String,
        checkpoint: String,
    },
}

impl From<EngineError> for TrainError {
    fn from(e: EngineError) -> Self {
        Self::EngineSetup(e)
    }
}

/// The warm-up the divergence message suggests, in epochs (tested to let the paper's
/// initialisation start where it diverges without one).
const WARMUP_HINT: f64 = 2.0;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to train, where, and how to report.
pub struct TrainOptions {
    pub data: PathBuf,
    pub run: PathBuf,
    /// The resolved pipeline (with any `--epochs` override applied).
    pub pipeline: Pipeline,
    pub resume: bool,
    pub progress: Progress,
    /// Set (e.g. by Ctrl-C) to save a checkpoint and stop after the current step.
    pub stop: Arc<AtomicBool>,
    /// Stop as if interrupted after this many steps in total (for tests and quick looks).
    pub stop_after_steps: Option<u64>,
    /// Names the device in the header line.
    pub device_name: String,
    /// Whether the pipeline was named on the command line (else it is the run's own file),
    /// for the advice when it conflicts with the run's checkpoints.
    pub pipeline_given: bool,
    /// This process's part in a data-parallel job (`None`: one process; see `dist`).
    pub launch: Option<Launch>,
}

/// One epoch's results, as written to `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    pub epoch: u64,
    pub step: u64,
    pub learning_rate: f64,
    pub train: Tally,
    pub val: Tally,
    pub seconds: f64,
}

impl EpochRecord {
    fn row(&self) -> EpochRow {
        EpochRow {
            epoch: self.epoch,
            step: self.step,
            learning_rate: self.learning_rate,
            train_loss: self.train.loss(),
            train_top1_error: self.train.top1_error(),
            val_loss: self.val.loss(),
            val_top1_error: self.val.top1_error(),
            val_top5_error: self.val.top5_error(),
            epoch_seconds: self.seconds,
            train_images_per_sec: self.train.images as f64 / self.seconds.max(1e-9),
        }
    }
}

/// How a call to `run` ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub steps: u64,
    pub epochs_done: u64,
    pub epochs: u64,
    pub last_epoch: Option<EpochRecord>,
    pub interrupted: bool,
    pub checkpoint: Option<PathBuf>,
    pub seconds: f64,
    /// The ranks of the job (1: one process).
    pub ranks: usize,
    /// How the fast path's passes ran, when `compute.graphs` is on.
    pub replays: Option<ReplayStats>,
}

impl Outcome {
    /// What a person reads at the end: where the run stopped and how to continue it, or the
    /// final validation error; then where the checkpoint and the metrics are.
    pub fn summary(&self, data: &Path, run: &Path) -> String {
        let mut text = String::new();
        if let Some(replays) = &self.replays {
            text += &format!("passes (compute.graphs): {replays}\n");
        }
        if self.interrupted {
            let saved = self.checkpoint.as_deref().map(Path::display);
            let launch = if self.ranks > 1 {
                " (launched as before: the same torchrun or srun command)"
            } else {
                ""
            };
            text += &format!(
                "stopped at step {} (epoch {} of {}); saved {}\ncontinue with: alexnet train \
                 --data {} --run {} --resume{launch}\n",
                self.steps,
                self.epochs_done + 1,
                self.epochs,
                saved.map(|p| p.to_string()).unwrap_or_default(),
                data.display(),
                run.display()
            );
            return text;
        }
        if let Some(last) = &self.last_epoch {
            text += &format!(
                "done: {} epochs, {} steps, {:.1} min of training; final validation (centre \
                 crop): top-1 error {:.2}%, top-5 error {:.2}%\n",
                self.epochs_done,
                self.steps,
                self.seconds / 60.0,
                100.0 * last.val.top1_error(),
                100.0 * last.val.top5_error(),
            );
        }
        if let Some(path) = &self.checkpoint {
            text += &format!("checkpoint: {}\n", path.display());
        }
        text += &format!("metrics: {}\n", RunDir::new(run).metrics().display());
        text
    }
}

impl device::DeviceJob for TrainOptions {
    type Output = Result<Outcome, TrainError>;
    fn run<D: FastDevice>(self, dev: D, device_name: String) -> Self::Output {
        run(
            dev,
            TrainOptions {
                device_name,
                ..self
            },
        )
    }
}

/// Trains (or resumes) a run. All device work stays on the calling thread.
///
/// In a data-parallel job (`options.launch`) every rank calls this: each takes its slice of
/// every batch, and the ranks share the step's counts and sum the gradients, so that all of
/// them hold the same weights and take the same decisions. Rank 0 alone writes the run
/// directory. A rank that fails tells the others, which stop too.
pub fn run<D>(dev: D, options: TrainOptions) -> Result<Outcome, TrainError>
where
    D: FastDevice,
{
    // The ranks meet first, so that whatever stops one of them later reaches the others.
    let mut joined = match &options.launch {
        None => None,
        Some(launch) => Some(Control::join(launch, "alexnet train", D::collective_id)?),
    };
    let (mut trainer, train_data) = match prepare(dev, &options, &mut joined) {
        Ok(prepared) => prepared,
        Err(e) => {
            if let Some((control, _)) = &mut joined {
                control.abort(&e.to_string());
            }
            return Err(e);
        }
    };
    let result = trainer.train(&options, &train_data);
    if let (Err(e), Some(replicas)) = (&result, &mut trainer.replicas) {
        replicas.control.abort(&e.to_string());
    }
    result
}

/// A data-parallel job's control plane once the ranks have met, and rank 0's id for the
/// gradient sums (`None` for one process). `Trainer::start` takes it once nothing can fail.
type Joined = Option<(Control, Vec<u8>)>;

/// Opens the data and starts (or resumes) the run.
fn prepare<D: FastDevice>(
    dev: D,
    options: &TrainOptions,
    joined: &mut Joined,
) -> Result<(Trainer<D>, Arc<LoaderData>), TrainError> {
    let (train_data, val_data) = open_data(&options.data)?;
    let pipeline = &options.pipeline;
    train_data.check_pipeline(pipeline)?;
    let spec = Spec::new(
        &pipeline.model,
        pipeline.loader.crop_size as usize,
        train_data.classes.len(),
    )?;
    let trainer = Trainer::start(dev, spec, &train_data, val_data, options, joined)?;
    Ok((trainer, train_data))
}

impl<D: FastDevice> Trainer<D> {
    /// The training loop, from where `start` left the run to the last epoch (or a stop).
    fn train(
        &mut self,
        options: &TrainOptions,
        train_data: &Arc<LoaderData>,
    ) -> Result<Outcome, TrainError> {
        let pipeline = &options.pipeline;
        let epochs = pipeline.train.epochs;
        if self.state.epoch >= epochs {
            if self.is_root() {
                eprintln!(
                    "{} already finished {} epochs; raise --epochs to train further",
                    options.run.display(),
                    self.state.epoch
                );
            }
            return Ok(self.outcome(false, None));
        }
        if let Some(limit) = options.stop_after_steps.filter(|&n| self.state.step >= n) {
            return Err(TrainError::AlreadyPastStop {
                run: options.run.clone(),
                step: self.state.step,
                limit,
            });
        }
        // The ranks start from the same weights (the same seed, or the same checkpoint).
        self.compare_replicas()?;
        if self.is_root() {
            self.print_header(options, train_data.len());
        }

        let mut loader_options = LoaderOptions::train(&pipeline.loader, Output::U8);
        loader_options.start = self.state.position();
        loader_options.epochs = Some(epochs - self.state.epoch);
        (loader_options.rank, loader_options.world_size) = (self.world().rank, self.world().size);
        let mut loader = Loader::start(train_data.clone(), loader_options)?;
        let progress = if self.is_root() {
            options.progress
        } else {
            Progress::Off
        };
        let mut bar = EpochBar::new(progress, self.steps_per_epoch, pipeline.loader.batch_size);
        bar.start_epoch(&self.state, epochs);
        while let Some(batch) = loader.next() {
            let batch = batch?;
            let wants_stop = options.stop.load(Ordering::Relaxed);
            let (loss, lr, stop_asked) = self.step(&batch, wants_stop)?;
            bar.step(&self.state, loss, lr);
            if stop_asked && !wants_stop && self.is_root() {
                bar.println(
                    "another rank was asked to stop (Ctrl-C or SIGTERM): saving a checkpoint after \
                     this step",
                );
            }

            if self.epoch_finished() {
                bar.finish_epoch();
                let record = self.finish_epoch()?;
                bar.println(&record.summary_line(epochs));
                if let Some(replays) = self.engine.replay_stats() {
                    bar.println(&format!("  passes (compute.graphs): {replays}"));
                }
                if self.state.epoch < epochs {
                    bar.start_epoch(&self.state, epochs);
                }
            } else if self.checkpoint_due() {
                self.save_checkpoint(Some(&batch))?;
            } else if self.replicas_check_due() {
                self.compare_replicas()?;
            }

            let stop_now = stop_asked
                || options
                    .stop_after_steps
                    .is_some_and(|n| self.state.step >= n);
            if stop_now && self.state.epoch < epochs {
                bar.finish_epoch();
                let path = self.save_checkpoint(Some(&batch))?;
                return Ok(self.outcome(true, Some(path)));
            }
            loader.recycle(batch);
        }
        if self.state.epoch < epochs {
            return Err(TrainError::ShortStream {
                split: Split::Train,
                got: self.state.sample as u64,
                expected: train_data.len() as u64,
            });
        }
        let last = self.latest_checkpoint.clone();
        Ok(self.outcome(false, last))
    }
}

fn open_data(dataset: &Path) -> Result<(Arc<LoaderData>, Arc<LoaderData>), TrainError> {
    let train = LoaderData::open(dataset, Split::Train)?;
    let val = LoaderData::open(dataset, Split::Val)?;
    if train.classes != val.classes {
        return Err(TrainError::DataMismatch(format!(
            "{} training classes vs {} validation classes",
            train.classes.len(),
            val.classes.len()
        )));
    }
    if train.image_size != val.image_size {
        return Err(TrainError::DataMismatch(format!(
            "{}×{} training images vs {}×{} validation images",
            train.image_size, train.image_size, val.image_size, val.image_size
        )));
    }
    Ok((Arc::new(train), Arc::new(val)))
}

/// Training has diverged when the loss is not a number, or when its mean over the last few
/// hundred images exceeds `limit` (by default ten times the loss of a uniform guess, which
/// no run that is learning comes near, while a run whose weights blow up passes it at once).
struct DivergenceGuard {
    recent: std::collections::VecDeque<f32>,
    window: usize,
    limit: f64,
}

impl DivergenceGuard {
    /// Images the mean loss is taken over.
    const IMAGES: usize = 256;

    fn new(config: &crate::config::TrainConfig, batch_size: usize, classes: usize) -> Self {
        let limit = if config.max_loss > 0.0 {
            config.max_loss
        } else {
            10.0 * (classes.max(2) as f64).ln()
        };
        let window = Self::IMAGES.div_ceil(batch_size.max(1));
        Self {
            recent: std::collections::VecDeque::with_capacity(window),
            window,
            limit,
        }
    }

    /// What is wrong with the run after a step with this loss, if anything.
    fn observe(&mut self, loss: f32) -> Option<String> {
        if !loss.is_finite() {
            return Some(format!("the training loss became {loss}"));
        }
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(loss);
        let mean = self.recent.iter().map(|&l| l as f64).sum::<f64>() / self.recent.len() as f64;
        (mean > self.limit).then(|| {
            format!(
                "the mean training loss over the last {} step(s) is {mean:.4e}, above train.max_loss \
                 = {:.2} (ten times the loss of guessing)",
                self.recent.len(),
                self.limit
            )
        })
    }
}

/// The model, optimiser, state and logs of a run in progress.
struct Trainer<D: FastDevice> {
    dev: D,
    model: AlexNet<f32, D>,
    sgd: Sgd<D>,
    state: TrainState,
    pipeline: Pipeline,
    classes: Vec<String>,
    /// Runs each step: dfdx's ops, or the fast path's kernels.
    engine: StepEngine<D>,
    val_data: Arc<LoaderData>,
    run: RunDir,
    /// The logs, written by rank 0 alone (see `Logs`).
    logs: Option<Logs>,
    /// When the previous step ended (for `StepRow::ms_per_step`).
    last_step_end: Instant,
    train_images: usize,
    steps_per_epoch: u64,
    latest_checkpoint: Option<PathBuf>,
    /// When the current stretch of training (since the last save or epoch end) began.
    clock: Instant,
    last_epoch: Option<EpochRecord>,
    guard: DivergenceGuard,
    dataset: state::DatasetId,
    /// This rank's part in a data-parallel job, and the watchdog that ends it if the job
    /// hangs (both `None` for one process).
    replicas: Option<Replicas<D>>,
    watchdog: Option<Watchdog>,
    /// Steps between comparisons of the ranks' weights.
    check_every: u64,
}

/// What only rank 0 writes: the logs, under the run directory's lock.
struct Logs {
    metrics: CsvLog<EpochRow>,
    steps: CsvLog<StepRow>,
    /// Held while the run directory is being written.
    _lock: crate::lock::DirLock,
}

impl Logs {
    /// Prepares the run directory for training from `step`: the checkpoint folder without
    /// unfinished files, the pipeline saved, the logs cut back to `step`.
    fn open(
        run: &RunDir,
        pipeline: &Pipeline,
        step: u64,
        lock: crate::lock::DirLock,
    ) -> Result<Self, TrainError> {
        std::fs::create_dir_all(run.checkpoints()).map_err(io_error(&run.checkpoints()))?;
        run.remove_unfinished_checkpoints()
            .map_err(io_error(&run.checkpoints()))?;
        let pipeline_path = run.pipeline();
        crate::files::write_atomic(&pipeline_path, pipeline.to_toml().as_bytes()).map_err(|e| {
            TrainError::Io {
                path: pipeline_path.clone(),
                source: std::io::Error::other(e),
            }
        })?;
        Ok(Self {
            metrics: CsvLog::open(&run.metrics(), step)?,
            steps: CsvLog::open(&run.steps(), step)?,
            _lock: lock,
        })
    }
}

/// The head of a fingerprint, for messages.
fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

impl<D: FastDevice> Trainer<D> {
    /// A fresh run, or the run's latest checkpoint when resuming.
    fn start(
        dev: D,
        spec: Spec,
        train_data: &Arc<LoaderData>,
        val_data: Arc<LoaderData>,
        options: &TrainOptions,
        joined: &mut Joined,
    ) -> Result<Self, TrainError> {
        let pipeline = options.pipeline.clone();
        let run = RunDir::new(&options.run);
        let world = options.launch.as_ref().map_or(World::ALONE, |l| l.world);
        let lock = if world.is_root() {
            std::fs::create_dir_all(&run.root).map_err(io_error(&run.root))?;
            Some(crate::lock::DirLock::acquire(&run.root, "`alexnet train`")?)
        } else {
            None
        };
        let classes: Vec<String> = train_data.classes.iter().map(|c| c.wnid.clone()).collect();
        let dataset = state::DatasetId {
            train: train_data.fingerprint.clone(),
            val: val_data.fingerprint.clone(),
        };
        let existing = run
            .latest_checkpoint()
            .map_err(io_error(&run.checkpoints()))?;
        let (model, sgd, state, latest) = match (options.resume, existing) {
            (false, Some(_)) => return Err(TrainError::RunExists { run: run.root }),
            (true, None) if !world.is_root() => {
                return Err(TrainError::RunNotShared {
                    rank: world.rank,
                    run: run.root,
                })
            }
            (true, None) => return Err(TrainError::NothingToResume { run: run.root }),
            (false, None) => {
                let model = AlexNet::new(&dev, spec, pipeline.train.seed);
                let t = &pipeline.train;
                let sgd = Sgd::new(&dev, &model, t.momentum, t.weight_decay);
                (model, sgd, TrainState::new(&pipeline), None)
            }
            (true, Some(path)) => {
                let given = options.pipeline_given;
                let check = |saved: &Pipeline| check_resumable(saved, &pipeline, &run, given);
                let restored = state::load(&path, &spec, &classes, &dataset, &dev, check)?;
                let t = &pipeline.train;
                let sgd = Sgd {
                    momentum: t.momentum,
                    weight_decay: t.weight_decay,
                    velocity: restored.velocity,
                };
                (restored.model, sgd, restored.state, Some(path))
            }
        };
        let logs = match lock {
            Some(lock) => Some(Logs::open(&run, &pipeline, state.step, lock)?),
            None => None,
        };
        let loader = &pipeline.loader;
        let n = train_data.len() as u64;
        let batch = loader.batch_size as u64;
        let steps_per_epoch = if loader.drop_last {
            n / batch
        } else {
            n.div_ceil(batch)
        };
        if steps_per_epoch == 0 {
            return Err(TrainError::Loader(LoaderError::Settings(format!(
                "batch size {batch} is larger than the {n} training images"
            ))));
        }
        let guard = DivergenceGuard::new(&pipeline.train, loader.batch_size, classes.len());
        let engine = StepEngine::new(
            &dev,
            &pipeline.compute,
            train_data,
            loader,
            &model,
            Some(&sgd),
        )?;
        let (replicas, watchdog, check_every) = match &options.launch {
            None => (None, None, 0),
            Some(launch) => {
                if !pipeline.compute.engine.is_fast() {
                    return Err(EngineError::DfdxAlone.into());
                }
                // Ranks that would train different things, or from different points, stop here.
                let stop = options
                    .stop_after_steps
                    .map_or("the last epoch".into(), |n| format!("step {n}"));
                let job = format!(
                    "pipeline {:016x} on data {}/{} from step {} to {stop}",
                    xxhash_rust::xxh3::xxh3_64(pipeline.to_toml().as_bytes()),
                    short(&dataset.train),
                    short(&dataset.val),
                    state.step
                );
                if let Some((control, _)) = joined.as_mut() {
                    control.agree(&job)?;
                }
                let Some((mut control, id)) = joined.take() else {
                    return Err(DistError::Collective("the ranks have not met".into()).into());
                };
                let sum = dev.gradient_sum(world, &id).inspect_err(|e| {
                    control.abort(&e.to_string());
                })?;
                // Longer than any wait on the control plane, which names the rank at fault.
                let limit = launch.timeout + std::time::Duration::from_secs(60);
                (
                    Some(Replicas::new(control, sum)),
                    Some(Watchdog::start(world.rank, limit)),
                    launch.check_every,
                )
            }
        };
        Ok(Self {
            engine,
            dev,
            model,
            sgd,
            state,
            pipeline,
            classes,
            val_data,
            run,
            logs,
            replicas,
            watchdog,
            check_every,
            last_step_end: Instant::now(),
            train_images: train_data.len(),
            steps_per_epoch,
            latest_checkpoint: latest,
            clock: Instant::now(),
            last_epoch: None,
            guard,
            dataset,
        })
    }

    fn world(&self) -> World {
        self.replicas.as_ref().map_or(World::ALONE, Replicas::world)
    }

    fn is_root(&self) -> bool {
        self.world().is_root()
    }

    fn print_header(&self, options: &TrainOptions, images: usize) {
        let spec = &self.model.spec;
        eprintln!(
            "AlexNet: {} classes, {}×{} input, {} parameters",
            spec.classes,
            spec.input,
            spec.input,
            HumanCount(spec.parameter_count() as u64)
        );
        for layer in spec.table() {
            let shape = if layer.side > 1 {
                format!("{}×{}×{}", layer.side, layer.side, layer.channels)
            } else {
                layer.channels.to_string()
            };
            eprintln!("  {:<6} {:<42} {shape}", layer.name, layer.operation);
        }
        let verb = if self.state.step > 0 {
            format!(
                "resuming at step {} (epoch {})",
                self.state.step,
                self.state.epoch + 1
            )
        } else {
            "training".to_string()
        };
        eprintln!(
            "{verb} on {} with {}: {} images, {} steps of {} per epoch, {} epochs; {} validation \
             images",
            options.device_name,
            self.engine.describe(),
            HumanCount(images as u64),
            self.steps_per_epoch,
            self.pipeline.loader.batch_size,
            self.pipeline.train.epochs,
            HumanCount(self.val_data.len() as u64),
        );
        let world = self.world();
        if self.replicas.is_some() {
            let batch = self.pipeline.loader.batch_size;
            let (least, most) = (batch / world.size, batch.div_ceil(world.size));
            let slice = if least == most {
                format!("{least} images each")
            } else {
                format!("{least} to {most} images")
            };
            eprintln!(
                "data-parallel over {} ranks: each takes its slice of every batch of {batch} \
                 ({slice}) and the gradients are summed; this rank (0) writes the run",
                world.size,
            );
        }
    }

    /// The rate of the step with index `step` (the warm-up, then the plateau rule's rate).
    fn learning_rate(&self, step: u64) -> f64 {
        let config = &self.pipeline.train;
        self.state
            .schedule
            .rate_at(config, step, self.steps_per_epoch)
    }

    /// One SGD step on `batch` (this rank's slice of the whole batch). `wants_stop`: this
    /// process was asked to stop. Returns the whole batch's loss, the learning rate it took,
    /// and whether to stop after it (any rank was asked).
    fn step(&mut self, batch: &Batch, wants_stop: bool) -> Result<(f32, f64, bool), TrainError> {
        let dropout = Some(DropoutKey {
            seed: self.pipeline.train.seed,
            step: self.state.step,
            first_image: batch.first_image as u64,
        });
        let lr = self.learning_rate(self.state.step);
        let (model, sgd) = (&mut self.model, &mut self.sgd);
        let sync: &mut dyn StepSync<D> = match &mut self.replicas {
            Some(replicas) => {
                replicas.stop = wants_stop;
                replicas
            }
            None => &mut Alone,
        };
        let stepped = self
            .engine
            .train_step_with(&self.dev, model, sgd, batch, dropout, lr, sync, None);
        let whole = stepped.map_err(|e| self.engine_failed(e))?;
        let stop = self.replicas.as_ref().map_or(wants_stop, |r| r.stop);
        let value = whole.loss() as f32;
        if let Some(what) = self.guard.observe(value) {
            return Err(self.diverged(self.state.step + 1, what));
        }
        self.state.epoch_tally.merge(&whole);
        self.state.step += 1;
        let next = batch.next_position();
        (self.state.epoch, self.state.sample) = (next.epoch, next.sample);
        let now = Instant::now();
        if let Some(logs) = &mut self.logs {
            logs.steps.append(&StepRow {
                step: self.state.step,
                epoch: self.state.epoch + 1,
                loss: value,
                learning_rate: lr,
                ms_per_step: (now - self.last_step_end).as_secs_f64() * 1e3,
            })?;
        }
        self.last_step_end = now;
        self.beat();
        Ok((value, lr, stop))
    }

    /// Tells the watchdog that training moves.
    fn beat(&self) {
        if let Some(w) = &self.watchdog {
            w.beat();
        }
    }

    fn replicas_check_due(&self) -> bool {
        self.replicas.is_some() && self.state.step.is_multiple_of(self.check_every)
    }

    /// Compares a checksum of every rank's weights: they must be the same bits (every rank
    /// applies the same summed gradients to the same weights).
    fn compare_replicas(&mut self) -> Result<(), TrainError> {
        if self.replicas.is_none() {
            return Ok(());
        }
        let mine = self.engine.checksum().map_err(|e| self.engine_failed(e))?;
        let Some(replicas) = &mut self.replicas else {
            return Ok(());
        };
        let all = replicas
            .control
            .gather_u64(mine, "comparing the ranks' weights")?;
        if all.iter().all(|&c| c == all[0]) {
            return Ok(());
        }
        let checksums = all
            .iter()
            .enumerate()
            .map(|(rank, c)| format!("rank {rank}: {c:016x}"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(TrainError::ReplicasDiffer {
            step: self.state.step,
            checksums,
            checkpoint: self
                .latest_checkpoint
                .as_ref()
                .map_or("none yet".into(), |p| p.display().to_string()),
        })
    }

    /// The error for a step the engine could not take (a kernel failed, the device ran out of
    /// memory): nothing is saved after it, so the last checkpoint stays the last good one.
    fn engine_failed(&self, source: EngineError) -> TrainError {
        let checkpoint = match &self.latest_checkpoint {
            Some(path) => format!(
                "the last good checkpoint is {}; fix the cause, then continue with --resume",
                path.display()
            ),
            None => "no checkpoint was written yet".into(),
        };
        TrainError::Engine {
            step: self.state.step + 1,
            epoch: self.state.epoch + 1,
            error: source,
            checkpoint,
        }
    }

    /// The error for a run that diverged at `step`, naming the checkpoint to go back to.
    fn diverged(&self, step: u64, what: String) -> TrainError {
        let hint = match &self.latest_checkpoint {
            Some(path) => format!(
                "The last good checkpoint is {}; lower train.learning_rate in the pipeline (or \
                 raise loader.batch_size), or check the data, then continue with --resume.",
                path.display()
            ),
            None => self.early_divergence_hint(),
        };
        TrainError::Diverged {
            step,
            epoch: self.state.epoch + 1,
            what,
            hint,
        }
    }

    /// What to change when a run diverges before its first checkpoint. That is what the
    /// paper's initialisation (biases of 1 behind wide layers) does on datasets with few
    /// classes, where the first steps' gradients all point the same way; a warm-up or
    /// Caffe's smaller biases keep the rest of the recipe.
    fn early_divergence_hint(&self) -> String {
        let (train, model) = (&self.pipeline.train, &self.pipeline.model);
        let warmup = WARMUP_HINT.max(2.0 * train.lr_warmup_epochs);
        let mut hint = "No checkpoint was written yet; ".to_string();
        // Caffe's biases are what let such a run learn; a warm-up only gets it past its start.
        if model.init_bias > 0.1 {
            hint += &format!(
                "start the biases at model.init_bias = 0.1 (Caffe's choice) instead of {}, ",
                model.init_bias
            );
        }
        hint += &format!(
            "lower train.learning_rate, or warm it up from a small fraction with \
             train.lr_warmup_epochs = {warmup}"
        );
        hint + "."
    }

    fn epoch_finished(&self) -> bool {
        let batch = self.pipeline.loader.batch_size;
        let left = self.train_images - self.state.sample;
        left == 0 || (self.pipeline.loader.drop_last && left < batch)
    }

    fn checkpoint_due(&self) -> bool {
        let every = self.pipeline.train.checkpoint_every;
        every > 0 && self.state.step.is_multiple_of(every)
    }

    /// Validation, the learning-rate rule, the metrics row and a checkpoint.
    fn finish_epoch(&mut self) -> Result<EpochRecord, TrainError> {
        self.account_time();
        let val = self.validate()?;
        if !val.loss().is_finite() {
            let what = format!("the validation loss is {}", val.loss());
            return Err(self.diverged(self.state.step, what));
        }
        let record = EpochRecord {
            epoch: self.state.epoch + 1,
            step: self.state.step,
            // During warm-up the rate changes every step: the epoch's last one is recorded.
            learning_rate: self.learning_rate(self.state.step.saturating_sub(1)),
            train: self.state.epoch_tally,
            val,
            seconds: self.state.epoch_seconds,
        };
        self.state
            .schedule
            .observe(val.top1_error(), &self.pipeline.train);
        self.state.epoch += 1;
        self.state.sample = 0;
        self.state.epoch_tally = Tally::default();
        self.state.epoch_seconds = 0.0;
        if let Some(logs) = &mut self.logs {
            logs.metrics.append(&record.row())?;
        }
        // Also restarts the step clock: validation and saving are not the next step's time.
        self.save_checkpoint(None)?;
        self.last_epoch = Some(record.clone());
        Ok(record)
    }

    /// Centre-crop top-1/top-5 error and loss on the validation split (each rank its share of
    /// the images, the counts summed).
    fn validate(&mut self) -> Result<Tally, TrainError> {
        let mut options = LoaderOptions::eval(&self.pipeline.loader, Output::U8, Mode::Center);
        (options.rank, options.world_size) = (self.world().rank, self.world().size);
        let loader = Loader::start(self.val_data.clone(), options)?;
        let classes = self.model.spec.classes;
        let mut tally = Tally::default();
        for batch in loader {
            let batch = batch?;
            let logits = self
                .engine
                .logits(&self.dev, &mut self.model, &batch)
                .map_err(|e| self.engine_failed(e))?;
            let loss = crate::engine::metrics::cross_entropy(&logits, classes, &batch.labels);
            tally.add(&logits, classes, &batch.labels, loss);
            self.beat();
        }
        if let Some(replicas) = &mut self.replicas {
            tally = replicas.sum_tally(tally, "summing the validation counts")?;
        }
        if tally.images != self.val_data.len() as u64 {
            return Err(TrainError::ShortStream {
                split: Split::Val,
                got: tally.images,
                expected: self.val_data.len() as u64,
            });
        }
        Ok(tally)
    }

    /// Adds the time since the last call to the epoch's and the run's training time.
    fn account_time(&mut self) {
        let seconds = self.clock.elapsed().as_secs_f64();
        self.state.epoch_seconds += seconds;
        self.state.elapsed_seconds += seconds;
        self.clock = Instant::now();
    }

    /// Saves the current state. The weights must be good: finite, and (when `last_batch` is
    /// given, i.e. between validations) giving a sane loss on the batch that produced them,
    /// which no loss has judged yet.
    ///
    /// In a data-parallel job every rank calls this at the same step: the probe's loss is the
    /// whole batch's, the ranks' weights are compared, rank 0 writes, and the others wait for
    /// it (hearing from it if it failed).
    fn save_checkpoint(&mut self, last_batch: Option<&Batch>) -> Result<PathBuf, TrainError> {
        if let Some(batch) = last_batch {
            let classes = self.model.spec.classes;
            let mut probe = Tally::default();
            if !batch.is_empty() {
                let logits = self
                    .engine
                    .logits(&self.dev, &mut self.model, batch)
                    .map_err(|e| self.engine_failed(e))?;
                let loss = crate::engine::metrics::cross_entropy(&logits, classes, &batch.labels);
                probe.add(&logits, classes, &batch.labels, loss);
            }
            if let Some(replicas) = &mut self.replicas {
                probe = replicas.sum_tally(probe, "checking the weights before saving")?;
            }
            let loss = probe.loss();
            if loss.is_nan() || loss > self.guard.limit {
                let what = format!(
                    "the weights about to be saved give a loss of {loss:.4e} on the last batch"
                );
                return Err(self.diverged(self.state.step, what));
            }
        }
        self.compare_replicas()?;
        self.account_time();
        let path = self.run.checkpoint(self.state.step);
        if self.is_root() {
            self.write_checkpoint(&path)?;
        }
        if let Some(replicas) = &mut self.replicas {
            replicas
                .control
                .barrier("waiting for rank 0 to save a checkpoint")?;
        }
        self.latest_checkpoint = Some(path.clone());
        // Saving is not training time, nor part of the next step's.
        self.clock = Instant::now();
        self.last_step_end = self.clock;
        self.beat();
        Ok(path)
    }

    /// Writes the current state to `path` (rank 0's part of `save_checkpoint`).
    fn write_checkpoint(&mut self, path: &Path) -> Result<(), TrainError> {
        self.engine
            .export(&mut self.model, &mut self.sgd)
            .map_err(|e| self.engine_failed(e))?;
        let saved = state::save(
            path,
            &self.model,
            &self.sgd,
            &self.state,
            &self.pipeline,
            &self.classes,
            &self.dataset,
        );
        // Weights that are no longer numbers must never become a "last good checkpoint".
        if let Err(StateError::Checkpoint(CheckpointError::NonFinite {
            name, index, value, ..
        })) = &saved
        {
            let what = format!("{name}[{index}] became {value}");
            return Err(self.diverged(self.state.step, what));
        }
        saved?;
        self.run
            .prune(self.pipeline.train.keep_checkpoints)
            .map_err(io_error(&self.run.checkpoints()))
    }

    fn outcome(&self, interrupted: bool, checkpoint: Option<PathBuf>) -> Outcome {
        Outcome {
            steps: self.state.step,
            epochs_done: self.state.epoch,
            epochs: self.pipeline.train.epochs,
            last_epoch: self.last_epoch.clone(),
            interrupted,
            checkpoint,
            seconds: self.state.elapsed_seconds,
            ranks: self.world().size,
            replays: self.engine.replay_stats(),
        }
    }
}

impl EpochRecord {
    fn summary_line(&self, epochs: u64) -> String {
        format!(
            "epoch {}/{epochs}: train loss {:.4}, top-1 error {:.1}% | val loss {:.4}, \
             top-1 error {:.1}%, top-5 error {:.1}% | lr {} | {:.0} images/s, {:.1} s",
            self.epoch,
            self.train.loss(),
            100.0 * self.train.top1_error(),
            self.val.loss(),
            100.0 * self.val.top1_error(),
            100.0 * self.val.top5_error(),
            self.learning_rate,
            self.train.images as f64 / self.seconds.max(1e-9),
            self.seconds,
        )
    }
}

/// A run's settings may change on resume except those that define what is being trained.
fn check_resumable(
    saved: &Pipeline,
    now: &Pipeline,
    run: &RunDir,
    pipeline_given: bool,
) -> Result<(), TrainError> {
    let changed = |section: &str, compared: &Pipeline| {
        let advice = if pipeline_given {
            "omit --pipeline to resume with the run's own settings".to_string()
        } else {
            format!(
                "{} was edited after the checkpoint was written: undo the edit, or start a new \
                 --run",
                run.pipeline().display()
            )
        };
        Err(TrainError::PipelineChanged {
            run: run.root.clone(),
            section: section.into(),
            differences: saved.differences(compared, &[section]).join(", "),
            advice,
        })
    };
    if saved.model != now.model {
        return changed("model", now);
    }
    // Threads and prefetch change speed, not the stream.
    let mut compared = now.clone();
    compared.loader.threads = saved.loader.threads;
    compared.loader.prefetch = saved.loader.prefetch;
    if saved.loader != compared.loader {
        return changed("loader", &compared);
    }
    let train = &mut compared.train;
    train.epochs = saved.train.epochs;
    train.checkpoint_every = saved.train.checkpoint_every;
    train.keep_checkpoints = saved.train.keep_checkpoints;
    if saved.train != compared.train {
        return changed("train", &compared);
    }
    Ok(())
}

/// Per-epoch progress (the shared `Meter`), with the smoothed loss, the learning rate and the
/// training rate as its message.
struct EpochBar {
    mode: Progress,
    meter: Option<Meter>,
    steps_per_epoch: u64,
    batch_size: u64,
    epoch_start_step: u64,
    /// Step at which this epoch's meter started (for images/s).
    session_start_step: u64,
    started: Instant,
    smoothed_loss: Option<f32>,
}

impl EpochBar {
    fn new(mode: Progress, steps_per_epoch: u64, batch_size: usize) -> Self {
        Self {
            mode,
            meter: None,
            steps_per_epoch,
            batch_size: batch_size as u64,
            epoch_start_step: 0,
            session_start_step: 0,
            started: Instant::now(),
            smoothed_loss: None,
        }
    }

    fn start_epoch(&mut self, state: &TrainState, epochs: u64) {
        let done_in_epoch = state.sample as u64 / self.batch_size;
        self.epoch_start_step = state.step - done_in_epoch.min(state.step);
        self.session_start_step = state.step;
        let prefix = format!("epoch {}/{epochs}", state.epoch + 1);
        self.meter = Some(Meter::new(
            self.mode,
            &prefix,
            "steps",
            self.steps_per_epoch,
            done_in_epoch,
        ));
        self.started = Instant::now();
    }

    fn step(&mut self, state: &TrainState, loss: f32, lr: f64) {
        let smoothed = match self.smoothed_loss {
            Some(s) => 0.95 * s + 0.05 * loss,
            None => loss,
        };
        self.smoothed_loss = Some(smoothed);
        let in_epoch = state.step.saturating_sub(self.epoch_start_step);
        let images = (state.step - self.session_start_step) * self.batch_size;
        let images_per_sec = images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(meter) = &mut self.meter {
            meter.set_message(format!(
                "loss {smoothed:.4}, lr {lr}, {images_per_sec:.0} images/s"
            ));
            meter.set_position(in_epoch);
        }
    }

    fn finish_epoch(&mut self) {
        if let Some(meter) = self.meter.take() {
            meter.finish();
        }
    }

    fn println(&self, line: &str) {
        if self.mode != Progress::Off {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(batch_size: usize, classes: usize) -> DivergenceGuard {
        DivergenceGuard::new(&crate::config::TrainConfig::default(), batch_size, classes)
    }

    #[test]
    fn the_guard_stops_a_batch_of_one_at_a_huge_but_finite_loss() {
        // The limit is ten times a uniform guess: 10 · ln(1000) ≈ 69.
        let mut g = guard(1, 1000);
        assert!(g.observe(6.9).is_none());
        let what = g.observe(4e31).expect("4e31 is divergence");
        assert!(what.contains("mean training loss"), "{what}");
    }

    #[test]
    fn one_bad_image_in_a_window_of_many_is_not_divergence() {
        // Batches of one are averaged over 256 steps, so a single confidently wrong image
        // (loss 100) among ordinary ones does not stop a run.
        let mut g = guard(1, 1000);
        for _ in 0..255 {
            assert!(g.observe(5.0).is_none());
        }
        assert!(g.observe(100.0).is_none());
        assert_eq!(g.window, 256);
        // With batches of 128 the window is two steps.
        assert_eq!(guard(128, 1000).window, 2);
    }

    #[test]
    fn nan_and_infinity_are_divergence_at_once() {
        for bad in [f32::NAN, f32::INFINITY] {
            assert!(guard(128, 10).observe(bad).is_some());
        }
    }

    #[test]
    fn max_loss_overrides_the_default_limit() {
        let config = crate::config::TrainConfig {
            max_loss: 3.0,
            ..Default::default()
        };
        let mut g = DivergenceGuard::new(&config, 128, 1000);
        assert!(g.observe(2.9).is_none());
        assert!(g.observe(3.5).is_some());
    }
}
