//! The convolutional part of AlexNet on `Kernels`: its parameters and momentum, the
//! activations one training step keeps, the forward and backward passes and the SGD update.

use dfdx::prelude::*;

use super::kernels::{Buf, ConvShape, InputBatch, Kernels, LrnParams, Planes, PoolShape, SgdStep};
use super::FastDevice;
use crate::model::checkpoint::{from_torch, to_torch};
use crate::model::join::JoinedFeatures;
use crate::model::{Affine, AlexNet, Mat, TorchLayout, Window};

/// conv1..conv5 (of the eight weighted layers, the first five).
pub const CONV_LAYERS: usize = 5;

/// One convolution's parameters, their momentum and their last gradients. Filters are OIHW.
struct ConvParams<D: Storage<f32>> {
    weight: Buf<D>,
    bias: Buf<D>,
    weight_velocity: Buf<D>,
    bias_velocity: Buf<D>,
    weight_grad: Buf<D>,
    bias_grad: Buf<D>,
    window: Window,
    in_channels: usize,
    out_channels: usize,
}

impl<D: Storage<f32>> ConvParams<D> {
    fn shape(&self, batch: usize) -> ConvShape {
        ConvShape {
            batch,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            size: self.window.size,
            kernel: self.window.kernel,
            stride: self.window.stride,
            pad: self.window.pad,
        }
    }

    fn layout(&self) -> TorchLayout {
        TorchLayout::Conv {
            kernel: self.window.kernel,
            in_channels: self.in_channels,
        }
    }
}

/// What one batch size needs: the forward pass's activations (kept for backward) and the
/// backward pass's gradients. Index `i` is conv `i + 1`.
struct Activations<D: Storage<f32>> {
    batch: usize,
    input: Buf<D>,
    /// After bias and ReLU.
    conv: [Buf<D>; CONV_LAYERS],
    /// conv1 and conv2 after LRN, and LRN's denominators (when the model has LRN).
    lrn: [Option<(Buf<D>, Buf<D>)>; 2],
    /// pool1, pool2, pool3.
    pool: [Buf<D>; 3],
    /// Gradients with respect to `conv`, `lrn` outputs and `pool` outputs.
    d_conv: [Buf<D>; CONV_LAYERS],
    d_lrn: [Option<Buf<D>>; 2],
    d_pool: [Buf<D>; 3],
}

/// The convolutional part on the fast path. See the module documentation of `fast`.
pub struct FastNet<D: FastDevice> {
    kernels: D::Kernels,
    dev: D,
    layers: [ConvParams<D>; CONV_LAYERS],
    pools: [Window; 3],
    lrn: Option<LrnParams>,
    /// Kept for the last two batch sizes (training's, and an evaluation pass's short last
    /// batch), newest last.
    activations: Vec<Activations<D>>,
    /// Side and channels of pool3's output, which FC6 reads flattened.
    final_planes: (usize, usize),
    momentum: f32,
    weight_decay: f32,
}

