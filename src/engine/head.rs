//! The fully connected part of AlexNet on `Kernels`: FC6 and FC7 with ReLU, each behind
//! dropout, and FC8; softmax cross-entropy; their backward pass and SGD — the rest of a
//! training step once the convolutional part (`fast`) has produced the flattened features.
//!
//! Weights keep dfdx's layout, `(inputs, outputs)`, so that a layer is `y = x · W + b` in
//! row-major matrices and checkpoints cross between the two engines by plain copies.
//! Dropout masks are drawn on the device from the same counter-based hash as the dfdx path's
//! (`seed::dropout_mask`), keyed by the run's seed, the step and the layer.

use dfdx::prelude::Storage;

use super::metrics::Tally;
use super::params::Params;
use crate::kernels::{Buf, DropoutMask, KernelResult, Kernels, LayerGradients, MatMul, Planes};
use crate::model::{dropout_key, Affine, AlexNet, CONV_BLOCKS};

/// Which masks a forward pass draws: training step `step` of a run seeded with `seed`, for the
/// rows from `first_image` on of the step's whole batch (0 on one process; where a rank's
/// slice starts in a data-parallel job, so that every image gets the mask it would get in one
/// process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey {
    pub seed: u64,
    pub step: u64,
    pub first_image: u64,
}

/// One fully connected layer's parameters, their momentum and their last gradients.
struct Dense<D: Storage<f32>> {
    inputs: usize,
    outputs: usize,
    /// FC6 and FC7 end in a ReLU; FC8 gives the logits.
    relu: bool,
    /// The dropout mask in front of the layer, as `dropout_key` numbers it (6, 7); FC8 has none.
    dropout_layer: Option<u64>,
    params: Params<D>,
}

/// One layer's activations for one batch and their gradients, `(batch, units)` row-major.
struct DenseActivations<D: Storage<f32>> {
    /// The dropout mask of the layer's input, and the input times it (absent when the layer
    /// has no dropout, or a pass runs without: the layer then reads its input directly).
    mask: Option<Buf<D>>,
    dropped: Option<Buf<D>>,
    /// After bias (and ReLU).
    out: Buf<D>,
    d_out: Buf<D>,
    /// The gradient of `dropped`, before the mask routes it to the input.
    d_dropped: Option<Buf<D>>,
}

/// What one batch size needs: each layer's activations, the rows' losses and label ranks.
pub struct HeadActivations<D: Storage<f32>> {
    batch: usize,
    layers: Vec<DenseActivations<D>>,
    row_stats: Buf<D>,
    /// Whether the latest forward pass applied dropout (the backward pass follows it).
    dropout: bool,
}

impl<D: Storage<f32>> HeadActivations<D> {
    /// Whether the latest forward pass applies dropout.
    pub fn dropout(&self) -> bool {
        self.dropout
    }
}

/// The fully connected part's parameters.
pub struct Head<D: Storage<f32>> {
    layers: Vec<Dense<D>>,
    dropout: f64,
}

impl<D: Storage<f32>> Head<D> {
    /// Takes over FC6 to FC8 of `model` and their momentum (`None` for zeros).
    pub fn new<K: Kernels<D>>(
        k: &mut K,
        model: &AlexNet<f32, D>,
        velocity: Option<&[Affine<f32, D>; 8]>,
    ) -> KernelResult<Self>
    where
        D: dfdx::prelude::Device<f32>,
    {
        let layers = model.layers();
        let mut dense = Vec::with_capacity(3);
        for (i, layer) in (CONV_BLOCKS..8).zip([Some(6), Some(7), None]) {
            let affine = layers[i].1;
            let (inputs, outputs) = (affine.inputs(), affine.outputs());
            let velocity = velocity.map(|v| (v[i].weight.as_vec(), v[i].bias.as_vec()));
            let velocity = velocity.as_ref().map(|(w, b)| (&w[..], &b[..]));
            let (weight, bias) = (affine.weight.as_vec(), affine.bias.as_vec());
            dense.push(Dense {
                inputs,
                outputs,
                relu: layer.is_some(),
                dropout_layer: layer,
                params: Params::upload(k, &weight, &bias, velocity)?,
            });
        }
        Ok(Self {
            layers: dense,
            dropout: model.spec.config.dropout as f64,
        })
    }

