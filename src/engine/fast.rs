//! AlexNet on `Kernels`: the convolutional part here — its parameters and momentum, the
//! activations one training step keeps, the forward and backward passes and the SGD update —
//! and the fully connected part in `head`, which `FastNet` drives. Both passes are a loop over
//! the model's blocks (`Spec::blocks`), so the network's layout is written once, in `model`.
//!
//! A step's per-step values go into fixed buffers first — the input is normalised and the
//! dropout masks drawn before the forward pass, the loss's gradient written before the
//! backward pass — so that each pass is the same launches at every step of a batch size,
//! which the kernels may record once and replay (`kernels::replay`; not while a profile
//! observes the stages).

use dfdx::prelude::*;

use super::head::{DropoutKey, Head, HeadActivations, RecordedDense};
use super::metrics::Tally;
use super::params::Params;
use crate::config::Precision;
use crate::device::FastDevice;
use crate::kernels::replay::{ReplayKey, Stretch};
use crate::kernels::{
    Buf, ConvShape, InputBatch, KernelError, KernelResult, Kernels, LayerGradients, Layout,
    LrnParams, Memory, Planes, PoolShape, SgdStep,
};
use crate::model::checkpoint::{from_torch, to_torch};
use crate::model::{Affine, AlexNet, ConvBlock, Mat, TorchLayout, CONV_BLOCKS};

/// The stage name `forward_observed` reports for normalising the input.
pub const NORMALISE: &str = "normalise";
/// The stage name `forward_observed` reports for drawing the dropout masks (training only).
pub const MASKS: &str = "dropout masks";

/// Why a step on the fast path failed.
#[derive(Debug, thiserror::Error)]
pub enum FastError {
    #[error(
        "{device} ran out of memory at a batch of {batch} crops: the convolutional part's \
         activations and gradients need {} ({}); a batch of {suggested} should fit: for training, \
         set loader.batch_size = {suggested} in the pipeline (bench-train and evaluate take \
         --batch-size; evaluate's counts images of 10 crops each)",
        crate::kernels::size_text(*.needed), memory_text(*.memory)
    )]
    OutOfMemory {
        device: &'static str,
        batch: usize,
        needed: usize,
        memory: Option<Memory>,
        suggested: usize,
        #[source]
        source: Box<KernelError>,
    },
    #[error(
        "a kernel of the fast path failed: {0} (`alexnet check-fast` tests every kernel; \
         --engine dfdx runs without them)"
    )]
    Kernel(KernelError),
    /// The other ranks of a data-parallel job (not a kernel) failed.
    #[error(transparent)]
    Dist(Box<crate::dist::DistError>),
}

impl From<crate::dist::DistError> for FastError {
    fn from(e: crate::dist::DistError) -> Self {
        Self::Dist(Box::new(e))
    }
}

impl From<KernelError> for FastError {
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::Dist(e) => Self::Dist(e),
            e => Self::Kernel(e),
        }
    }
}

fn memory_text(memory: Option<Memory>) -> String {
    match memory {
        Some(m) => format!(
            "{} free of {} after releasing them",
            crate::kernels::size_text(m.free),
            crate::kernels::size_text(m.total)
        ),
        None => "free memory unknown".into(),
    }
}

/// One convolution's parameters, their momentum and their last gradients. Filters are OIHW.
struct ConvParams<D: Storage<f32>> {
    block: ConvBlock,
    params: Params<D>,
}

impl<D: Storage<f32>> ConvParams<D> {
    fn shape(&self, batch: usize) -> ConvShape {
        self.block.conv_shape(batch)
    }

    fn pool_shape(&self, batch: usize) -> Option<PoolShape> {
        self.block.pool_shape(batch)
    }

    fn layout(&self) -> TorchLayout {
        TorchLayout::Conv {
            kernel: self.block.conv.kernel,
            in_channels: self.block.in_channels,
        }
    }
}