impl<D: FastDevice> FastNet<D> {
    /// Takes over the convolutional parameters of `model` and their momentum `velocity`
    /// (the first five of the optimiser's eight; `None` for zeros, e.g. to evaluate).
    pub fn new(
        dev: &D,
        mut kernels: D::Kernels,
        model: &AlexNet<f32, D>,
        velocity: Option<&[Affine<f32, D>; 8]>,
        momentum: f64,
        weight_decay: f64,
    ) -> Self {
        let spec = &model.spec;
        let windows = spec.windows().expect("checked in Spec::new");
        let conv_windows = [windows[0], windows[2], windows[4], windows[5], windows[6]];
        let channels = spec.config.conv_channels;
        let layers = model.layers();
        let params = std::array::from_fn(|i| {
            let (_, affine, _) = layers[i];
            let in_channels = if i == 0 { 3 } else { channels[i - 1] };
            let window = conv_windows[i];
            let layout = TorchLayout::Conv {
                kernel: window.kernel,
                in_channels,
            };
            let (inputs, outputs) = (affine.inputs(), affine.outputs());
            let filters = |t: &Mat<f32, D>| to_torch(layout, &t.as_vec(), inputs, outputs);
            let weight = kernels.upload(&filters(&affine.weight));
            let bias = kernels.upload(&affine.bias.as_vec());
            let (weight_velocity, bias_velocity) = match velocity {
                Some(v) => (filters(&v[i].weight), v[i].bias.as_vec()),
                None => (vec![0.0; inputs * outputs], vec![0.0; outputs]),
            };
            let weight_velocity = kernels.upload(&weight_velocity);
            let bias_velocity = kernels.upload(&bias_velocity);
            ConvParams {
                weight,
                bias,
                weight_velocity,
                bias_velocity,
                weight_grad: kernels.alloc(inputs * outputs),
                bias_grad: kernels.alloc(outputs),
                window,
                in_channels,
                out_channels: channels[i],
            }
        });
        let cfg = &spec.config;
        Self {
            kernels,
            dev: dev.clone(),
            layers: params,
            pools: [windows[1], windows[3], windows[7]],
            lrn: cfg.lrn.then_some(LrnParams {
                size: cfg.lrn_size,
                k: cfg.lrn_k,
                alpha: cfg.lrn_alpha,
                beta: cfg.lrn_beta,
            }),
            activations: Vec::new(),
            final_planes: (spec.final_side(), channels[4]),
            momentum: momentum as f32,
            weight_decay: weight_decay as f32,
        }
    }

    pub fn kernels(&mut self) -> &mut D::Kernels {
        &mut self.kernels
    }

    /// Writes the parameters and their momentum back into `model` and `velocity` (dfdx's
    /// layouts), for checkpoints and for anything else that reads the model.
    pub fn export(&mut self, model: &mut AlexNet<f32, D>, velocity: &mut [Affine<f32, D>; 8]) {
        let layers = model.layers_mut();
        for (i, (affine, p)) in layers.into_iter().zip(&self.layers).enumerate() {
            let (inputs, outputs) = (affine.inputs(), affine.outputs());
            let ours = |kernels: &mut D::Kernels, buf: &Buf<D>| {
                from_torch(p.layout(), &kernels.download(buf), inputs, outputs)
            };
            affine.weight.copy_from(&ours(&mut self.kernels, &p.weight));
            affine.bias.copy_from(&self.kernels.download(&p.bias));
            let v = &mut velocity[i];
            v.weight
                .copy_from(&ours(&mut self.kernels, &p.weight_velocity));
            v.bias.copy_from(&self.kernels.download(&p.bias_velocity));
        }
    }

    fn planes(batch: usize, channels: usize, side: usize) -> Planes {
        Planes {
            batch,
            channels,
            pixels: side * side,
        }
    }

    fn pool_shape(&self, i: usize, batch: usize) -> PoolShape {
        let w = self.pools[i];
        PoolShape {
            batch,
            channels: self.layers[[0, 1, 4][i]].out_channels,
            size: w.size,
            kernel: w.kernel,
            stride: w.stride,
        }
    }

    /// The buffers for `batch`, allocated on first use.
    fn activations(&mut self, batch: usize) -> Activations<D> {
        if let Some(at) = self.activations.iter().position(|a| a.batch == batch) {
            return self.activations.remove(at);
        }
        if self.activations.len() == 2 {
            self.activations.remove(0);
        }
        let conv_len: [usize; CONV_LAYERS] =
            std::array::from_fn(|i| self.layers[i].shape(batch).output_len());
        let pool_len: [usize; 3] = std::array::from_fn(|i| self.pool_shape(i, batch).output_len());
        let input_len = self.layers[0].shape(batch).input_len();
        let has_lrn = self.lrn.is_some();
        let k = &mut self.kernels;
        Activations {
            batch,
            input: k.alloc(input_len),
            conv: conv_len.map(|n| k.alloc(n)),
            lrn: std::array::from_fn(|i| {
                has_lrn.then(|| (k.alloc(conv_len[i]), k.alloc(conv_len[i])))
            }),
            pool: pool_len.map(|n| k.alloc(n)),
            d_conv: conv_len.map(|n| k.alloc(n)),
            d_lrn: std::array::from_fn(|i| has_lrn.then(|| k.alloc(conv_len[i]))),
            d_pool: pool_len.map(|n| k.alloc(n)),
        }
    }