    /// Writes the parameters and their momentum back into `model` and `velocity`.
    pub fn export<K: Kernels<D>>(
        &self,
        k: &mut K,
        model: &mut AlexNet<f32, D>,
        velocity: &mut [Affine<f32, D>; 8],
    ) -> KernelResult
    where
        D: dfdx::prelude::Device<f32>,
    {
        let layers = model.layers_mut();
        for ((i, affine), p) in layers
            .into_iter()
            .enumerate()
            .skip(CONV_BLOCKS)
            .zip(&self.layers)
        {
            affine
                .weight
                .copy_from(&k.download_prefix(&p.params.weight, p.inputs * p.outputs)?);
            affine
                .bias
                .copy_from(&k.download_prefix(&p.params.bias, p.outputs)?);
            let v = &mut velocity[i];
            v.weight
                .copy_from(&k.download_prefix(&p.params.weight_velocity, p.inputs * p.outputs)?);
            v.bias
                .copy_from(&k.download_prefix(&p.params.bias_velocity, p.outputs)?);
        }
        Ok(())
    }

    /// The number of classes (FC8's outputs).
    pub fn classes(&self) -> usize {
        self.layers[2].outputs
    }

    /// The features' width (FC6's inputs).
    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// Bytes of activations and gradients a batch of `batch` rows needs.
    pub fn activation_bytes(&self, batch: usize) -> usize {
        head_activation_bytes(self.inputs(), self.layers[0].outputs, self.classes(), batch)
    }

