//! The fast path's backward pass replayed in f64 from its own activations: a check of the
//! backward arithmetic that non-differentiable points cannot upset.
//!
//! Two correct implementations of a step differ where a ReLU's input or the two largest values
//! of a pooling window lie within rounding of each other: each routes the gradient by its own
//! forward values, and the difference is carried down to every layer below. Held against an
//! independent reference, a correct fast path then fails at whichever batch happens to contain
//! such a point. The replay takes the fast path's own activations, so its ReLU masks and pooling
//! arg-maxes are the fast path's decisions and any remaining difference is arithmetic. The same
//! backward pass from an exact (f64) forward pass shows the gap the decisions make, and the
//! decisions that differ are counted per stage.

use super::{compare, Comparison, Kind};
use crate::engine::fast::Recorded;
use crate::kernels::{loops, LrnParams, MatMul, Planes, PoolShape};
use crate::model::{CONV_BLOCKS, TORCH_NAMES};

/// One block's activations in f64.
pub struct BlockTrace {
    pub relu: Vec<f64>,
    pub lrn: Option<Vec<f64>>,
    pub pool: Option<Vec<f64>>,
}

impl BlockTrace {
    /// What the block's pooling reads (its LRN's output, else its ReLU's).
    fn pool_input(&self) -> &[f64] {
        self.lrn.as_deref().unwrap_or(&self.relu)
    }

    /// What the next block reads.
    fn output(&self) -> &[f64] {
        self.pool.as_deref().unwrap_or_else(|| self.pool_input())
    }
}

/// The convolutional part's activations for one batch, in f64.
pub struct Trace {
    pub input: Vec<f64>,
    pub blocks: Vec<BlockTrace>,
}

fn wide(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

impl Trace {
    /// The fast path's own activations.
    pub fn recorded(rec: &Recorded) -> Self {
        Self {
            input: wide(&rec.input),
            blocks: rec
                .blocks
                .iter()
                .map(|b| BlockTrace {
                    relu: wide(&b.relu),
                    lrn: b.lrn.as_deref().map(wide),
                    pool: b.pool.as_deref().map(wide),
                })
                .collect(),
        }
    }

    /// The forward pass in f64 from the fast path's input and parameters.
    pub fn exact(rec: &Recorded) -> Self {
        let input = wide(&rec.input);
        let mut blocks: Vec<BlockTrace> = Vec::with_capacity(rec.blocks.len());
        for b in &rec.blocks {
            let shape = b.block.conv_shape(rec.batch);
            let planes = shape.output_planes();
            let x = blocks.last().map_or(&input[..], |t| t.output());
            let mut relu = vec![0.0; shape.output_len()];
            loops::conv_forward(&shape, x, &wide(&b.weight), &mut relu);
            loops::bias_relu(&planes, &mut relu, &wide(&b.bias));
            let lrn = b.block.lrn.then(|| lrn_forward(&planes, &rec.lrn, &relu).0);
            let pool = b
                .block
                .pool_shape(rec.batch)
                .map(|s| pool_forward(&s, lrn.as_deref().unwrap_or(&relu)).0);
            blocks.push(BlockTrace { relu, lrn, pool });
        }
        Self { input, blocks }
    }
}

/// LRN's output and denominators.
fn lrn_forward(planes: &Planes, lrn: &LrnParams, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut d) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    loops::lrn_forward(planes, lrn, x, &mut y, &mut d);
    (y, d)
}

/// Pooling's output and each window's choice (see `loops::pool_forward`).
fn pool_forward(shape: &PoolShape, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut argmax) = (vec![0.0; shape.output_len()], vec![0.0; shape.output_len()]);
    loops::pool_forward(shape, x, &mut y, &mut argmax);
    (y, argmax)
}

