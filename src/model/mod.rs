//! AlexNet (Krizhevsky, Sutskever & Hinton, 2012), single tower, on dfdx.
//!
//! | layer | operation                         | output (224 input, paper widths) |
//! |-------|-----------------------------------|----------------------------------|
//! | conv1 | 96 × 11×11 / 4, pad 2, ReLU       | 55 × 55 × 96                     |
//! |       | LRN (k=2, n=5, α=1e-4, β=0.75)     | 55 × 55 × 96                     |
//! |       | max-pool 3 / 2                    | 27 × 27 × 96                     |
//! | conv2 | 256 × 5×5, pad 2, ReLU, LRN       | 27 × 27 × 256                    |
//! |       | max-pool 3 / 2                    | 13 × 13 × 256                    |
//! | conv3 | 384 × 3×3, pad 1, ReLU            | 13 × 13 × 384                    |
//! | conv4 | 384 × 3×3, pad 1, ReLU            | 13 × 13 × 384                    |
//! | conv5 | 256 × 3×3, pad 1, ReLU            | 13 × 13 × 256                    |
//! |       | max-pool 3 / 2                    | 6 × 6 × 256                      |
//! | fc6   | dropout 0.5, 4096, ReLU           | 4096                             |
//! | fc7   | dropout 0.5, 4096, ReLU           | 4096                             |
//! | fc8   | classes (1000)                    | 1000                             |
//!
//! Widths and the input size come from the pipeline, the number of classes from the data.

pub mod checkpoint;
pub mod join;
pub mod layers;

use dfdx::prelude::*;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::ModelConfig;
use crate::seed::{mix_seed, standard_normal};
pub use layers::{Act, Affine, Conv, LayerTape, Lrn, Mat, MaxPool, Window};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "a {input}×{input} input is too small for AlexNet's layers ({layer} would be empty); \
         use a larger loader.crop_size"
    )]
    InputTooSmall { input: usize, layer: &'static str },
    #[error("the data has {0} classes; AlexNet needs at least 2")]
    TooFewClasses(usize),
}

/// Everything that fixes the network's shapes and its initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Side of the square input crops.
    pub input: usize,
    pub classes: usize,
    pub config: ModelConfig,
}

/// One row of the layer table.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerShape {
    pub name: &'static str,
    pub operation: String,
    /// Output side (1 for fully connected layers) and channels.
    pub side: usize,
    pub channels: usize,
    pub parameters: usize,
}

// The paper's fixed layer geometry: (kernel, stride, pad).
const CONV1: (usize, usize, usize) = (11, 4, 2);
const CONV2: (usize, usize, usize) = (5, 1, 2);
const CONV345: (usize, usize, usize) = (3, 1, 1);
const POOL: (usize, usize, usize) = (3, 2, 0);

fn window(size: usize, (kernel, stride, pad): (usize, usize, usize)) -> Window {
    Window {
        size,
        kernel,
        stride,
        pad,
    }
}

impl Spec {
    pub fn new(config: &ModelConfig, input: usize, classes: usize) -> Result<Self, ModelError> {
        if classes < 2 {
            return Err(ModelError::TooFewClasses(classes));
        }
        let spec = Self {
            input,
            classes,
            config: config.clone(),
        };
        spec.windows()?;
        Ok(spec)
    }

