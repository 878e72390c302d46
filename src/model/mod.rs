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
pub mod layers;

use dfdx::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::ModelConfig;
use crate::kernels::{ConvShape, PoolShape};
use crate::seed::{dropout_mask, mix_seed, standard_normal};
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

/// One block of the convolutional part: a convolution with ReLU, then LRN and max-pooling
/// where the paper has them. The five blocks are the layout every engine builds from (the dfdx
/// model, the fast path, the check), so the network's shape is written down once, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvBlock {
    /// 1 to 5.
    pub number: usize,
    pub conv: Window,
    pub in_channels: usize,
    pub out_channels: usize,
    /// LRN after the ReLU (conv1 and conv2, when the model has LRN).
    pub lrn: bool,
    /// Max-pooling after the ReLU (and LRN): conv1, conv2 and conv5.
    pub pool: Option<Window>,
}

/// conv1..conv5.
pub const CONV_BLOCKS: usize = 5;

impl ConvBlock {
    /// Side of the block's output (after pooling, if any).
    pub fn out_side(&self) -> usize {
        let window = self.pool.unwrap_or(self.conv);
        window.out_size().expect("checked in Spec::new")
    }

    /// Side of the convolution's output (the ReLU's and LRN's).
    pub fn conv_side(&self) -> usize {
        self.conv.out_size().expect("checked in Spec::new")
    }

    /// The block's convolution for a batch of `batch` crops.
    pub fn conv_shape(&self, batch: usize) -> ConvShape {
        let w = self.conv;
        ConvShape {
            batch,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            size: w.size,
            kernel: w.kernel,
            stride: w.stride,
            pad: w.pad,
        }
    }

    /// The block's pooling, if it has one, for a batch of `batch` crops.
    pub fn pool_shape(&self, batch: usize) -> Option<PoolShape> {
        self.pool.map(|w| PoolShape {
            batch,
            channels: self.out_channels,
            size: w.size,
            kernel: w.kernel,
            stride: w.stride,
        })
    }

    /// Rows of the weight matrix: `kernel² · in_channels`.
    pub fn weight_rows(&self) -> usize {
        self.conv.kernel * self.conv.kernel * self.in_channels
    }

    /// The stage names a profile reports: `("conv2", "lrn2", "pool2")`.
    pub fn names(&self) -> (&'static str, &'static str, &'static str) {
        const CONV: [&str; CONV_BLOCKS] = ["conv1", "conv2", "conv3", "conv4", "conv5"];
        const LRN: [&str; CONV_BLOCKS] = ["lrn1", "lrn2", "lrn3", "lrn4", "lrn5"];
        // The paper numbers its pools in order: conv5's is the third.
        let pool = match self.number {
            1 => "pool1",
            2 => "pool2",
            _ => "pool3",
        };
        (CONV[self.number - 1], LRN[self.number - 1], pool)
    }
}