/// One block's activations for one batch size (kept for the backward pass) and their
/// gradients, in the kernels' layout: `relu` and `lrn` are `[B, C_out, S_conv, S_conv]`,
/// `pool` `[B, C_out, S_out, S_out]` in NCHW's order of dimensions.
struct BlockActivations<D: Storage<f32>> {
    /// After bias and ReLU.
    relu: Buf<D>,
    /// After LRN, and LRN's denominators.
    lrn: Option<(Buf<D>, Buf<D>)>,
    /// After pooling, and each window's choice (see `Kernels::pool_forward`).
    pool: Option<(Buf<D>, Buf<D>)>,
    d_relu: Buf<D>,
    d_lrn: Option<Buf<D>>,
    d_pool: Option<Buf<D>>,
}

impl<D: Storage<f32>> BlockActivations<D> {
    /// What the next block reads: the last stage's output.
    fn output(&self) -> &Buf<D> {
        match (&self.pool, &self.lrn) {
            (Some((pool, _)), _) => pool,
            (None, Some((y, _))) => y,
            (None, None) => &self.relu,
        }
    }

    /// Where the next block's backward pass writes the gradient of `output`.
    fn d_output(&mut self) -> &mut Buf<D> {
        match (&mut self.d_pool, &mut self.d_lrn) {
            (Some(d), _) => d,
            (None, Some(d)) => d,
            (None, None) => &mut self.d_relu,
        }
    }
}

/// What one batch size needs.
struct Activations<D: Storage<f32>> {
    batch: usize,
    /// Which allocation these are (a replayed pass reads and writes these very buffers).
    id: u64,
    /// The normalised input, `[B, 3, S, S]`.
    input: Buf<D>,
    blocks: Vec<BlockActivations<D>>,
    /// pool3's output flattened channels-last, `[B, S_out²·C_out]` (FC6's input), and its
    /// gradient.
    features: Buf<D>,
    d_features: Buf<D>,
    head: HeadActivations<D>,
}

/// The network's parameters, and its forward and backward passes over one batch's
/// activations.
struct Network<D: Storage<f32>> {
    layers: [ConvParams<D>; CONV_BLOCKS],
    head: Head<D>,
    lrn: LrnParams,
}

/// The whole network on the fast path. See the module documentation of `engine`.
pub struct FastNet<D: FastDevice> {
    kernels: D::Kernels,
    net: Network<D>,
    /// Kept for the last two batch sizes (training's, and an evaluation pass's short last
    /// batch), newest last.
    activations: Vec<Activations<D>>,
    /// Activation buffers allocated so far (their ids).
    allocations: u64,
    momentum: f32,
    weight_decay: f32,
}

impl<D: FastDevice> FastNet<D> {
    /// Takes over the parameters of `model` and their momentum `velocity` (`None` for zeros,
    /// e.g. to evaluate).
    pub fn new(
        mut kernels: D::Kernels,
        model: &AlexNet<f32, D>,
        velocity: Option<&[Affine<f32, D>; 8]>,
        momentum: f64,
        weight_decay: f64,
    ) -> KernelResult<Self> {
        let spec = &model.spec;
        let layers = model.layers();
        let mut params = Vec::with_capacity(CONV_BLOCKS);
        for (i, block) in spec.blocks().into_iter().enumerate() {
            let (_, affine, layout) = layers[i];
            let (inputs, outputs) = (affine.inputs(), affine.outputs());
            let filters = |t: &Mat<f32, D>| to_torch(layout, &t.as_vec(), inputs, outputs);
            let velocity = velocity.map(|v| (filters(&v[i].weight), v[i].bias.as_vec()));
            let velocity = velocity.as_ref().map(|(w, b)| (&w[..], &b[..]));
            let weight = filters(&affine.weight);
            params.push(ConvParams {
                block,
                params: Params::upload(&mut kernels, &weight, &affine.bias.as_vec(), velocity)?,
            });
        }
        let cfg = &spec.config;
        let head = Head::new(&mut kernels, model, velocity)?;
        Ok(Self {
            kernels,
            net: Network {
                layers: params.try_into().unwrap_or_else(|_| unreachable!()),
                head,
                lrn: LrnParams {
                    size: cfg.lrn_size,
                    k: cfg.lrn_k,
                    alpha: cfg.lrn_alpha,
                    beta: cfg.lrn_beta,
                },
            },
            activations: Vec::new(),
            allocations: 0,
            momentum: momentum as f32,
            weight_decay: weight_decay as f32,
        })
    }