    /// The eight windows in order: conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool3.
    pub fn windows(&self) -> Result<[Window; 8], ModelError> {
        let mut side = self.input;
        let mut out = Vec::with_capacity(8);
        let plan: [(&'static str, (usize, usize, usize)); 8] = [
            ("conv1", CONV1),
            ("pool1", POOL),
            ("conv2", CONV2),
            ("pool2", POOL),
            ("conv3", CONV345),
            ("conv4", CONV345),
            ("conv5", CONV345),
            ("pool3", POOL),
        ];
        for (layer, geometry) in plan {
            let w = window(side, geometry);
            side = w.out_size().ok_or(ModelError::InputTooSmall {
                input: self.input,
                layer,
            })?;
            out.push(w);
        }
        Ok(out.try_into().expect("eight windows"))
    }

    /// Side of conv5's pooled output (6 for 224 inputs).
    pub fn final_side(&self) -> usize {
        let windows = self.windows().expect("checked in Spec::new");
        windows[7].out_size().expect("checked in Spec::new")
    }

    /// Inputs of FC6: the flattened pooled conv5 output.
    pub fn fc6_inputs(&self) -> usize {
        let side = self.final_side();
        side * side * self.config.conv_channels[4]
    }

    /// The layer table, like the paper's, with each layer's output shape.
    pub fn table(&self) -> Vec<LayerShape> {
        let w = self.windows().expect("checked in Spec::new");
        let c = self.config.conv_channels;
        let fc = self.config.fc_units;
        let lrn = if self.config.lrn { ", LRN" } else { "" };
        let conv = |name, i: usize, win: Window, cin: usize, extra: &str| LayerShape {
            name,
            operation: format!(
                "{} × {}×{} / {}, pad {}, ReLU{extra}",
                c[i], win.kernel, win.kernel, win.stride, win.pad
            ),
            side: win.out_size().unwrap(),
            channels: c[i],
            parameters: win.kernel * win.kernel * cin * c[i] + c[i],
        };
        let pool = |win: Window, channels| LayerShape {
            name: "",
            operation: "max-pool 3 / 2".into(),
            side: win.out_size().unwrap(),
            channels,
            parameters: 0,
        };
        let dropout = if self.config.dropout > 0.0 {
            format!("dropout {}, ", self.config.dropout)
        } else {
            String::new()
        };
        let linear = |name, inputs: usize, outputs: usize, relu: bool| LayerShape {
            name,
            operation: format!("{dropout}{outputs}{}", if relu { ", ReLU" } else { "" }),
            side: 1,
            channels: outputs,
            parameters: inputs * outputs + outputs,
        };
        vec![
            conv("conv1", 0, w[0], 3, lrn),
            pool(w[1], c[0]),
            conv("conv2", 1, w[2], c[0], lrn),
            pool(w[3], c[1]),
            conv("conv3", 2, w[4], c[1], ""),
            conv("conv4", 3, w[5], c[2], ""),
            conv("conv5", 4, w[6], c[3], ""),
            pool(w[7], c[4]),
            linear("fc6", self.fc6_inputs(), fc, true),
            linear("fc7", fc, fc, true),
            LayerShape {
                operation: format!("{}", self.classes),
                ..linear("fc8", fc, self.classes, false)
            },
        ]
    }

    pub fn parameter_count(&self) -> usize {
        self.table().iter().map(|l| l.parameters).sum()
    }
}

/// How a layer's weight is laid out in PyTorch (for checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchLayout {
    /// `[out, in, k, k]`; ours is `(k·k·in, out)` with rows in (ky, kx, c) order.
    Conv { kernel: usize, in_channels: usize },
    /// `[out, in]`; ours is `(in, out)`.
    Linear,
    /// `[out, in]` over a (C, H, W)-flattened input; ours flattens (H, W, C).
    LinearAfterFlatten { pixels: usize, channels: usize },
}

/// PyTorch's `nn.Sequential` names of the eight weighted layers, in order.
pub const TORCH_NAMES: [&str; 8] = [
    "features.0",
    "features.4",
    "features.8",
    "features.10",
    "features.12",
    "classifier.1",
    "classifier.4",
    "classifier.6",
];

/// Dropout masks of one training step (0 or 1/(1−p) per unit), drawn on the host from
/// (seed, step) so that a resumed run draws the same ones.
pub struct DropoutMasks<E: Dtype, D: Device<E>> {
    pub fc6: Mat<E, D>,
    pub fc7: Mat<E, D>,
}