    /// The buffers for `batch` rows.
    pub fn allocate<K: Kernels<D>>(
        &self,
        k: &mut K,
        batch: usize,
    ) -> KernelResult<HeadActivations<D>> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for p in &self.layers {
            let with_dropout = p.dropout_layer.is_some() && self.dropout > 0.0;
            let input = batch * p.inputs;
            let optional = |k: &mut K| -> KernelResult<Option<Buf<D>>> {
                with_dropout.then(|| k.alloc(input)).transpose()
            };
            layers.push(DenseActivations {
                mask: optional(k)?,
                dropped: optional(k)?,
                out: k.alloc(batch * p.outputs)?,
                d_out: k.alloc(batch * p.outputs)?,
                d_dropped: optional(k)?,
            });
        }
        Ok(HeadActivations {
            batch,
            layers,
            row_stats: k.alloc(2 * batch.max(1))?,
            dropout: false,
        })
    }

    /// Draws the dropout masks of `dropout` (none to evaluate) for the next `forward`: before
    /// it, so that the forward pass itself is the same launches at every step (`replay`).
    pub fn draw_masks<K: Kernels<D>>(
        &self,
        k: &mut K,
        a: &mut HeadActivations<D>,
        dropout: Option<DropoutKey>,
    ) -> KernelResult {
        let keep = (1.0 / (1.0 - self.dropout)) as f32;
        a.dropout = dropout.is_some() && self.dropout > 0.0;
        for (p, l) in self.layers.iter().zip(&mut a.layers) {
            if let (true, Some(key), Some(layer), Some(mask)) =
                (a.dropout, dropout, p.dropout_layer, &mut l.mask)
            {
                let draw = DropoutMask {
                    key: dropout_key(key.seed, key.step, layer),
                    first_image: key.first_image,
                    rate: self.dropout,
                    keep,
                    images: a.batch,
                    units: p.inputs,
                };
                k.dropout_mask(&draw, mask)?;
            }
        }
        Ok(())
    }

    /// FC6 to FC8 from `features` (`(batch, inputs)`), behind the masks of the latest
    /// `draw_masks`; the logits stay in `a` (see `logits`).
    pub fn forward<K: Kernels<D>>(
        &self,
        k: &mut K,
        a: &mut HeadActivations<D>,
        features: &Buf<D>,
        observe: &mut dyn FnMut(&str),
    ) -> KernelResult {
        let batch = a.batch;
        for (i, p) in self.layers.iter().enumerate() {
            let (below, this) = a.layers.split_at_mut(i);
            let l = &mut this[0];
            let mut x = below.last().map_or(features, |b| &b.out);
            if let (true, Some(mask), Some(dropped)) = (a.dropout, &l.mask, &mut l.dropped) {
                k.multiply(batch * p.inputs, x, mask, dropped)?; //         [B, inputs]
                x = dropped;
            }
            let mm = MatMul::dense_forward(batch, p.inputs, p.outputs);
            k.matmul(&mm, x, &p.params.weight, &mut l.out)?; //            [B, outputs]
            if p.relu {
                k.bias_relu(&rows(batch, p.outputs), &mut l.out, &p.params.bias)?;
            } else {
                k.bias_add(batch, p.outputs, &mut l.out, &p.params.bias)?;
            }
            observe(NAMES[i]);
        }
        Ok(())
    }

    /// The latest forward pass's logits, `(batch, classes)`.
    pub fn logits<'a>(&self, a: &'a HeadActivations<D>) -> &'a Buf<D> {
        &a.layers[self.layers.len() - 1].out
    }

    /// Softmax cross-entropy of the latest logits against `labels`: the batch's counts — the
    /// rows' losses summed in f64 on the host, in row order, and top-1/top-5 hits from the
    /// label ranks the kernel counted — leaving for `backward` the gradient of the mean loss
    /// over `mean_over` rows (see `Kernels::softmax_cross_entropy`). Only `2 × batch` numbers
    /// come back from the device.
    pub fn loss<K: Kernels<D>>(
        &self,
        k: &mut K,
        a: &mut HeadActivations<D>,
        labels: &[u32],
        mean_over: usize,
    ) -> KernelResult<Tally> {
        let batch = a.batch;
        let classes = self.classes();
        let last = a.layers.last_mut().expect("three layers");
        k.softmax_cross_entropy(
            batch,
            mean_over,
            classes,
            &last.out,
            labels,
            &mut a.row_stats,
            &mut last.d_out,
        )?;
        let stats = k.download_prefix(&a.row_stats, 2 * batch)?;
        let (losses, above) = stats.split_at(batch);
        let loss_sum = losses.iter().map(|&l| l as f64).sum();
        Ok(Tally::of_ranks(above, loss_sum))
    }

    /// The backward pass of the latest `forward` and `loss`: every parameter's gradient, and
    /// the features' gradient into `d_features`. Each layer's gradients go to `sum` as soon as
    /// they are written (FC8 first; see `FastNet::backward_summed`).
    pub fn backward<K: Kernels<D>>(
        &mut self,
        k: &mut K,
        a: &mut HeadActivations<D>,
        features: &Buf<D>,
        d_features: &mut Buf<D>,
        sum: &mut dyn FnMut(LayerGradients<'_, D>) -> KernelResult,
        observe: &mut dyn FnMut(&str),
    ) -> KernelResult {
        let batch = a.batch;
        for (i, p) in self.layers.iter_mut().enumerate().rev() {
            let (below, this) = a.layers.split_at_mut(i);
            let l = &mut this[0];
            // The gradient before the bias and ReLU, in place, and the bias's.
            if p.relu {
                k.relu_bias_backward(
                    &rows(batch, p.outputs),
                    &l.out,
                    &mut l.d_out,
                    &mut p.params.bias_grad,
                )?;
            } else {
                k.bias_backward(batch, p.outputs, &l.d_out, &mut p.params.bias_grad)?;
            }
            // The layer's input and where its gradient goes: the previous layer's output, or
            // the features.
            let (input, d_input) = match below.last_mut() {
                Some(b) => (&b.out, &mut b.d_out),
                None => (features, &mut *d_features),
            };
            // What the layer read: its input, or the input times the mask.
            let dropped = match (a.dropout, &l.dropped) {
                (true, Some(dropped)) => Some(dropped),
                _ => None,
            };
            let x = dropped.unwrap_or(input);
            let weight = MatMul::dense_weight_gradient(batch, p.inputs, p.outputs);
            k.matmul(&weight, x, &l.d_out, &mut p.params.weight_grad)?;
            sum(p.params.gradients())?;
            // The input's gradient, through the mask when there is one.
            let data = MatMul::dense_input_gradient(batch, p.inputs, p.outputs);
            match (dropped.is_some(), &l.mask, &mut l.d_dropped) {
                (true, Some(mask), Some(d_dropped)) => {
                    k.matmul(&data, &l.d_out, &p.params.weight, d_dropped)?;
                    k.multiply(batch * p.inputs, d_dropped, mask, d_input)?;
                }
                _ => k.matmul(&data, &l.d_out, &p.params.weight, d_input)?,
            }
            observe(NAMES[i]);
        }
        Ok(())
    }

    /// The layers' parameters, FC8 first (the backward pass's order).
    pub fn params_backward(&mut self) -> impl Iterator<Item = &mut Params<D>> {
        self.layers.iter_mut().rev().map(|p| &mut p.params)
    }

    /// The layers' parameters, FC6 first.
    pub fn params(&self) -> impl Iterator<Item = &Params<D>> {
        self.layers.iter().map(|p| &p.params)
    }

    /// The layers' parameters, FC6 first, for the SGD update.
    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Params<D>> {
        self.layers.iter_mut().map(|p| &mut p.params)
    }

    /// The gradients of the latest `backward`, in dfdx's layouts (weight, bias per layer).
    pub fn gradients<K: Kernels<D>>(&self, k: &mut K) -> KernelResult<Vec<(Vec<f32>, Vec<f32>)>> {
        self.layers
            .iter()
            .map(|p| {
                Ok((
                    k.download_prefix(&p.params.weight_grad, p.inputs * p.outputs)?,
                    k.download_prefix(&p.params.bias_grad, p.outputs)?,
                ))
            })
            .collect()
    }

    /// Host copies of the latest step's activations, masks, parameters and gradients.
    pub fn record<K: Kernels<D>>(
        &self,
        k: &mut K,
        a: &HeadActivations<D>,
    ) -> KernelResult<Vec<RecordedDense>> {
        let batch = a.batch;
        self.layers
            .iter()
            .zip(&a.layers)
            .map(|(p, l)| {
                let input = batch * p.inputs;
                let mask = match (a.dropout, &l.mask) {
                    (true, Some(m)) => Some(k.download_prefix(m, input)?),
                    _ => None,
                };
                Ok(RecordedDense {
                    inputs: p.inputs,
                    outputs: p.outputs,
                    relu: p.relu,
                    mask,
                    out: k.download_prefix(&l.out, batch * p.outputs)?,
                    weight: k.download_prefix(&p.params.weight, p.inputs * p.outputs)?,
                    weight_grad: k.download_prefix(&p.params.weight_grad, p.inputs * p.outputs)?,
                    bias_grad: k.download_prefix(&p.params.bias_grad, p.outputs)?,
                    weight_velocity: k
                        .download_prefix(&p.params.weight_velocity, p.inputs * p.outputs)?,
                })
            })
            .collect()
    }
}