/// Every block's gradients `(weight OIHW, bias)`: the fast path's backward pass in f64, its
/// inputs and decisions (ReLU masks, pooling arg-maxes) taken from `trace`, from the head's
/// gradient of the flattened, channels-last features.
pub fn backward(rec: &Recorded, trace: &Trace, d_features: &[f32]) -> Vec<(Vec<f64>, Vec<f64>)> {
    let batch = rec.batch;
    let Some(last) = rec.blocks.last() else {
        return Vec::new();
    };
    let side = last.block.out_side();
    let features = Planes {
        batch,
        channels: last.block.out_channels,
        pixels: side * side,
    };
    let mut d_output = loops::to_nchw(&features, &wide(d_features));
    let mut grads = vec![(Vec::new(), Vec::new()); rec.blocks.len()];
    for (i, (b, t)) in rec.blocks.iter().zip(&trace.blocks).enumerate().rev() {
        let shape = b.block.conv_shape(batch);
        let planes = shape.output_planes();
        // Back through the pooling and LRN to the ReLU's output.
        let mut d = match b.block.pool_shape(batch) {
            Some(s) => {
                // The windows' choices made again from the recorded input by the forward's own
                // rule: the fast path's decisions.
                let (_, argmax) = pool_forward(&s, t.pool_input());
                let mut dx = vec![0.0; s.input_len()];
                loops::pool_backward(&s, &argmax, &d_output, &mut dx);
                dx
            }
            None => std::mem::take(&mut d_output),
        };
        if b.block.lrn {
            let (_, denominators) = lrn_forward(&planes, &rec.lrn, &t.relu);
            let mut dx = vec![0.0; d.len()];
            loops::lrn_backward(&planes, &rec.lrn, &t.relu, &denominators, &d, &mut dx);
            d = dx;
        }
        let mut db = vec![0.0; b.block.out_channels];
        loops::relu_bias_backward(&planes, &t.relu, &mut d, &mut db);
        let x = match i {
            0 => &trace.input[..],
            _ => trace.blocks[i - 1].output(),
        };
        let mut dw = vec![0.0; shape.filter_len()];
        loops::conv_backward_filter(&shape, x, &d, &mut dw);
        if i > 0 {
            d_output = vec![0.0; shape.input_len()];
            loops::conv_backward_data(&shape, &d, &wide(&b.weight), &mut d_output);
        }
        grads[i] = (dw, db);
    }
    grads
}

/// How many of one stage's decisions the fast path made otherwise than exact arithmetic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decisions {
    pub stage: String,
    pub differing: usize,
    pub total: usize,
}

/// Per ReLU and pooling stage: the decisions (ReLU active or not, each window's arg-max) in
/// which two traces differ.
pub fn decisions(rec: &Recorded, a: &Trace, b: &Trace) -> Vec<Decisions> {
    let mut out = Vec::new();
    for (block, (ta, tb)) in rec.blocks.iter().zip(a.blocks.iter().zip(&b.blocks)) {
        let (conv, _, pool) = block.block.names();
        let relu = ta
            .relu
            .iter()
            .zip(&tb.relu)
            .filter(|(x, y)| (**x > 0.0) != (**y > 0.0))
            .count();
        out.push(Decisions {
            stage: format!("{conv} relu"),
            differing: relu,
            total: ta.relu.len(),
        });
        if let Some(s) = block.block.pool_shape(rec.batch) {
            let (xa, xb) = (ta.pool_input(), tb.pool_input());
            let (plane, out_side) = (s.size * s.size, s.out_size());
            let mut differing = 0;
            for p in 0..s.batch * s.channels {
                let (xa, xb) = (&xa[p * plane..][..plane], &xb[p * plane..][..plane]);
                for oy in 0..out_side {
                    for ox in 0..out_side {
                        let at = |x: &[f64]| loops::window_max(&s, x, oy, ox);
                        differing += usize::from(at(xa) != at(xb));
                    }
                }
            }
            out.push(Decisions {
                stage: pool.to_string(),
                differing,
                total: s.output_len(),
            });
        }
    }
    out
}