    pub fn kernels(&mut self) -> &mut D::Kernels {
        &mut self.kernels
    }

    /// How the passes were run so far (see `Kernels::replay_stats`).
    pub fn replay_stats(&self) -> Option<crate::kernels::replay::ReplayStats> {
        self.kernels.replay_stats()
    }

    /// Writes the parameters and their momentum back into `model` and `velocity` (dfdx's
    /// layouts), for checkpoints and for anything else that reads the model.
    pub fn export(
        &mut self,
        model: &mut AlexNet<f32, D>,
        velocity: &mut [Affine<f32, D>; 8],
    ) -> KernelResult {
        let layers = model.layers_mut();
        for (i, (affine, p)) in layers.into_iter().zip(&self.net.layers).enumerate() {
            let (inputs, outputs) = (affine.inputs(), affine.outputs());
            let k = &mut self.kernels;
            let filters = |k: &mut D::Kernels, buf: &Buf<D>| -> KernelResult<Vec<f32>> {
                Ok(from_torch(p.layout(), &k.download(buf)?, inputs, outputs))
            };
            affine.weight.copy_from(&filters(k, &p.params.weight)?);
            affine.bias.copy_from(&k.download(&p.params.bias)?);
            let v = &mut velocity[i];
            v.weight.copy_from(&filters(k, &p.params.weight_velocity)?);
            v.bias.copy_from(&k.download(&p.params.bias_velocity)?);
        }
        self.net.head.export(&mut self.kernels, model, velocity)
    }

    /// Bytes of activations and gradients a batch of `batch` crops needs.
    pub fn activation_bytes(&self, batch: usize) -> usize {
        let precision = self.kernels.precision();
        activation_bytes(
            &self.net.layers.each_ref().map(|p| p.block),
            batch,
            precision,
        ) + self.net.head.activation_bytes(batch)
    }

