//! What each stage of a fast-path training step must at least move through memory, and the
//! arithmetic it does: the floor a profile's times are measured against. A stage that takes
//! far longer than its bytes at the device's bandwidth is worth work; one near it is done.
//!
//! The bytes are the stage's job, not its implementation's: every tensor it reads once and
//! every tensor it writes once, activations in the precision's element type (2 bytes in bf16),
//! everything else f32 (the u8 pixels as bytes). Two passes over a tensor where one would do
//! (bias and ReLU after a convolution, a converted copy of the filters) count once, so the
//! floor also shows what fusing would gain.

use super::{Phase, Stage};
use crate::config::Precision;
use crate::model::{ConvBlock, Spec, CONV_BLOCKS};

/// One stage's floor: the bytes it must move and the floating-point operations it does.
#[derive(Debug, Clone, PartialEq)]
pub struct StageCost {
    pub stage: Stage,
    pub bytes: u64,
    pub flops: u64,
}

const F32: u64 = 4;

/// Every stage the fast path's training step reports (`StepEngine::train_step_observed`, in
/// the same order and with the same names), for `batch` images of `spec`'s network in
/// `precision`.
pub fn fast_step_costs(spec: &Spec, batch: usize, precision: Precision) -> Vec<StageCost> {
    let b = batch as u64;
    let blocks = spec.blocks();
    let input = blocks[0].conv_shape(batch);
    let act = precision.activation_bytes() as u64;
    // u8 pixels in, the mean table's f32 value for each, the activation out.
    let pixels = input.input_len() as u64;
    let mut costs = vec![StageCost {
        stage: Stage {
            phase: Phase::Input,
            what: super::fast::NORMALISE.to_string(),
        },
        bytes: pixels + pixels * F32 + pixels * act,
        flops: 3 * pixels,
    }];
    // A stage moving `floats` f32 values and `activations` activation values.
    let mut push = |phase, what: &str, [floats, activations]: [u64; 2], flops: u64| {
        costs.push(StageCost {
            stage: Stage {
                phase,
                what: what.to_string(),
            },
            bytes: floats * F32 + activations * act,
            flops,
        })
    };

    let fc = fc_layers(spec);
    // Each mask written (f32), for the layers with dropout in front.
    let masks: u64 = fc
        .iter()
        .filter(|&&(.., dropout)| dropout)
        .map(|&(_, inputs, ..)| (inputs * batch) as u64)
        .sum();
    if masks > 0 {
        push(Phase::Input, super::fast::MASKS, [masks, 0], 0);
    }

    let conv_flops = |block: &ConvBlock| {
        let s = block.conv_shape(batch);
        let out = (s.out_size() * s.out_size()) as u64;
        2 * b * out * (s.out_channels * s.in_channels * s.kernel * s.kernel) as u64
    };
    for block in &blocks {
        let (conv, lrn, pool) = block.names();
        let [x, w, y, bias] = conv_values(block, batch);
        // Convolution, bias and ReLU: the input and filters in, the activation out.
        push(
            Phase::Forward,
            conv,
            [w + bias, x + y],
            conv_flops(block) + 2 * y,
        );
        if block.lrn {
            // In, out and the denominators (f32) kept for the backward pass.
            push(
                Phase::Forward,
                lrn,
                [y, 2 * y],
                2 * y * spec.config.lrn_size as u64,
            );
        }
        if let Some(p) = block.pool_shape(batch) {
            let (i, o) = (p.input_len() as u64, p.output_len() as u64);
            // In, out and each window's choice (f32).
            push(
                Phase::Forward,
                pool,
                [o, i + o],
                o * (p.kernel * p.kernel) as u64,
            );
        }
    }
    // pool5's output in, the f32 features out.
    let features = (batch * spec.fc6_inputs()) as u64;
    push(Phase::Forward, "flatten", [features, features], 0);
    for &(name, inputs, outputs, dropout) in &fc {
        let (i, o) = ((inputs * batch) as u64, (outputs * batch) as u64);
        let weights = (inputs * outputs + outputs) as u64;
        // Input and mask in, the dropped input kept, weights in, output out.
        let masks = if dropout { 2 * i } else { 0 };
        push(
            Phase::Forward,
            name,
            [i + masks + weights + o, 0],
            2 * i * outputs as u64,
        );
    }
    let logits = (batch * spec.classes) as u64;
    // Logits in, their gradient out; a loss and a rank per row.
    push(Phase::Forward, "loss", [2 * logits + 2 * b, 0], 5 * logits);

    for &(name, inputs, outputs, dropout) in fc.iter().rev() {
        let (i, o) = ((inputs * batch) as u64, (outputs * batch) as u64);
        let weights = (inputs * outputs + outputs) as u64;
        // The output's gradient and the layer's input in; the weights in, their gradient out;
        // the input's gradient out (through the mask: mask in).
        let masks = if dropout { i } else { 0 };
        push(
            Phase::Backward,
            name,
            [o + i + 2 * weights + i + masks, 0],
            4 * i * outputs as u64,
        );
    }
    push(Phase::Backward, "flatten", [features, features], 0);
    for block in blocks.iter().rev() {
        let (conv, lrn, pool) = block.names();
        let [x, w, y, bias] = conv_values(block, batch);
        if let Some(p) = block.pool_shape(batch) {
            let (i, o) = (p.input_len() as u64, p.output_len() as u64);
            // Choices (f32) and gradient in, the input's gradient out.
            push(Phase::Backward, pool, [o, o + i], o);
        }
        if block.lrn {
            // Input, denominators (f32) and gradient in; the input's gradient out.
            push(
                Phase::Backward,
                lrn,
                [y, 3 * y],
                4 * y * spec.config.lrn_size as u64,
            );
        }
        // The activation and its gradient in, the masked gradient and the bias's out.
        push(
            Phase::Backward,
            &format!("{conv} relu+bias"),
            [bias, 3 * y],
            2 * y,
        );
        push(
            Phase::Backward,
            &format!("{conv} filter"),
            [w, x + y],
            conv_flops(block),
        );
        if block.number > 1 {
            push(
                Phase::Backward,
                &format!("{conv} data"),
                [w, y + x],
                conv_flops(block),
            );
        }
    }
    let params = spec_params(spec);
    // Weights, momentum and gradient in; weights and momentum out.
    push(Phase::Update, "sgd", [5 * params, 0], 5 * params);
    costs
}

