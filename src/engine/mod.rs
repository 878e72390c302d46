//! One step of the network — training, validation, evaluation, the checkpoint probe, the
//! benchmark and the check all go through `StepEngine` — on one of two engines:
//!
//! - `dfdx`: the whole network on dfdx's ops and autodiff (the reference);
//! - `fast` (the default): the whole step on the project's own kernels (`FastNet` over
//!   `kernels::Kernels`): input normalisation, the convolutional part (`fast`), FC6 to FC8
//!   with dropout, softmax cross-entropy, the backward pass and SGD (`head`), on buffers it
//!   owns — weights, momentum, activations. Only the loss and the logits come back to the
//!   host. The model and optimiser that dfdx holds are brought up to date from them before
//!   anything reads them (`export`: checkpoints, the dfdx path).
//!
//! Everything except the kernels — parameter ownership, SGD, checkpoints and resume — is the
//! same code on every device, so the CPU tests exercise it with the host kernels.

pub mod costs;
pub mod fast;
pub mod head;
pub mod input;
pub mod loss;
pub mod metrics;
pub mod params;
pub mod replicas;
pub mod schedule;
pub mod sgd;

use dfdx::prelude::*;

use crate::config::{ComputeConfig, LoaderConfig, Precision};
use crate::device::FastDevice;
use crate::kernels::{InputBatch, KernelError, Kernels, LayerGradients};
use crate::loader::{Batch, LoaderData};
use crate::model::{AlexNet, DropoutMasks};
use fast::{FastError, FastNet};
use head::DropoutKey;
use input::{batch_bytes, InputStage, MeanRowTable};
use loss::mean_cross_entropy;
use metrics::Tally;
use replicas::{Alone, StepSync};
use sgd::Sgd;

/// Why a step could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Fast(#[from] FastError),
    #[error(
        "the dfdx engine trains in one process; a data-parallel job runs on the fast engine \
         (compute.engine = \"fast\" or \"auto\", or --engine fast)"
    )]
    DfdxAlone,
    #[error(
        "compute.precision = \"bf16\" runs on the fast engine; the dfdx engine computes in f32 \
         only: set compute.engine = \"fast\" or \"auto\" (--engine fast), or another precision \
         (--precision tf32)"
    )]
    DfdxIsF32,
}

impl From<crate::dist::DistError> for EngineError {
    fn from(e: crate::dist::DistError) -> Self {
        Self::Fast(e.into())
    }
}

impl From<KernelError> for EngineError {
    fn from(e: KernelError) -> Self {
        Self::Fast(e.into())
    }
}

/// The phases of a step, in order (a profile adds its stages' times per phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Input,
    Forward,
    Backward,
    Update,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Input => "1 input",
            Phase::Forward => "2 forward+loss",
            Phase::Backward => "3 backward",
            Phase::Update => "4 sgd update",
        }
    }
}

/// One stage of a step, as a profile reports it: its phase, and what ran (`"conv1 relu"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub phase: Phase,
    pub what: String,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let number = self.phase as usize + 1;
        let name = match self.phase {
            Phase::Input => "input",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Update => "update",
        };
        write!(f, "{number} {name} {}", self.what)
    }
}

/// Called after each stage of a step (a profile synchronises the device in it).
pub type Observer<'a> = &'a mut dyn FnMut(Stage);

fn stage(phase: Phase, what: impl Into<String>) -> Stage {
    Stage {
        phase,
        what: what.into(),
    }
}

pub enum StepEngine<D: FastDevice> {
    Dfdx(InputStage<D>),
    Fast(Box<Fast<D>>),
}

/// The fast path and the host half of its input stage.
pub struct Fast<D: FastDevice> {
    net: FastNet<D>,
    table: MeanRowTable,
    precision: Precision,
}

impl<D: FastDevice> StepEngine<D> {
    /// The engine `compute` asks for on `dev`. The fast path takes over the model's conv
    /// parameters and the optimiser's momentum (the model's copies are stale until `export`);
    /// without an optimiser (evaluation) it takes no steps.
    pub fn new(
        dev: &D,
        compute: &ComputeConfig,
        data: &LoaderData,
        loader: &LoaderConfig,
        model: &AlexNet<f32, D>,
        sgd: Option<&Sgd<D>>,
    ) -> Result<Self, EngineError> {
        if !compute.engine.is_fast() {
            // Running f32 where bf16 was asked for would change the numbers silently.
            if compute.precision == Precision::Bf16 {
                return Err(EngineError::DfdxIsF32);
            }
            return Ok(Self::Dfdx(InputStage::new(dev, data, loader)));
        }
        let mut kernels = dev.fast_kernels(compute)?;
        let (table, rows) = MeanRowTable::build(data, loader);
        kernels.set_mean_table(&rows, table.row_len())?;
        let (momentum, decay) = sgd.map_or((0.0, 0.0), |s| (s.momentum, s.weight_decay));
        let velocity = sgd.map(|s| &s.velocity);
        let net = FastNet::new(kernels, model, velocity, momentum, decay)?;
        Ok(Self::Fast(Box::new(Fast {
            net,
            table,
            precision: compute.precision,
        })))
    }