    /// The buffers for `batch`, allocated on first use. A batch whose activations cannot fit
    /// in the device's free memory is refused before anything is allocated, with a batch
    /// size that fits; an allocation that fails anyway gets the same error.
    fn activations(&mut self, batch: usize) -> Result<Activations<D>, FastError> {
        if let Some(at) = self.activations.iter().position(|a| a.batch == batch) {
            return Ok(self.activations.remove(at));
        }
        let needed = self.activation_bytes(batch);
        let too_big = |k: &mut D::Kernels| k.memory().is_some_and(|m| needed > m.free);
        if too_big(&mut self.kernels) {
            // The kept batch sizes' buffers would be given back for this one.
            self.activations.clear();
            if too_big(&mut self.kernels) {
                let source = KernelError::OutOfMemory {
                    device: device_name::<D>(),
                    call: "alloc (activations)",
                    bytes: needed,
                    memory: self.kernels.memory(),
                };
                return Err(self.out_of_memory(batch, source));
            }
        }
        match self.allocate(batch) {
            Ok(a) => Ok(a),
            Err(source) if source.is_out_of_memory() => {
                // Give the cached batch sizes back before measuring what is free.
                self.activations.clear();
                Err(self.out_of_memory(batch, source))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn allocate(&mut self, batch: usize) -> KernelResult<Activations<D>> {
        if self.activations.len() == 2 {
            self.activations.remove(0);
        }
        self.allocations += 1;
        let features = self.net.final_planes(batch).len();
        let k = &mut self.kernels;
        // Activations and their gradients in the precision's element type; LRN's
        // denominators and pooling's choices f32 (see `kernels`).
        let input = k.alloc_activation(self.net.layers[0].shape(batch).input_len())?;
        let mut blocks = Vec::with_capacity(CONV_BLOCKS);
        for p in &self.net.layers {
            let conv = p.shape(batch).output_len();
            let pool = p.pool_shape(batch).map(|s| s.output_len());
            let lrn = p.block.lrn;
            blocks.push(BlockActivations {
                relu: k.alloc_activation(conv)?,
                lrn: if lrn {
                    Some((k.alloc_activation(conv)?, k.alloc(conv)?))
                } else {
                    None
                },
                pool: match pool {
                    Some(n) => Some((k.alloc_activation(n)?, k.alloc(n)?)),
                    None => None,
                },
                d_relu: k.alloc_activation(conv)?,
                d_lrn: lrn.then(|| k.alloc_activation(conv)).transpose()?,
                d_pool: pool.map(|n| k.alloc_activation(n)).transpose()?,
            });
        }
        Ok(Activations {
            batch,
            id: self.allocations,
            input,
            blocks,
            features: k.alloc(features)?,
            d_features: k.alloc(features)?,
            head: self.net.head.allocate(k, batch)?,
        })
    }

    /// The error for a batch that did not fit, with a batch size that should.
    fn out_of_memory(&mut self, batch: usize, source: KernelError) -> FastError {
        let memory = self.kernels.memory();
        let needed = self.activation_bytes(batch);
        let per_image = self.activation_bytes(1).max(1);
        // The fully connected part and the allocator need room too: plan on 80% of what is free.
        let fits = memory.map_or(batch / 2, |m| m.free / 5 * 4 / per_image);
        let suggested = match fits.min(batch.saturating_sub(1)) {
            n if n >= 16 => n / 8 * 8,
            n => n.max(1),
        };
        FastError::OutOfMemory {
            device: device_name::<D>(),
            batch,
            needed,
            memory,
            suggested,
            source: Box::new(source),
        }
    }

    /// Normalises `input` on the device and runs the whole network, with the dropout masks of
    /// `dropout` (none to evaluate). The logits and everything the backward pass needs stay on
    /// the device (`loss`, `logits`, `backward`).
    pub fn forward(
        &mut self,
        input: &InputBatch,
        dropout: Option<DropoutKey>,
    ) -> Result<(), FastError> {
        self.forward_observed(input, dropout, None)
    }

    /// `forward`, calling `observe(stage)` after each stage when given (for profiling: every
    /// kernel is then launched on its own, never replayed).
    pub fn forward_observed(
        &mut self,
        input: &InputBatch,
        dropout: Option<DropoutKey>,
        observe: Option<&mut dyn FnMut(&str)>,
    ) -> Result<(), FastError> {
        let batch = input.batch;
        let mut a = self.activations(batch)?;
        let result = self.forward_into(&mut a, input, dropout, observe);
        // Kept even after a failure: the buffers are good for the next try.
        self.activations.push(a);
        Ok(result?)
    }

    fn forward_into(
        &mut self,
        a: &mut Activations<D>,
        input: &InputBatch,
        dropout: Option<DropoutKey>,
        mut observe: Option<&mut dyn FnMut(&str)>,
    ) -> KernelResult {
        let (k, net) = (&mut self.kernels, &self.net);
        k.normalize(input, &mut a.input)?; //                               [B, 3, S, S]
        if let Some(observe) = observe.as_deref_mut() {
            observe(NORMALISE);
        }
        net.head.draw_masks(k, &mut a.head, dropout)?;
        if let (Some(observe), true) = (observe.as_deref_mut(), a.head.dropout()) {
            observe(MASKS);
        }
        match observe {
            Some(observe) => net.forward(k, a, observe),
            None => {
                let key = a.key(Stretch::Forward);
                k.replayable(key, &mut |k| net.forward(k, a, &mut |_| {}))
            }
        }
    }

    /// The latest forward pass's mean softmax cross-entropy against `labels`; its gradient is
    /// kept for `backward`.
    pub fn loss(&mut self, labels: &[u32]) -> KernelResult<f32> {
        Ok(self.tally(labels, labels.len())?.loss() as f32)
    }

    /// The latest forward pass's counts against `labels` — summed loss, top-1 and top-5 hits,
    /// counted on the device — keeping for `backward` the gradient of the mean loss over
    /// `mean_over` rows (the whole batch, of which these rows are one rank's slice).
    pub fn tally(&mut self, labels: &[u32], mean_over: usize) -> KernelResult<Tally> {
        let Some(a) = self.activations.last_mut() else {
            return Err(no_step("loss"));
        };
        self.net
            .head
            .loss(&mut self.kernels, &mut a.head, labels, mean_over)
    }

    /// The latest forward pass's logits on the host, `(batch, classes)` row-major.
    pub fn logits(&mut self) -> KernelResult<Vec<f32>> {
        let Some(a) = self.activations.last() else {
            return Err(no_step("logits"));
        };
        let len = a.batch * self.net.head.classes();
        self.kernels
            .download_prefix(self.net.head.logits(&a.head), len)
    }

    /// The backward pass of the latest `forward` and `loss`: fills every parameter's gradient
    /// (replayed where the kernels replay).
    pub fn backward(&mut self) -> KernelResult {
        let Some(mut a) = self.activations.pop() else {
            return Err(no_step("backward"));
        };
        let (k, net) = (&mut self.kernels, &mut self.net);
        let key = a.key(Stretch::Backward);
        let result = k.replayable(key, &mut |k| {
            net.backward(k, &mut a, &mut |_| Ok(()), &mut |_| {})
        });
        self.activations.push(a);
        result
    }

    /// `backward`, calling `observe(stage)` after each stage: `fc8` to `fc6`, `pool3`, then
    /// per block its pooling, LRN, ReLU and bias (`conv1 relu+bias`), filter (`conv1 filter`)
    /// and input (`conv2 data`) gradients, so that a profile shows each kernel's share.
    pub fn backward_observed(&mut self, observe: &mut dyn FnMut(&str)) -> KernelResult {
        self.backward_summed(&mut |_| Ok(()), observe)
    }

    /// `backward_observed`, handing each layer's weight and bias gradients to `sum` as soon
    /// as they are written — FC8, FC7, FC6, conv5, …, conv1 — so that summing them across the
    /// ranks of a data-parallel job overlaps the rest of the pass.
    pub fn backward_summed(
        &mut self,
        sum: &mut dyn FnMut(LayerGradients<'_, D>) -> KernelResult,
        observe: &mut dyn FnMut(&str),
    ) -> KernelResult {
        let Some(mut a) = self.activations.pop() else {
            return Err(no_step("backward"));
        };
        let result = self.net.backward(&mut self.kernels, &mut a, sum, observe);
        self.activations.push(a);
        result
    }

    /// For a rank whose slice of the batch is empty: zero gradients, handed to `sum` in the
    /// order `backward_summed` hands them (the ranks' sums pair up by order).
    pub fn backward_empty(
        &mut self,
        sum: &mut dyn FnMut(LayerGradients<'_, D>) -> KernelResult,
    ) -> KernelResult {
        let k = &mut self.kernels;
        let net = &mut self.net;
        let conv = net.layers.iter_mut().rev().map(|p| &mut p.params);
        for p in net.head.params_backward().chain(conv) {
            p.zero_gradients(k)?;
            sum(p.gradients())?;
        }
        Ok(())
    }

    /// A checksum of every weight and bias, bit for bit (the ranks of a data-parallel job
    /// compare theirs).
    pub fn checksum(&mut self) -> KernelResult<u64> {
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        let conv = self.net.layers.iter().map(|p| &p.params);
        for p in conv.chain(self.net.head.params()) {
            p.hash_into(&mut self.kernels, &mut hash)?;
        }
        Ok(hash.digest())
    }

    /// One SGD update of every parameter from the gradients of `backward`.
    pub fn sgd_step(&mut self, learning_rate: f64) -> KernelResult {
        let step = SgdStep {
            learning_rate: learning_rate as f32,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        };
        let conv = self.net.layers.iter_mut().map(|p| &mut p.params);
        let mut tensors: Vec<_> = conv
            .chain(self.net.head.params_mut())
            .flat_map(|p| p.sgd_tensors())
            .collect();
        self.kernels.sgd_all(&step, &mut tensors)
    }

    /// The latest step's input, activations, parameters and gradients, on the host.
    pub fn record(&mut self) -> KernelResult<Recorded> {
        let Some(a) = self.activations.last() else {
            return Err(no_step("record"));
        };
        let batch = a.batch;
        let head = self.net.head.record(&mut self.kernels, &a.head)?;
        let k = &mut self.kernels;
        let layout = k.layout();
        // Activations as NCHW, whatever the kernels' layout.
        let nchw = |planes: Planes, values: Vec<f32>| match layout {
            Layout::Nchw => values,
            Layout::Nhwc => crate::kernels::loops::to_nchw(&planes, &values),
        };
        let mut blocks = Vec::with_capacity(CONV_BLOCKS);
        for (p, b) in self.net.layers.iter().zip(&a.blocks) {
            let shape = p.shape(batch);
            let (conv, filter) = (shape.output_planes(), shape.filter_len());
            let pooled = p.pool_shape(batch).map(|s| s.output_planes());
            let channels = p.block.out_channels;
            let activation = |k: &mut D::Kernels, buf: &Buf<D>, planes: Planes| {
                Ok::<_, KernelError>(nchw(planes, k.download_activation(buf, planes.len())?))
            };
            let relu = activation(k, &b.relu, conv)?;
            let lrn = b
                .lrn
                .as_ref()
                .map(|(y, _)| activation(k, y, conv))
                .transpose()?;
            let pool = match (&b.pool, pooled) {
                (Some((y, _)), Some(planes)) => Some(activation(k, y, planes)?),
                _ => None,
            };
            blocks.push(RecordedBlock {
                block: p.block,
                weight: k.download_prefix(&p.params.weight, filter)?,
                bias: k.download_prefix(&p.params.bias, channels)?,
                relu,
                lrn,
                pool,
                weight_grad: k.download_prefix(&p.params.weight_grad, filter)?,
                bias_grad: k.download_prefix(&p.params.bias_grad, channels)?,
                weight_velocity: k.download_prefix(&p.params.weight_velocity, filter)?,
            });
        }
        let input_planes = self.net.layers[0].shape(batch).input_planes();
        let input = k.download_activation(&a.input, input_planes.len())?;
        let input = nchw(input_planes, input);
        let features_len = batch * self.net.head.inputs();
        Ok(Recorded {
            batch,
            lrn: self.net.lrn,
            input,
            blocks,
            features: k.download_prefix(&a.features, features_len)?,
            d_features: k.download_prefix(&a.d_features, features_len)?,
            head,
        })
    }

    /// The gradients of the latest `backward`, in dfdx's layouts (weight, bias per layer; all
    /// eight layers).
    pub fn gradients(&mut self) -> KernelResult<Vec<(Vec<f32>, Vec<f32>)>> {
        let k = &mut self.kernels;
        let mut out = self
            .net
            .layers
            .iter()
            .map(|p| {
                let (inputs, outputs) = (p.block.weight_rows(), p.block.out_channels);
                let w = from_torch(
                    p.layout(),
                    &k.download(&p.params.weight_grad)?,
                    inputs,
                    outputs,
                );
                Ok((w, k.download(&p.params.bias_grad)?))
            })
            .collect::<KernelResult<Vec<_>>>()?;
        out.extend(self.net.head.gradients(k)?);
        Ok(out)
    }
}

impl<D: Storage<f32>> Activations<D> {
    /// What a pass over these buffers depends on (see `Kernels::replayable`).
    fn key(&self, stretch: Stretch) -> ReplayKey {
        ReplayKey {
            stretch,
            batch: self.batch,
            dropout: self.head.dropout(),
            buffers: self.id,
        }
    }
}

impl<D: Storage<f32>> Network<D> {
    /// conv1 to the logits, from the normalised input and the drawn masks in `a`.
    fn forward<K: Kernels<D>>(
        &self,
        k: &mut K,
        a: &mut Activations<D>,
        observe: &mut dyn FnMut(&str),
    ) -> KernelResult {
        let batch = a.batch;
        let final_planes = self.final_planes(batch);
        for (i, p) in self.layers.iter().enumerate() {
            let (conv, lrn, pool) = p.block.names();
            let shape = p.shape(batch);
            let planes = shape.output_planes();
            let (below, this) = a.blocks.split_at_mut(i);
            let x = below.last().map_or(&a.input, |b| b.output());
            let b = &mut this[0];
            k.conv_forward(&shape, x, &p.params.weight, &mut b.relu)?; //          [B, C_out, S_conv, S_conv]
            k.bias_relu(&planes, &mut b.relu, &p.params.bias)?;
            observe(conv);
            if let Some((y, d)) = &mut b.lrn {
                k.lrn_forward(&planes, &self.lrn, &b.relu, y, d)?; //       [B, C_out, S_conv, S_conv]
                observe(lrn);
            }
            if let (Some(shape), Some((y, argmax))) = (p.pool_shape(batch), &mut b.pool) {
                let x = b.lrn.as_ref().map_or(&b.relu, |(y, _)| y);
                k.pool_forward(&shape, x, y, argmax)?; //                   [B, C_out, S_out, S_out]
                observe(pool);
            }
        }
        let last = a.blocks.last().expect("five blocks");
        k.flatten_channels_last(&final_planes, last.output(), &mut a.features)?; // [B, S_out²·C_out]
        observe("flatten");
        self.head.forward(k, &mut a.head, &a.features, observe)
    }

    /// conv5's pooled output as planes (what FC6 reads, flattened).
    fn final_planes(&self, batch: usize) -> Planes {
        let last = &self.layers[CONV_BLOCKS - 1].block;
        Planes {
            batch,
            channels: last.out_channels,
            pixels: last.out_side() * last.out_side(),
        }
    }

    /// From the logits' gradient (written by the loss) to every parameter's gradient, each
    /// layer's handed to `sum` once written.
    fn backward<K: Kernels<D>>(
        &mut self,
        k: &mut K,
        a: &mut Activations<D>,
        sum: &mut dyn FnMut(LayerGradients<'_, D>) -> KernelResult,
        observe: &mut dyn FnMut(&str),
    ) -> KernelResult {
        let (features, d_features) = (&a.features, &mut a.d_features);
        self.head
            .backward(k, &mut a.head, features, d_features, sum, observe)?;
        let batch = a.batch;
        let planes = self.final_planes(batch);
        let last = a.blocks.last_mut().expect("five blocks");
        k.unflatten_channels_last(&planes, &a.d_features, last.d_output())?;
        observe("flatten");
        for (i, p) in self.layers.iter_mut().enumerate().rev() {
            let (conv, lrn, pool) = p.block.names();
            let shape = p.shape(batch);
            let planes = shape.output_planes();
            let (below, this) = a.blocks.split_at_mut(i);
            let b = &mut this[0];
            // Back through the pool and LRN to the ReLU's output, in d_relu.
            if let (Some(shape), Some((_, argmax)), Some(dy)) =
                (p.pool_shape(batch), &b.pool, &b.d_pool)
            {
                let dx = match &mut b.d_lrn {
                    Some(d_lrn) => d_lrn,
                    None => &mut b.d_relu,
                };
                k.pool_backward(&shape, argmax, dy, dx)?; //                [B, C_out, S_conv, S_conv]
                observe(pool);
            }
            if let (Some((_, d)), Some(d_lrn)) = (&b.lrn, &b.d_lrn) {
                k.lrn_backward(&planes, &self.lrn, &b.relu, d, d_lrn, &mut b.d_relu)?;
                observe(lrn);
            }
            k.relu_bias_backward(&planes, &b.relu, &mut b.d_relu, &mut p.params.bias_grad)?;
            observe(&format!("{conv} relu+bias"));
            let x = below.last().map_or(&a.input, |b| b.output());
            k.conv_backward_filter(&shape, x, &b.d_relu, &mut p.params.weight_grad)?;
            observe(&format!("{conv} filter"));
            sum(p.params.gradients())?;
            // The gradient of the block below's output (the input needs none).
            if let Some(below) = below.last_mut() {
                k.conv_backward_data(&shape, &b.d_relu, &p.params.weight, below.d_output())?;
                observe(&format!("{conv} data"));
            }
        }
        Ok(())
    }
}

/// Host copies of what the latest training step left on the device: its input, every block's
/// activations (NCHW, whatever the kernels' layout), parameters and gradients (filters OIHW),
/// the features and their gradient, and the fully connected layers'. The check replays the backward pass from them.
pub struct Recorded {
    pub batch: usize,
    pub lrn: LrnParams,
    /// The normalised input, `[B, 3, S, S]`.
    pub input: Vec<f32>,
    pub blocks: Vec<RecordedBlock>,
    /// FC6's input `(B, features)` and the gradient the fully connected part gave it.
    pub features: Vec<f32>,
    pub d_features: Vec<f32>,
    pub head: Vec<RecordedDense>,
}

pub struct RecordedBlock {
    pub block: ConvBlock,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    /// After bias and ReLU; after LRN; after pooling (NCHW).
    pub relu: Vec<f32>,
    pub lrn: Option<Vec<f32>>,
    pub pool: Option<Vec<f32>>,
    pub weight_grad: Vec<f32>,
    pub bias_grad: Vec<f32>,
    /// The weights' momentum.
    pub weight_velocity: Vec<f32>,
}

/// Bytes of the activations and gradients `FastNet` keeps for a batch of `batch` crops of a
/// network of `blocks` (what a batch size costs on the device, beyond the parameters).
pub fn activation_bytes(blocks: &[ConvBlock], batch: usize, precision: Precision) -> usize {
    let Some(first) = blocks.first() else {
        return 0;
    };
    // Activation values (the precision's size) and f32 values.
    let (mut stored, mut float) = (
        batch * first.in_channels * first.conv.size * first.conv.size,
        0,
    );
    for b in blocks {
        let conv = batch * b.out_channels * b.conv_side() * b.conv_side();
        // ReLU output and its gradient; LRN output and gradient, and its denominators (f32);
        // pooled output and gradient, and each window's choice (f32).
        stored += 2 * conv;
        if b.lrn {
            stored += 2 * conv;
            float += conv;
        }
        if b.pool.is_some() {
            let pooled = batch * b.out_channels * b.out_side() * b.out_side();
            stored += 2 * pooled;
            float += pooled;
        }
    }
    let last = blocks[blocks.len() - 1];
    float += batch * last.out_channels * last.out_side() * last.out_side();
    stored * precision.activation_bytes() + float * std::mem::size_of::<f32>()
}

fn device_name<D: FastDevice>() -> &'static str {
    if D::GPU {
        "the GPU"
    } else {
        "the CPU"
    }
}

/// The error of a call that needs a step first.
fn no_step(call: &'static str) -> KernelError {
    KernelError::Failed {
        call,
        status: "no step has run".into(),
    }
}