/// A convolution's input, filter, output and bias values.
fn conv_values(block: &ConvBlock, batch: usize) -> [u64; 4] {
    let s = block.conv_shape(batch);
    [
        s.input_len(),
        s.filter_len(),
        s.output_len(),
        s.out_channels,
    ]
    .map(|n| n as u64)
}

/// The fully connected layers: name, inputs, outputs, and whether dropout comes before.
fn fc_layers(spec: &Spec) -> [(&'static str, usize, usize, bool); 3] {
    let units = spec.config.fc_units;
    let dropout = spec.config.dropout > 0.0;
    [
        ("fc6", spec.fc6_inputs(), units, dropout),
        ("fc7", units, units, dropout),
        ("fc8", units, spec.classes, false),
    ]
}

/// Every weight and bias of the network.
fn spec_params(spec: &Spec) -> u64 {
    let conv: usize = spec
        .blocks()
        .iter()
        .map(|b| b.conv_shape(1).filter_len() + b.out_channels)
        .sum();
    let fc: usize = fc_layers(spec).iter().map(|&(_, i, o, _)| i * o + o).sum();
    debug_assert_eq!(spec.blocks().len(), CONV_BLOCKS);
    (conv + fc) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    /// The paper's network on one device (conv2, conv4 and conv5 not split into two groups):
    /// 62,378,344 parameters with 1,000 classes, and a convolution's arithmetic by hand.
    #[test]
    fn the_papers_network_costs_what_its_shapes_say() {
        let spec = Spec::new(&ModelConfig::default(), 224, 1000).unwrap();
        assert_eq!(spec_params(&spec), 62_378_344);
        let costs = fast_step_costs(&spec, 128, Precision::Tf32);
        let conv1 = costs.iter().find(|c| c.stage.what == "conv1").unwrap();
        // 96 filters of 3·11·11 at 55×55 positions, 2 flops per multiply-add, 128 images,
        // plus bias and ReLU.
        let products = 2 * 128 * 55 * 55 * 96 * 3 * 11 * 11;
        assert_eq!(conv1.flops, products + 2 * 128 * 96 * 55 * 55);
        // A whole step at batch 128: 7.1 GB and 0.85 TFLOP; on an H200's data sheet (4.8 TB/s,
        // about 495 TFLOP/s dense TF32) 1.5 ms of memory traffic and 1.7 ms of arithmetic.
        let bytes: u64 = costs.iter().map(|c| c.bytes).sum();
        let flops: u64 = costs.iter().map(|c| c.flops).sum();
        assert_eq!((bytes, flops), (7_121_730_304, 847_582_092_040));
        // The masks: one f32 per input of FC6 (9,216) and FC7 (4,096) and image.
        let masks = costs
            .iter()
            .find(|c| c.stage.what == "dropout masks")
            .unwrap();
        assert_eq!(masks.bytes, 4 * 128 * (9216 + 4096));
        let sgd = costs.last().unwrap();
        assert_eq!(sgd.bytes, 5 * 4 * 62_378_344);
        // Every stage moves something, and names are unique within their phase.
        let mut seen = std::collections::HashSet::new();
        for c in &costs {
            assert!(c.bytes > 0, "{}", c.stage);
            assert!(seen.insert(c.stage.to_string()), "{} twice", c.stage);
        }
        // In bf16 every activation value is 2 bytes: conv1's input and output at half.
        let bf16 = fast_step_costs(&spec, 128, Precision::Bf16);
        let conv1_bf16 = bf16.iter().find(|c| c.stage.what == "conv1").unwrap();
        let activations = 128 * (3 * 224 * 224 + 96 * 55 * 55);
        assert_eq!(conv1.bytes - conv1_bf16.bytes, 2 * activations);
        assert_eq!(
            bf16.last().unwrap().bytes,
            sgd.bytes,
            "SGD is f32 in every precision"
        );
        // The whole bf16 step: 4.9 GB, of which SGD's 1.25 GB and the fully connected part's
        // weights stay f32.
        let bf16_bytes: u64 = bf16.iter().map(|c| c.bytes).sum();
        assert_eq!(bf16_bytes, 4_950_891_264);
    }
}