    /// Normalises `input` on the device and runs conv1..pool3; returns the flattened
    /// features `(B, final_side² · conv5 channels)`, channels-last, as a dfdx tensor.
    pub fn forward(&mut self, input: &InputBatch) -> Mat<f32, D> {
        self.forward_observed(input, &mut |_| {})
    }

    /// `forward`, calling `observe(stage)` after each stage (for profiling).
    pub fn forward_observed(
        &mut self,
        input: &InputBatch,
        observe: &mut dyn FnMut(&'static str),
    ) -> Mat<f32, D> {
        let batch = input.batch;
        let mut a = self.activations(batch);
        let pools: [PoolShape; 3] = std::array::from_fn(|j| self.pool_shape(j, batch));
        let k = &mut self.kernels;
        k.normalize(input, &mut a.input);
        observe("normalise");
        const NAMES: [(&str, &str, &str); 5] = [
            ("conv1", "lrn1", "pool1"),
            ("conv2", "lrn2", "pool2"),
            ("conv3", "", ""),
            ("conv4", "", ""),
            ("conv5", "", "pool3"),
        ];
        for i in 0..CONV_LAYERS {
            let p = &self.layers[i];
            let shape = p.shape(batch);
            let planes = shape.output_planes();
            let (below, this) = a.conv.split_at_mut(i);
            let x = match i {
                0 => &a.input,
                1 | 2 => &a.pool[i - 1],
                _ => &below[i - 1],
            };
            k.conv_forward(&shape, x, &p.weight, &mut this[0]);
            k.bias_relu(&planes, &mut this[0], &p.bias);
            observe(NAMES[i].0);
            let lrn_out = a.lrn.get_mut(i).and_then(Option::as_mut);
            if let (Some(lrn), Some((y, d))) = (&self.lrn, lrn_out) {
                k.lrn_forward(&planes, lrn, &a.conv[i], y, d);
                observe(NAMES[i].1);
            }
            let Some(pool) = pool_after(i) else {
                continue;
            };
            let x = match a.lrn.get(i).and_then(Option::as_ref) {
                Some((y, _)) => y,
                None => &a.conv[i],
            };
            k.pool_forward(&pools[pool], x, &mut a.pool[pool]);
            observe(NAMES[i].2);
        }
        let (side, channels) = self.final_planes;
        let planes = Self::planes(batch, channels, side);
        let mut features = k.alloc(planes.len());
        k.flatten_channels_last(&planes, &a.pool[2], &mut features);
        let features = tensor_from_buffer(
            &self.dev,
            features,
            (batch, planes.channels * planes.pixels),
        );
        observe("flatten");
        self.activations.push(a);
        features
    }

    /// The backward pass of the latest `forward`, from the features' gradient that dfdx's
    /// backward pass left in `grads`; fills every parameter's gradient.
    pub fn backward(&mut self, grads: &mut Gradients<f32, D>, features: &JoinedFeatures<f32, D>) {
        self.backward_observed(grads, features, &mut |_| {})
    }

    pub fn backward_observed(
        &mut self,
        grads: &mut Gradients<f32, D>,
        features: &JoinedFeatures<f32, D>,
        observe: &mut dyn FnMut(&'static str),
    ) {
        let mut a = self.activations.pop().expect("backward follows forward");
        let batch = a.batch;
        let pools: [PoolShape; 3] = std::array::from_fn(|j| self.pool_shape(j, batch));
        let (side, channels) = self.final_planes;
        let planes = Self::planes(batch, channels, side);
        let k = &mut self.kernels;
        let d_features = features.gradient_buffer(grads);
        k.unflatten_channels_last(&planes, d_features, &mut a.d_pool[2]);
        for i in (0..CONV_LAYERS).rev() {
            let p = &mut self.layers[i];
            let shape = p.shape(batch);
            let planes = shape.output_planes();
            // The gradient with respect to this layer's ReLU output lands in d_conv[i]
            // (conv3 and conv4 have it already, from the layer above).
            if let Some(pool) = pool_after(i) {
                let (dy, y) = (&a.d_pool[pool], &a.pool[pool]);
                match (&self.lrn, &a.lrn[i.min(1)], &mut a.d_lrn[i.min(1)]) {
                    (Some(lrn), Some((lrn_y, d)), Some(d_lrn)) if i < 2 => {
                        k.pool_backward(&pools[pool], lrn_y, y, dy, d_lrn);
                        k.lrn_backward(&planes, lrn, &a.conv[i], d, d_lrn, &mut a.d_conv[i]);
                    }
                    _ => k.pool_backward(&pools[pool], &a.conv[i], y, dy, &mut a.d_conv[i]),
                }
            }
            k.relu_bias_backward(&planes, &a.conv[i], &mut a.d_conv[i], &mut p.bias_grad);
            let (below, this) = a.d_conv.split_at_mut(i);
            let x = match i {
                0 => &a.input,
                1 | 2 => &a.pool[i - 1],
                _ => &a.conv[i - 1],
            };
            k.conv_backward_filter(&shape, x, &this[0], &mut p.weight_grad);
            // The gradient for the layer below: its pool's output, or its ReLU's output.
            match i {
                0 => {}
                1 | 2 => k.conv_backward_data(&shape, &this[0], &p.weight, &mut a.d_pool[i - 1]),
                _ => k.conv_backward_data(&shape, &this[0], &p.weight, &mut below[i - 1]),
            }
            observe(["conv1", "conv2", "conv3", "conv4", "conv5"][i]);
        }
        self.activations.push(a);
    }

    /// One SGD update of the convolutional parameters from the gradients of `backward`.
    pub fn sgd_step(&mut self, learning_rate: f64) {
        let step = SgdStep {
            learning_rate: learning_rate as f32,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        };
        for p in &mut self.layers {
            self.kernels
                .sgd(&step, &mut p.weight, &mut p.weight_velocity, &p.weight_grad);
            self.kernels
                .sgd(&step, &mut p.bias, &mut p.bias_velocity, &p.bias_grad);
        }
    }

    /// The gradients of the latest `backward`, in dfdx's layouts (weight, bias per layer).
    pub fn gradients(&mut self) -> Vec<(Vec<f32>, Vec<f32>)> {
        let k = &mut self.kernels;
        self.layers
            .iter()
            .map(|p| {
                let (inputs, outputs) = (
                    p.in_channels * p.window.kernel * p.window.kernel,
                    p.out_channels,
                );
                let w = from_torch(p.layout(), &k.download(&p.weight_grad), inputs, outputs);
                (w, k.download(&p.bias_grad))
            })
            .collect()
    }
}

/// The pool that follows conv `i + 1`, if any.
fn pool_after(i: usize) -> Option<usize> {
    match i {
        0 | 1 => Some(i),
        4 => Some(2),
        _ => None,
    }
}

/// A dfdx tensor holding `buffer`. dfdx builds tensors only from host data or from its own
/// ops; a gradient buffer parked under a stand-in tensor's id and read back with
/// `Gradients::get` is the one public way in (a single device-to-device copy).
pub fn tensor_from_buffer<D: Device<f32>>(
    dev: &D,
    buffer: Buf<D>,
    shape: (usize, usize),
) -> Mat<f32, D> {
    let stand_in: Mat<f32, D> = dev.zeros_like(&shape);
    let mut parking = Gradients::leaky();
    *parking.get_or_alloc_mut(&stand_in).expect("allocation") = buffer;
    parking.get(&stand_in)
}
