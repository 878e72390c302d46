//! What each stage of a fast-path training step must at least move through memory, and the
//! arithmetic it does: the floor a profile's times are measured against. A stage that takes
//! far longer than its bytes at the device's bandwidth is worth work; one near it is done.
//!
//! The bytes are the stage's job, not its implementation's: every tensor it reads once and
//! every tensor it writes once, f32 (the u8 pixels as bytes). Two passes over a tensor where
//! one would do (bias and ReLU after a convolution, a transposed copy of the filters) count
//! once, so the floor also shows what fusing would gain.

use super::{Phase, Stage};
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
/// the same order and with the same names), for `batch` images of `spec`'s network.
pub fn fast_step_costs(spec: &Spec, batch: usize) -> Vec<StageCost> {
    let b = batch as u64;
    let blocks = spec.blocks();
    let input = blocks[0].conv_shape(batch);
    // u8 pixels in (a quarter of an f32 each), the mean table's value for each, f32 out.
    let pixels = input.input_len() as u64;
    let mut costs = vec![StageCost {
        stage: Stage {
            phase: Phase::Input,
            what: super::fast::NORMALISE.to_string(),
        },
        bytes: pixels + 2 * pixels * F32,
        flops: 3 * pixels,
    }];
    let mut push = |phase, what: &str, values: u64, flops: u64| {
        costs.push(StageCost {
            stage: Stage {
                phase,
                what: what.to_string(),
            },
            bytes: values * F32,
            flops,
        })
    };

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
            x + w + bias + y,
            conv_flops(block) + 2 * y,
        );
        if block.lrn {
            // In, out and the denominators kept for the backward pass.
            push(
                Phase::Forward,
                lrn,
                3 * y,
                2 * y * spec.config.lrn_size as u64,
            );
        }
        if let Some(p) = block.pool_shape(batch) {
            let (i, o) = (p.input_len() as u64, p.output_len() as u64);
            // In, out and each window's choice.
            push(
                Phase::Forward,
                pool,
                i + 2 * o,
                o * (p.kernel * p.kernel) as u64,
            );
        }
    }
    let features = (batch * spec.fc6_inputs()) as u64;
    push(Phase::Forward, "flatten", 2 * features, 0);
    let fc = fc_layers(spec);
    for &(name, inputs, outputs, dropout) in &fc {
        let (i, o) = ((inputs * batch) as u64, (outputs * batch) as u64);
        let weights = (inputs * outputs + outputs) as u64;
        // Input in, the mask written and the dropped input kept, weights in, output out.
        let masks = if dropout { 2 * i } else { 0 };
        push(
            Phase::Forward,
            name,
            i + masks + weights + o,
            2 * i * outputs as u64,
        );
    }
    let logits = (batch * spec.classes) as u64;
    // Logits in, their gradient out; a loss and a rank per row.
    push(Phase::Forward, "loss", 2 * logits + 2 * b, 5 * logits);

    for &(name, inputs, outputs, dropout) in fc.iter().rev() {
        let (i, o) = ((inputs * batch) as u64, (outputs * batch) as u64);
        let weights = (inputs * outputs + outputs) as u64;
        // The output's gradient and the layer's input in; the weights in, their gradient out;
        // the input's gradient out (through the mask: mask in).
        let masks = if dropout { i } else { 0 };
        push(
            Phase::Backward,
            name,
            o + i + 2 * weights + i + masks,
            4 * i * outputs as u64,
        );
    }
    push(Phase::Backward, "flatten", 2 * features, 0);
    for block in blocks.iter().rev() {
        let (conv, lrn, pool) = block.names();
        let [x, w, y, bias] = conv_values(block, batch);
        if let Some(p) = block.pool_shape(batch) {
            let (i, o) = (p.input_len() as u64, p.output_len() as u64);
            // Choices and gradient in, the input's gradient out.
            push(Phase::Backward, pool, 2 * o + i, o);
        }
        if block.lrn {
            // Input, denominators and gradient in; the input's gradient out.
            push(
                Phase::Backward,
                lrn,
                4 * y,
                4 * y * spec.config.lrn_size as u64,
            );
        }
        // The activation and its gradient in, the masked gradient and the bias's out.
        push(
            Phase::Backward,
            &format!("{conv} relu+bias"),
            3 * y + bias,
            2 * y,
        );
        push(
            Phase::Backward,
            &format!("{conv} filter"),
            x + y + w,
            conv_flops(block),
        );
        if block.number > 1 {
            push(
                Phase::Backward,
                &format!("{conv} data"),
                y + w + x,
                conv_flops(block),
            );
        }
    }
    let params = spec_params(spec);
    // Weights, momentum and gradient in; weights and momentum out.
    push(Phase::Update, "sgd", 5 * params, 5 * params);
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
        let costs = fast_step_costs(&spec, 128);
        let conv1 = costs.iter().find(|c| c.stage.what == "conv1").unwrap();
        // 96 filters of 3·11·11 at 55×55 positions, 2 flops per multiply-add, 128 images,
        // plus bias and ReLU.
        let products = 2 * 128 * 55 * 55 * 96 * 3 * 11 * 11;
        assert_eq!(conv1.flops, products + 2 * 128 * 96 * 55 * 55);
        // A whole step at batch 128: 7.1 GB and 0.85 TFLOP; on an H200's data sheet (4.8 TB/s,
        // about 495 TFLOP/s dense TF32) 1.5 ms of memory traffic and 1.7 ms of arithmetic.
        let bytes: u64 = costs.iter().map(|c| c.bytes).sum();
        let flops: u64 = costs.iter().map(|c| c.flops).sum();
        assert_eq!((bytes, flops), (7_114_914_560, 847_582_092_040));
        let sgd = costs.last().unwrap();
        assert_eq!(sgd.bytes, 5 * 4 * 62_378_344);
        // Every stage moves something, and names are unique within their phase.
        let mut seen = std::collections::HashSet::new();
        for c in &costs {
            assert!(c.bytes > 0, "{}", c.stage);
            assert!(seen.insert(c.stage.to_string()), "{} twice", c.stage);
        }
    }
}