/// The paper's fixed geometry per block: conv (kernel, stride, pad), LRN, pooled.
const GEOMETRY: [((usize, usize, usize), bool, bool); CONV_BLOCKS] = [
    ((11, 4, 2), true, true),
    ((5, 1, 2), true, true),
    ((3, 1, 1), false, false),
    ((3, 1, 1), false, false),
    ((3, 1, 1), false, true),
];
/// Every pool is 3 / 2 without padding (overlapping pooling, §3.4 of the paper).
const POOL: (usize, usize) = (3, 2);

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
        spec.try_blocks()?;
        Ok(spec)
    }

    /// The five convolutional blocks in order, with the sides their windows see.
    pub fn blocks(&self) -> [ConvBlock; CONV_BLOCKS] {
        self.try_blocks().expect("checked in Spec::new")
    }

    fn try_blocks(&self) -> Result<[ConvBlock; CONV_BLOCKS], ModelError> {
        let channels = self.config.conv_channels;
        let mut side = self.input;
        let mut blocks = Vec::with_capacity(CONV_BLOCKS);
        for (i, &((kernel, stride, pad), lrn, pooled)) in GEOMETRY.iter().enumerate() {
            let mut block = ConvBlock {
                number: i + 1,
                conv: Window {
                    size: side,
                    kernel,
                    stride,
                    pad,
                },
                in_channels: if i == 0 { 3 } else { channels[i - 1] },
                out_channels: channels[i],
                lrn: lrn && self.config.lrn,
                pool: None,
            };
            let (conv, _, pool) = block.names();
            side = block.conv.out_size().ok_or(ModelError::InputTooSmall {
                input: self.input,
                layer: conv,
            })?;
            if pooled {
                let window = Window {
                    size: side,
                    kernel: POOL.0,
                    stride: POOL.1,
                    pad: 0,
                };
                side = window.out_size().ok_or(ModelError::InputTooSmall {
                    input: self.input,
                    layer: pool,
                })?;
                block.pool = Some(window);
            }
            blocks.push(block);
        }
        Ok(blocks.try_into().expect("five blocks"))
    }

    /// Side of conv5's pooled output (6 for 224 inputs).
    pub fn final_side(&self) -> usize {
        self.blocks()[CONV_BLOCKS - 1].out_side()
    }

    /// Inputs of FC6: the flattened pooled conv5 output.
    pub fn fc6_inputs(&self) -> usize {
        let side = self.final_side();
        side * side * self.config.conv_channels[4]
    }

    /// The layer table, like the paper's, with each layer's output shape.
    pub fn table(&self) -> Vec<LayerShape> {
        let fc = self.config.fc_units;
        let mut rows = Vec::new();
        for block in self.blocks() {
            let (name, _, _) = block.names();
            let w = block.conv;
            let lrn = if block.lrn { ", LRN" } else { "" };
            rows.push(LayerShape {
                name,
                operation: format!(
                    "{} × {}×{} / {}, pad {}, ReLU{lrn}",
                    block.out_channels, w.kernel, w.kernel, w.stride, w.pad
                ),
                side: block.conv_side(),
                channels: block.out_channels,
                parameters: block.weight_rows() * block.out_channels + block.out_channels,
            });
            if let Some(pool) = block.pool {
                rows.push(LayerShape {
                    name: "",
                    operation: format!("max-pool {} / {}", pool.kernel, pool.stride),
                    side: block.out_side(),
                    channels: block.out_channels,
                    parameters: 0,
                });
            }
        }
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
        rows.push(linear("fc6", self.fc6_inputs(), fc, true));
        rows.push(linear("fc7", fc, fc, true));
        rows.push(LayerShape {
            operation: format!("{}", self.classes),
            ..linear("fc8", fc, self.classes, false)
        });
        rows
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

/// Dropout masks of one training step (0 or 1/(1−p) per unit). Counter-based: every unit's
/// draw is a hash of (seed, step, layer, image, unit), so a resumed run draws the same masks,
/// an image's mask does not depend on how its batch is cut, and a batch's masks are drawn in
/// parallel (a sequential random stream cost 0.13 ms per image, more than the whole step's
/// input stage).
pub struct DropoutMasks<E: Dtype, D: Device<E>> {
    pub fc6: Mat<E, D>,
    pub fc7: Mat<E, D>,
}

impl<E: Dtype, D: Device<E>> DropoutMasks<E, D> {
    /// Drawn on the host (see `seed::dropout_mask`).
    pub fn draw(dev: &D, spec: &Spec, seed: u64, step: u64, batch: usize) -> Option<Self> {
        let p = spec.config.dropout as f64;
        if p <= 0.0 {
            return None;
        }
        let keep = E::from_f64(1.0 / (1.0 - p)).unwrap();
        let mask = |layer: u64, units: usize| {
            let key = dropout_key(seed, step, layer);
            let values = dropout_mask(key, p, 0..batch as u64, units, keep);
            dev.tensor_from_vec(values, (batch, units))
        };
        Some(Self {
            fc6: mask(6, spec.fc6_inputs()),
            fc7: mask(7, spec.config.fc_units),
        })
    }
}

/// The key of the dropout mask in front of layer `layer` (6 or 7) at training step `step`.
pub fn dropout_key(seed: u64, step: u64, layer: u64) -> u64 {
    mix_seed(&[seed, step, layer])
}

/// One convolutional block on dfdx (see `ConvBlock`).
pub struct Block<E: Dtype, D: Device<E>> {
    pub conv: Conv<E, D>,
    pub lrn: Option<Lrn<E, D>>,
    pub pool: Option<MaxPool<D>>,
    pub names: (&'static str, &'static str, &'static str),
}

/// The network. Activations are channels-last, `(B, H·W, C)`; see `layers`.
pub struct AlexNet<E: Dtype, D: Device<E>> {
    pub spec: Spec,
    pub blocks: [Block<E, D>; CONV_BLOCKS],
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
        let blocks = spec.blocks();
        let fc = spec.config.fc_units;
        let head = [(spec.fc6_inputs(), fc), (fc, fc), (fc, spec.classes)];
        std::array::from_fn(|i| match i {
            0..CONV_BLOCKS => (blocks[i].weight_rows(), blocks[i].out_channels),
            _ => head[i - CONV_BLOCKS],
        })
    }

    /// Assembles the network around given weights (in `TORCH_NAMES` order).
    pub fn from_layers(dev: &D, spec: Spec, layers: [Affine<E, D>; 8]) -> Self {
        let cfg = &spec.config;
        let [l1, l2, l3, l4, l5, fc6, fc7, fc8] = layers;
        let mut convs = [l1, l2, l3, l4, l5].into_iter();
        let blocks = spec.blocks().map(|block| Block {
            conv: Conv::new(convs.next().expect("five"), block.conv),
            lrn: block.lrn.then(|| {
                Lrn::new(
                    dev,
                    block.out_channels,
                    cfg.lrn_size,
                    cfg.lrn_k as f64,
                    cfg.lrn_alpha as f64,
                    cfg.lrn_beta as f64,
                )
            }),
            pool: block.pool.map(MaxPool::new),
            names: block.names(),
        });
        Self {
            blocks,
            fc6,
            fc7,
            fc8,
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

    /// Per block (shapes for a 224 input and the paper's widths, block by block:
    /// conv1 [B, 55·55, 96] → pool1 [B, 27·27, 96]; conv2 [B, 27·27, 256] → pool2
    /// [B, 13·13, 256]; conv3 [B, 13·13, 384]; conv4 [B, 13·13, 384]; conv5 [B, 13·13, 256]
    /// → pool3 [B, 6·6, 256]), then flattened to [B, 9216].
    fn features_observed<T: LayerTape<E, D>>(
        &mut self,
        mut x: Act<E, D, T>,
        observe: &mut dyn FnMut(&'static str, &'static str),
    ) -> Mat<E, D, T> {
        for block in &mut self.blocks {
            let (conv, lrn, pool) = block.names;
            let o = &mut *observe;
            let y = block.conv.forward_observed(x, &mut |s| o(conv, s)); //  [B, S_conv², C_out]
            let y = stage(observe, conv, "relu", || y.relu());
            let y = match &block.lrn {
                Some(l) => stage(observe, lrn, "", || l.forward(y)), //       [B, S_conv², C_out]
                None => y,
            };
            x = match &mut block.pool {
                Some(p) => stage(observe, pool, "", || p.forward(y)), //      [B, S_out², C_out]
                None => y,
            };
        }
        layers::flatten(x) //                                                 [B, S_out²·C_out]
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
        let b = &self.blocks;
        let layers = [
            &b[0].conv.affine,
            &b[1].conv.affine,
            &b[2].conv.affine,
            &b[3].conv.affine,
            &b[4].conv.affine,
            &self.fc6,
            &self.fc7,
            &self.fc8,
        ];
        std::array::from_fn(|i| (TORCH_NAMES[i], layers[i], layouts[i]))
    }

    pub fn layers_mut(&mut self) -> [&mut Affine<E, D>; 8] {
        let [b1, b2, b3, b4, b5] = &mut self.blocks;
        [
            &mut b1.conv.affine,
            &mut b2.conv.affine,
            &mut b3.conv.affine,
            &mut b4.conv.affine,
            &mut b5.conv.affine,
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
    let blocks = spec.blocks();
    let last = blocks[CONV_BLOCKS - 1];
    std::array::from_fn(|i| match i {
        0..CONV_BLOCKS => TorchLayout::Conv {
            kernel: blocks[i].conv.kernel,
            in_channels: blocks[i].in_channels,
        },
        CONV_BLOCKS => TorchLayout::LinearAfterFlatten {
            pixels: last.out_side() * last.out_side(),
            channels: last.out_channels,
        },
        _ => TorchLayout::Linear,
    })
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
