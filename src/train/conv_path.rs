//! Where the convolutional part of a step runs: on dfdx's ops (the reference), or on the fast
//! path's kernels (the default) with the fully connected part still in dfdx.
//! Training, validation, the checkpoint probe and the benchmark all step through here.

use dfdx::prelude::*;

use super::input::{batch_bytes, InputStage, MeanTable};
use super::sgd::Sgd;
use crate::config::{ComputeConfig, LoaderConfig, Precision};
use crate::fast::kernels::{InputBatch, Kernels};
use crate::fast::net::FastNet;
use crate::fast::{FastDevice, FastError};
use crate::loader::{Batch, LoaderData};
use crate::model::join::join;
use crate::model::{AlexNet, DropoutMasks, Mat};

pub enum ConvPath<D: FastDevice> {
    Dfdx(InputStage<D>),
    Fast(Box<Fast<D>>),
}

/// The fast path and the host half of its input stage.
pub struct Fast<D: FastDevice> {
    net: FastNet<D>,
    table: MeanTable,
    precision: Precision,
}

/// Stages reported to `observe` are numbered by phase: 1 input, 2 forward, 3 backward,
/// 4 update.
pub type Observer<'a> = &'a mut dyn FnMut(&str);

impl<D: FastDevice> ConvPath<D> {
    /// The path `compute` asks for on `dev`. The fast path takes over the model's conv
    /// parameters and the optimiser's momentum (the model's copies are stale until `export`);
    /// without an optimiser (evaluation) it takes no steps.
    pub fn new(
        dev: &D,
        compute: &ComputeConfig,
        data: &LoaderData,
        loader: &LoaderConfig,
        model: &AlexNet<f32, D>,
        sgd: Option<&Sgd<D>>,
    ) -> Result<Self, FastError> {
        if !compute.engine.is_fast() {
            return Ok(Self::Dfdx(InputStage::new(dev, data, loader)));
        }
        let mut kernels = dev.fast_kernels(compute)?;
        let (table, rows) = MeanTable::build(data, loader);
        kernels.set_mean_table(&rows, table.row_len());
        let (momentum, decay) = sgd.map_or((0.0, 0.0), |s| (s.momentum, s.weight_decay));
        let velocity = sgd.map(|s| &s.velocity);
        let net = FastNet::new(dev, kernels, model, velocity, momentum, decay);
        Ok(Self::Fast(Box::new(Fast {
            net,
            table,
            precision: compute.precision,
        })))
    }

    /// For the header line.
    pub fn describe(&self) -> String {
        match self {
            Self::Dfdx(_) => "dfdx ops".into(),
            Self::Fast(f) if D::GPU => format!("the fast path ({:?})", f.precision).to_lowercase(),
            Self::Fast(_) => "the fast path (host kernels)".into(),
        }
    }

    /// One SGD step (see `super::train_step`): returns the loss and the host logits.
    pub fn train_step(
        &mut self,
        dev: &D,
        model: &mut AlexNet<f32, D>,
        sgd: &mut Sgd<D>,
        batch: &Batch,
        masks: Option<&DropoutMasks<f32, D>>,
        lr: f64,
    ) -> (f32, Vec<f32>) {
        self.train_step_observed(dev, model, sgd, batch, masks, lr, &mut |_| {})
    }

    #[allow(clippy::too_many_arguments)]
    pub fn train_step_observed(
        &mut self,
        dev: &D,
        model: &mut AlexNet<f32, D>,
        sgd: &mut Sgd<D>,
        batch: &Batch,
        masks: Option<&DropoutMasks<f32, D>>,
        lr: f64,
        observe: Observer,
    ) -> (f32, Vec<f32>) {
        match self {
            Self::Dfdx(input) => {
                let x = input.prepare(dev, batch);
                observe("1 upload+normalise");
                super::train_step_observed(model, sgd, x, &batch.labels, masks, lr, observe)
            }
            Self::Fast(fast) => {
                let features =
                    fast.features(batch, &mut |stage| observe(&format!("2 forward {stage}")));
                let (traced, joined) = join(features);
                let logits = model.head(traced, masks);
                let host_logits = logits.as_vec();
                let loss = super::mean_cross_entropy(logits, &batch.labels);
                let value = loss.as_vec()[0];
                observe("2 forward fc6-fc8+loss");
                if value.is_finite() {
                    let mut grads = loss.backward();
                    observe("3 backward fc8-fc6");
                    fast.net
                        .backward_observed(&mut grads, &joined, &mut |stage| {
                            observe(&format!("3 backward {stage}"))
                        });
                    fast.net.sgd_step(lr);
                    sgd.step_layers(model, &grads, lr, 5..8);
                    observe("4 sgd update");
                }
                (value, host_logits)
            }
        }
    }

    /// Logits of `batch` without dropout (validation, evaluation, the checkpoint probe).
    pub fn logits(&mut self, dev: &D, model: &mut AlexNet<f32, D>, batch: &Batch) -> Vec<f32> {
        match self {
            Self::Dfdx(input) => {
                let x = input.prepare(dev, batch);
                model.forward(x, None).as_vec()
            }
            Self::Fast(fast) => {
                let features = fast.features(batch, &mut |_| {});
                model.head(features, None).as_vec()
            }
        }
    }

    /// Brings the model's conv parameters and the optimiser's momentum up to date (before a
    /// checkpoint is written from them).
    pub fn export(&mut self, model: &mut AlexNet<f32, D>, sgd: &mut Sgd<D>) {
        if let Self::Fast(fast) = self {
            fast.net.export(model, &mut sgd.velocity);
        }
    }
}

impl<D: FastDevice> Fast<D> {
    /// The convolutional part's output for `batch`, as dfdx's input to FC6.
    fn features(&mut self, batch: &Batch, observe: &mut dyn FnMut(&'static str)) -> Mat<f32, D> {
        let rows = self.table.batch_rows(batch);
        let lighting = MeanTable::batch_lighting(batch);
        let input = InputBatch {
            pixels: batch_bytes(batch),
            mean_rows: &rows,
            lighting: &lighting,
            scale: self.table.scale,
            batch: batch.crops.len(),
            crop: self.table.crop(),
        };
        self.net.forward_observed(&input, observe)
    }
}