    /// How the fast path's passes were run so far (`None` unless `compute.graphs` is on).
    pub fn replay_stats(&self) -> Option<crate::kernels::replay::ReplayStats> {
        match self {
            Self::Dfdx(_) => None,
            Self::Fast(fast) => fast.net.replay_stats(),
        }
    }

    /// For the header line.
    pub fn describe(&self) -> String {
        match self {
            Self::Dfdx(_) => "dfdx ops".into(),
            Self::Fast(f) if D::GPU => format!("the fast path ({:?})", f.precision).to_lowercase(),
            Self::Fast(f) if f.precision == Precision::Bf16 => {
                "the fast path (host kernels, bf16 storage emulated)".into()
            }
            Self::Fast(_) => "the fast path (host kernels)".into(),
        }
    }

    /// One SGD step: forward with the dropout masks of `dropout` (none: no dropout),
    /// cross-entropy, backward, update. Returns the mean loss. With a non-finite loss the
    /// weights are left as they were.
    pub fn train_step(
        &mut self,
        dev: &D,
        model: &mut AlexNet<f32, D>,
        sgd: &mut Sgd<D>,
        batch: &Batch,
        dropout: Option<DropoutKey>,
        lr: f64,
    ) -> Result<f32, EngineError> {
        let whole = self.train_step_with(dev, model, sgd, batch, dropout, lr, &mut Alone, None)?;
        Ok(whole.loss() as f32)
    }

    /// `train_step`, calling `observe` after each stage (for profiling: the fast path then
    /// launches every kernel on its own, never replays a pass).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_observed(
        &mut self,
        dev: &D,
        model: &mut AlexNet<f32, D>,
        sgd: &mut Sgd<D>,
        batch: &Batch,
        dropout: Option<DropoutKey>,
        lr: f64,
        observe: Observer,
    ) -> Result<f32, EngineError> {
        let whole = self.train_step_with(
            dev,
            model,
            sgd,
            batch,
            dropout,
            lr,
            &mut Alone,
            Some(observe),
        )?;
        Ok(whole.loss() as f32)
    }

    /// One SGD step of a rank that meets the others through `sync` (`Alone` for one process),
    /// on its slice `batch` of the whole batch: forward and loss; the whole batch's counts
    /// from `sync`; then, if its loss is finite, backward — each layer's gradients summed
    /// through `sync` as they are written — and the update. Returns the whole batch's counts.
    /// `observe`, when given, is called after each stage.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_with(
        &mut self,
        dev: &D,
        model: &mut AlexNet<f32, D>,
        sgd: &mut Sgd<D>,
        batch: &Batch,
        dropout: Option<DropoutKey>,
        lr: f64,
        sync: &mut dyn StepSync<D>,
        mut observe: Option<Observer>,
    ) -> Result<Tally, EngineError> {
        let classes = model.spec.classes;
        let mut quiet = |_: Stage| {};
        match self {
            Self::Dfdx(_) if sync.ranks() > 1 => Err(EngineError::DfdxAlone),
            Self::Dfdx(input) => {
                let observe = observe.unwrap_or(&mut quiet);
                let masks = dropout.and_then(|key| {
                    DropoutMasks::draw(dev, &model.spec, key.seed, key.step, batch.len())
                });
                observe(stage(Phase::Input, "dropout masks"));
                let x = input.prepare(dev, batch);
                observe(stage(Phase::Input, "upload+normalise"));
                let labels = &batch.labels;
                let (value, logits) =
                    dfdx_train_step(model, sgd, x, labels, masks.as_ref(), lr, observe);
                let loss_sum = value as f64 * labels.len() as f64;
                Ok(Tally::of(&logits, classes, labels, loss_sum))
            }
            Self::Fast(fast) => {
                let (summed, profiled) = (sync.sums_gradients(), observe.is_some());
                // A rank's slice of a short last batch may be empty; it still takes part.
                let local = if batch.is_empty() {
                    Tally::default()
                } else {
                    fast.forward(batch, dropout, observe.as_deref_mut())?;
                    fast.net.tally(&batch.labels, batch.whole_batch)?
                };
                let observe = observe.unwrap_or(&mut quiet);
                observe(stage(Phase::Forward, "loss"));
                let whole = sync.counts(local)?;
                let net = &mut fast.net;
                if (whole.loss() as f32).is_finite() {
                    let mut sum = |grads: LayerGradients<'_, D>| sync.gradients(grads);
                    let mut backward = |name: &str| observe(stage(Phase::Backward, name));
                    match (batch.is_empty(), summed, profiled) {
                        (true, ..) => net.backward_empty(&mut sum)?,
                        // No sums between its layers, no profile: the pass the kernels may replay.
                        (false, false, false) => net.backward()?,
                        (false, ..) => net.backward_summed(&mut sum, &mut backward)?,
                    }
                    sync.finish()?;
                    net.sgd_step(lr)?;
                    observe(stage(Phase::Update, "sgd"));
                }
                Ok(whole)
            }
        }
    }

    /// Logits of `batch` without dropout (validation, evaluation, the checkpoint probe).
    pub fn logits(
        &mut self,
        dev: &D,
        model: &mut AlexNet<f32, D>,
        batch: &Batch,
    ) -> Result<Vec<f32>, EngineError> {
        match self {
            Self::Dfdx(input) => {
                let x = input.prepare(dev, batch);
                Ok(model.forward(x, None).as_vec())
            }
            Self::Fast(fast) => {
                fast.forward(batch, None, None)?;
                Ok(fast.net.logits()?)
            }
        }
    }

    /// A checksum of the weights the fast path holds, bit for bit (data-parallel jobs run on
    /// it alone).
    pub fn checksum(&mut self) -> Result<u64, EngineError> {
        match self {
            Self::Dfdx(_) => Err(EngineError::DfdxAlone),
            Self::Fast(fast) => Ok(fast.net.checksum()?),
        }
    }

    /// Brings the model's conv parameters and the optimiser's momentum up to date (before a
    /// checkpoint is written from them).
    pub fn export(
        &mut self,
        model: &mut AlexNet<f32, D>,
        sgd: &mut Sgd<D>,
    ) -> Result<(), EngineError> {
        if let Self::Fast(fast) = self {
            fast.net.export(model, &mut sgd.velocity)?;
        }
        Ok(())
    }
}