impl<E: Dtype, D: Device<E>> DropoutMasks<E, D> {
    pub fn draw(dev: &D, spec: &Spec, seed: u64, step: u64, batch: usize) -> Option<Self> {
        let p = spec.config.dropout as f64;
        if p <= 0.0 {
            return None;
        }
        let keep = E::from_f64(1.0 / (1.0 - p)).unwrap();
        // Compare 32-bit draws with a threshold: exact enough, and fast.
        let threshold = (p * 4_294_967_296.0) as u64;
        let mask = |layer: u64, units: usize| {
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[seed, step, layer]));
            let values: Vec<E> = (0..batch * units)
                .map(|_| {
                    if (rng.random::<u32>() as u64) < threshold {
                        E::default()
                    } else {
                        keep
                    }
                })
                .collect();
            dev.tensor_from_vec(values, (batch, units))
        };
        Some(Self {
            fc6: mask(6, spec.fc6_inputs()),
            fc7: mask(7, spec.config.fc_units),
        })
    }
}

/// The network. Activations are channels-last, `(B, H·W, C)`; see `layers`.
pub struct AlexNet<E: Dtype, D: Device<E>> {
    pub spec: Spec,
    pub conv1: Conv<E, D>,
    pub lrn1: Option<Lrn<E, D>>,
    pub pool1: MaxPool<D>,
    pub conv2: Conv<E, D>,
    pub lrn2: Option<Lrn<E, D>>,
    pub pool2: MaxPool<D>,
    pub conv3: Conv<E, D>,
    pub conv4: Conv<E, D>,
    pub conv5: Conv<E, D>,
    pub pool3: MaxPool<D>,
    pub fc6: Affine<E, D>,
    pub fc7: Affine<E, D>,
    pub fc8: Affine<E, D>,
}