/// Host copies of one fully connected layer's step (see `Head::record`).
pub struct RecordedDense {
    pub inputs: usize,
    pub outputs: usize,
    pub relu: bool,
    /// The dropout mask of the layer's input, when the step applied one.
    pub mask: Option<Vec<f32>>,
    /// After bias (and ReLU), `(batch, outputs)`.
    pub out: Vec<f32>,
    /// `(inputs, outputs)`.
    pub weight: Vec<f32>,
    pub weight_grad: Vec<f32>,
    pub bias_grad: Vec<f32>,
    pub weight_velocity: Vec<f32>,
}

/// The stage names of the three layers, for profiles.
const NAMES: [&str; 3] = ["fc6", "fc7", "fc8"];

/// A `(rows, units)` matrix as planes of one pixel per channel (the bias and ReLU kernels').
fn rows(batch: usize, units: usize) -> Planes {
    Planes {
        batch,
        channels: units,
        pixels: 1,
    }
}

/// Bytes of the fully connected part's activations and gradients for `batch` rows of
/// `inputs` features, `units` hidden units and `classes` outputs (dropout buffers included).
pub fn head_activation_bytes(inputs: usize, units: usize, classes: usize, batch: usize) -> usize {
    // FC6: mask, dropped and its gradient on the inputs; out and its gradient. FC7 likewise on
    // `units`. FC8: logits and their gradient; the losses and label ranks.
    let fc6 = 3 * inputs + 2 * units;
    let fc7 = 3 * units + 2 * units;
    let fc8 = 2 * classes;
    (batch * (fc6 + fc7 + fc8) + 2 * batch) * std::mem::size_of::<f32>()
}