impl<D: FastDevice> Fast<D> {
    /// The whole forward pass of `batch` on the device, with the masks of `dropout`.
    fn forward(
        &mut self,
        batch: &Batch,
        dropout: Option<DropoutKey>,
        observe: Option<&mut (dyn FnMut(Stage) + '_)>,
    ) -> Result<(), FastError> {
        let rows = self.table.batch_rows(batch);
        let lighting = MeanRowTable::batch_lighting(batch);
        let input = InputBatch {
            pixels: batch_bytes(batch),
            mean_rows: &rows,
            lighting: &lighting,
            scale: self.table.scale,
            batch: batch.crops.len(),
            crop: self.table.crop(),
        };
        let Some(observe) = observe else {
            return self.net.forward(&input, dropout);
        };
        self.net.forward_observed(
            &input,
            dropout,
            Some(&mut |name| {
                let phase = match name {
                    fast::NORMALISE | fast::MASKS => Phase::Input,
                    _ => Phase::Forward,
                };
                observe(stage(phase, name))
            }),
        )
    }
}

/// One SGD step on dfdx's ops (see `StepEngine::train_step`).
pub fn dfdx_train_step<D: Device<f32>>(
    model: &mut AlexNet<f32, D>,
    sgd: &mut Sgd<D>,
    x: crate::model::Act<f32, D>,
    labels: &[u32],
    masks: Option<&DropoutMasks<f32, D>>,
    lr: f64,
    observe: Observer,
) -> (f32, Vec<f32>) {
    let mut forward_stage = |layer: &str, step: &str| {
        observe(stage(Phase::Forward, format!("{layer} {step}").trim_end()))
    };
    let logits = model.forward_observed(x.traced(Gradients::leaky()), masks, &mut forward_stage);
    let host_logits = logits.as_vec();
    let loss = mean_cross_entropy(logits, labels);
    let value = loss.as_vec()[0];
    observe(stage(Phase::Forward, "loss"));
    if value.is_finite() {
        let grads = loss.backward();
        observe(stage(Phase::Backward, "all layers"));
        sgd.step(model, &grads, lr);
        observe(stage(Phase::Update, "sgd"));
    }
    (value, host_logits)
}