impl<E: Dtype, D: Device<E>> AlexNet<E, D> {
    /// The paper's initialisation: weights N(0, init_std²); biases `init_bias` in conv2,
    /// conv4, conv5, FC6 and FC7, 0 elsewhere. Drawn on the host from `seed`, so CPU and GPU
    /// runs start from the same weights.
    pub fn new(dev: &D, spec: Spec, seed: u64) -> Self {
        let cfg = &spec.config;
        let shapes = Self::affine_shapes(&spec);
        let layers: Vec<Affine<E, D>> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(inputs, outputs))| {
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[seed, i as u64]));
                let weight: Vec<E> = (0..inputs * outputs)
                    .map(|_| E::from_f32(standard_normal(&mut rng) * cfg.init_std).unwrap())
                    .collect();
                // conv2, conv4, conv5, fc6, fc7
                let bias_value = if [1, 3, 4, 5, 6].contains(&i) {
                    cfg.init_bias
                } else {
                    0.0
                };
                Affine {
                    weight: dev.tensor_from_vec(weight, (inputs, outputs)),
                    bias: dev.tensor_from_vec(
                        vec![E::from_f32(bias_value).unwrap(); outputs],
                        (outputs,),
                    ),
                }
            })
            .collect();
        let layers = layers
            .try_into()
            .unwrap_or_else(|_| unreachable!("eight layers"));
        Self::from_layers(dev, spec, layers)
    }

    /// `(inputs, outputs)` of the eight weighted layers.
    pub fn affine_shapes(spec: &Spec) -> [(usize, usize); 8] {
        let c = spec.config.conv_channels;
        let fc = spec.config.fc_units;
        [
            (11 * 11 * 3, c[0]),
            (5 * 5 * c[0], c[1]),
            (3 * 3 * c[1], c[2]),
            (3 * 3 * c[2], c[3]),
            (3 * 3 * c[3], c[4]),
            (spec.fc6_inputs(), fc),
            (fc, fc),
            (fc, spec.classes),
        ]
    }

    /// Assembles the network around given weights (in `TORCH_NAMES` order).
    pub fn from_layers(dev: &D, spec: Spec, layers: [Affine<E, D>; 8]) -> Self {
        let w = spec.windows().expect("checked in Spec::new");
        let cfg = &spec.config;
        let lrn = |channels| {
            cfg.lrn.then(|| {
                Lrn::new(
                    dev,
                    channels,
                    cfg.lrn_size,
                    cfg.lrn_k as f64,
                    cfg.lrn_alpha as f64,
                    cfg.lrn_beta as f64,
                )
            })
        };
        let [l1, l2, l3, l4, l5, l6, l7, l8] = layers;
        Self {
            conv1: Conv::new(l1, w[0]),
            lrn1: lrn(cfg.conv_channels[0]),
            pool1: MaxPool::new(w[1]),
            conv2: Conv::new(l2, w[2]),
            lrn2: lrn(cfg.conv_channels[1]),
            pool2: MaxPool::new(w[3]),
            conv3: Conv::new(l3, w[4]),
            conv4: Conv::new(l4, w[5]),
            conv5: Conv::new(l5, w[6]),
            pool3: MaxPool::new(w[7]),
            fc6: l6,
            fc7: l7,
            fc8: l8,
            spec,
        }
    }

    /// Logits `(B, classes)` of a batch of crops `(B, input², 3)`. Dropout masks are given
    /// for training and omitted for evaluation. Shapes are for the paper's 224 input.
    pub fn forward<T: LayerTape<E, D>>(
        &mut self,
        x: Act<E, D, T>,
        dropout: Option<&DropoutMasks<E, D>>,
    ) -> Mat<E, D, T> {
        self.forward_observed(x, dropout, &mut |_, _| {})
    }

    /// `forward`, calling `observe(layer, stage)` after each stage (for profiling).
    pub fn forward_observed<T: LayerTape<E, D>>(
        &mut self,
        x: Act<E, D, T>,
        dropout: Option<&DropoutMasks<E, D>>,
        observe: &mut dyn FnMut(&'static str, &'static str),
    ) -> Mat<E, D, T> {
        let features = self.features_observed(x, observe);
        self.head_observed(features, dropout, observe)
    }

    /// The convolutional part: crops `(B, input², 3)` to the flattened features
    /// `(B, final_side² · conv5 channels)` that FC6 reads (channels-last order).
    pub fn features<T: LayerTape<E, D>>(&mut self, x: Act<E, D, T>) -> Mat<E, D, T> {
        self.features_observed(x, &mut |_, _| {})
    }

    /// The fully connected part: flattened features to logits `(B, classes)`.
    pub fn head<T: LayerTape<E, D>>(
        &self,
        x: Mat<E, D, T>,
        dropout: Option<&DropoutMasks<E, D>>,
    ) -> Mat<E, D, T> {
        self.head_observed(x, dropout, &mut |_, _| {})
    }

    fn features_observed<T: LayerTape<E, D>>(
        &mut self,
        x: Act<E, D, T>,
        observe: &mut dyn FnMut(&'static str, &'static str),
    ) -> Mat<E, D, T> {
        let o = &mut *observe;
        let x = self.conv1.forward_observed(x, &mut |s| o("conv1", s)); //   [B, 55·55, 96]
        let x = stage(observe, "conv1", "relu", || x.relu());
        let x = stage(observe, "lrn1", "", || maybe_lrn(&self.lrn1, x)); //  [B, 55·55, 96]
        let x = stage(observe, "pool1", "", || self.pool1.forward(x)); //    [B, 27·27, 96]
        let o = &mut *observe;
        let x = self.conv2.forward_observed(x, &mut |s| o("conv2", s)); //   [B, 27·27, 256]
        let x = stage(observe, "conv2", "relu", || x.relu());
        let x = stage(observe, "lrn2", "", || maybe_lrn(&self.lrn2, x)); //  [B, 27·27, 256]
        let x = stage(observe, "pool2", "", || self.pool2.forward(x)); //    [B, 13·13, 256]
        let o = &mut *observe;
        let x = self.conv3.forward_observed(x, &mut |s| o("conv3", s)); //   [B, 13·13, 384]
        let x = stage(observe, "conv3", "relu", || x.relu());
        let o = &mut *observe;
        let x = self.conv4.forward_observed(x, &mut |s| o("conv4", s)); //   [B, 13·13, 384]
        let x = stage(observe, "conv4", "relu", || x.relu());
        let o = &mut *observe;
        let x = self.conv5.forward_observed(x, &mut |s| o("conv5", s)); //   [B, 13·13, 256]
        let x = stage(observe, "conv5", "relu", || x.relu());
        let x = stage(observe, "pool3", "", || self.pool3.forward(x)); //    [B, 6·6, 256]
        layers::flatten(x) //                                                [B, 9216]
    }

    fn head_observed<T: LayerTape<E, D>>(
        &self,
        x: Mat<E, D, T>,
        dropout: Option<&DropoutMasks<E, D>>,
        observe: &mut dyn FnMut(&'static str, &'static str),
    ) -> Mat<E, D, T> {
        let x = maybe_dropout(x, dropout.map(|m| &m.fc6));
        let x = stage(observe, "fc6", "", || self.fc6.forward(x).relu()); // [B, 4096]
        let x = maybe_dropout(x, dropout.map(|m| &m.fc7));
        let x = stage(observe, "fc7", "", || self.fc7.forward(x).relu()); // [B, 4096]
        stage(observe, "fc8", "", || self.fc8.forward(x)) //                 [B, classes]
    }

    /// The weighted layers with their PyTorch names and layouts, in order.
    pub fn layers(&self) -> [(&'static str, &Affine<E, D>, TorchLayout); 8] {
        let layouts = self.torch_layouts();
        let layers = [
            &self.conv1.affine,
            &self.conv2.affine,
            &self.conv3.affine,
            &self.conv4.affine,
            &self.conv5.affine,
            &self.fc6,
            &self.fc7,
            &self.fc8,
        ];
        std::array::from_fn(|i| (TORCH_NAMES[i], layers[i], layouts[i]))
    }

    pub fn layers_mut(&mut self) -> [&mut Affine<E, D>; 8] {
        [
            &mut self.conv1.affine,
            &mut self.conv2.affine,
            &mut self.conv3.affine,
            &mut self.conv4.affine,
            &mut self.conv5.affine,
            &mut self.fc6,
            &mut self.fc7,
            &mut self.fc8,
        ]
    }

    pub fn torch_layouts(&self) -> [TorchLayout; 8] {
        torch_layouts(&self.spec)
    }
}