/// The fast path's conv gradients against the replay from its own activations (`Kind::Replay`,
/// held to a tolerance) and against the replay from the exact forward pass (`Kind::EndToEnd`,
/// reported only); with the decisions the fast path made otherwise than exact arithmetic.
pub fn against_replay(rec: &Recorded, d_features: &[f32]) -> (Vec<Comparison>, Vec<Decisions>) {
    let own = Trace::recorded(rec);
    let exact = Trace::exact(rec);
    let replayed = backward(rec, &own, d_features);
    let from_exact = backward(rec, &exact, d_features);
    let mut out = Vec::new();
    for (kind, grads, how) in [
        (Kind::Replay, &replayed, "replayed"),
        (Kind::EndToEnd, &from_exact, "exact"),
    ] {
        for (b, (dw, db)) in rec.blocks.iter().zip(grads) {
            let name = b.block.names().0;
            out.push(compare(
                kind,
                &format!("{how} d {name}.weight"),
                &b.weight_grad,
                dw,
            ));
            out.push(compare(
                kind,
                &format!("{how} d {name}.bias"),
                &b.bias_grad,
                db,
            ));
        }
    }
    (out, decisions(rec, &own, &exact))
}

/// The fully connected part's backward pass replayed in f64 from the fast path's own
/// activations (its ReLU decisions and dropout masks) and the step's `labels`: each layer's
/// weight and bias gradient and the features' gradient, held against the fast path's.
pub fn against_head_replay(rec: &Recorded, labels: &[u32]) -> Vec<Comparison> {
    let batch = rec.batch;
    let head = &rec.head;
    let Some(last) = head.last() else {
        return Vec::new();
    };
    // The gradient of the mean loss with respect to the fast path's logits.
    let classes = last.outputs;
    let mut row_stats = vec![0.0; 2 * batch];
    let mut d_out = vec![0.0; batch * classes];
    loops::softmax_cross_entropy(
        classes,
        batch,
        &wide(&last.out),
        labels,
        &mut row_stats,
        &mut d_out,
    );
    let mut out = Vec::new();
    let features = wide(&rec.features);
    let mut d_features = Vec::new();
    for (i, layer) in head.iter().enumerate().rev() {
        let (inputs, outputs) = (layer.inputs, layer.outputs);
        if layer.relu {
            let y = &layer.out;
            for (g, &v) in d_out.iter_mut().zip(y) {
                if v <= 0.0 {
                    *g = 0.0;
                }
            }
        }
        let mut db = vec![0.0; outputs];
        loops::bias_backward(batch, outputs, &d_out, &mut db);
        // What the layer read: the features or the layer below's output, times its mask.
        let mut x = match i {
            0 => features.clone(),
            _ => wide(&head[i - 1].out),
        };
        if let Some(mask) = &layer.mask {
            x.iter_mut().zip(mask).for_each(|(x, &m)| *x *= m as f64);
        }
        let mut dw = vec![0.0; inputs * outputs];
        let weight = MatMul::dense_weight_gradient(batch, inputs, outputs);
        loops::dense_matmul(&weight, &x, &d_out, &mut dw);
        let mut dx = vec![0.0; batch * inputs];
        let data = MatMul::dense_input_gradient(batch, inputs, outputs);
        loops::dense_matmul(&data, &d_out, &wide(&layer.weight), &mut dx);
        if let Some(mask) = &layer.mask {
            dx.iter_mut().zip(mask).for_each(|(g, &m)| *g *= m as f64);
        }
        let name = TORCH_NAMES[CONV_BLOCKS + i];
        let what = |t| format!("replayed d {name}.{t}");
        out.push(compare(
            Kind::Replay,
            &what("weight"),
            &layer.weight_grad,
            &dw,
        ));
        out.push(compare(Kind::Replay, &what("bias"), &layer.bias_grad, &db));
        d_out = dx;
        if i == 0 {
            d_features = std::mem::take(&mut d_out);
        }
    }
    out.push(compare(
        Kind::Replay,
        "replayed d features",
        &rec.d_features,
        &d_features,
    ));
    out
}