pub fn torch_layouts(spec: &Spec) -> [TorchLayout; 8] {
    let c = spec.config.conv_channels;
    let side = spec.final_side();
    let conv = |kernel, in_channels| TorchLayout::Conv {
        kernel,
        in_channels,
    };
    [
        conv(11, 3),
        conv(5, c[0]),
        conv(3, c[1]),
        conv(3, c[2]),
        conv(3, c[3]),
        TorchLayout::LinearAfterFlatten {
            pixels: side * side,
            channels: c[4],
        },
        TorchLayout::Linear,
        TorchLayout::Linear,
    ]
}

/// Runs one stage, then reports it (profiling synchronises the device in `observe`).
fn stage<Y>(
    observe: &mut dyn FnMut(&'static str, &'static str),
    layer: &'static str,
    step: &'static str,
    run: impl FnOnce() -> Y,
) -> Y {
    let y = run();
    observe(layer, step);
    y
}

fn maybe_lrn<E: Dtype, D: Device<E>, T: LayerTape<E, D>>(
    lrn: &Option<Lrn<E, D>>,
    x: Act<E, D, T>,
) -> Act<E, D, T> {
    match lrn {
        Some(lrn) => lrn.forward(x),
        None => x,
    }
}

fn maybe_dropout<E: Dtype, D: Device<E>, T: LayerTape<E, D>>(
    x: Mat<E, D, T>,
    mask: Option<&Mat<E, D>>,
) -> Mat<E, D, T> {
    match mask {
        Some(mask) => x * mask.clone(),
        None => x,
    }
}

#[cfg(test)]
mod tests;
