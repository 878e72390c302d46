//! `alexnet check-fast`: the fast path's kernels against the host kernels, and one training
//! step of the fast path on the same weights and batch as the dfdx engine, as relative errors
//! `‖fast − reference‖ / ‖reference‖` per tensor. The step's forward pass is held to dfdx's
//! logits; its backward pass to an f64 replay from its own activations (`replay`: immune to
//! the ReLU and pooling kinks that make two correct implementations' gradients differ); its
//! SGD update to the same update in f64. Gradients against dfdx are reported, not held.
//! Run by the tests on the CPU (host kernels) and on a GPU by `alexnet check-fast`.

mod replay;

pub use replay::Decisions;

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::ComputeConfig;
use crate::device::FastDevice;
use crate::engine::fast::{FastError, FastNet};
use crate::engine::head::DropoutKey;
use crate::engine::loss::mean_cross_entropy;
use crate::engine::sgd::Sgd;
use crate::kernels::host::HostKernels;
use crate::kernels::{
    ConvShape, DropoutMask, InputBatch, KernelError, KernelResult, Kernels, LrnParams, MatMul,
    Planes, PoolShape, SgdStep, SgdTensor,
};
use crate::model::{Act, AlexNet, DropoutMasks, Spec, CONV_BLOCKS, TORCH_NAMES};
use crate::pixels;

/// What a comparison compares, which sets the tolerance it is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An elementwise kernel (normalise, bias/ReLU, LRN, pooling, layout, SGD, the head's bias,
    /// mask product and softmax cross-entropy): float rounding.
    ElementwiseKernel,
    /// An elementwise kernel's output stored in bf16 (`Precision::Bf16`): the same f32
    /// arithmetic rounded once more, so where the device's f32 result differs from the
    /// host's by an ulp (LRN's powers) a value may round to the neighbouring bf16.
    Bf16Kernel,
    /// A kernel output that is a decision, not arithmetic (the input each pooling window
    /// chose): held to exact equality, since one differing index barely moves a relative error.
    ExactKernel,
    /// A convolution kernel or matrix product: the device's arithmetic for them (TF32 where
    /// allowed).
    ConvolutionKernel,
    /// A tensor of the whole network's forward pass (the logits), downstream of convolutions.
    Network,
    /// A gradient against the f64 replay of the fast path's own backward pass: arithmetic only.
    Replay,
    /// A gradient against a reference that made its own ReLU and pooling decisions (dfdx, or
    /// the replay from an exact forward pass): reported, not held to a tolerance, since a
    /// decision taken the other way at a near-tie moves it by more than rounding.
    EndToEnd,
    /// The step again from recorded passes (`compute.graphs`) against the step run directly:
    /// the same launches on the same buffers, so exactly equal.
    Recorded,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub name: String,
    pub kind: Kind,
    pub relative_error: f64,
    /// ‖reference‖: a comparison of near-zero tensors means little.
    pub norm: f64,
}

/// A random u8 batch with its mean table, lighting and scale, and the same batch normalised
/// on the host the way the dfdx path's input stage does.
pub struct TestBatch {
    pub pixels: Vec<u8>,
    pub mean_table: Vec<f32>,
    pub mean_rows: Vec<u32>,
    pub lighting: Vec<f32>,
    pub scale: [f32; 3],
    pub batch: usize,
    pub crop: usize,
    pub labels: Vec<u32>,
}

impl TestBatch {
    pub fn random(batch: usize, crop: usize, classes: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rows = 7;
        let row_len = crop * 3;
        Self {
            pixels: (0..batch * crop * crop * 3).map(|_| rng.random()).collect(),
            mean_table: (0..rows * row_len)
                .map(|_| rng.random_range(90.0..160.0))
                .collect(),
            mean_rows: (0..batch * crop).map(|i| (i % rows) as u32).collect(),
            lighting: (0..batch * 3)
                .map(|_| rng.random_range(-3.0..3.0))
                .collect(),
            scale: [0.017, 0.018, 0.016],
            batch,
            crop,
            labels: (0..batch)
                .map(|_| rng.random_range(0..classes as u32))
                .collect(),
        }
    }

    pub fn input(&self) -> InputBatch<'_> {
        InputBatch {
            pixels: &self.pixels,
            mean_rows: &self.mean_rows,
            lighting: &self.lighting,
            scale: self.scale,
            batch: self.batch,
            crop: self.crop,
        }
    }

    /// `(B, crop², 3)`, channels-last, as the dfdx path takes it.
    pub fn normalised(&self) -> Vec<f32> {
        let (crop, row_len) = (self.crop, self.crop * 3);
        let mut x = Vec::with_capacity(self.pixels.len());
        for b in 0..self.batch {
            for y in 0..crop {
                let row = self.mean_rows[b * crop + y] as usize * row_len;
                for xx in 0..crop {
                    for c in 0..3 {
                        x.push(pixels::normalize(
                            self.pixels[((b * crop + y) * crop + xx) * 3 + c],
                            self.mean_table[row + xx * 3 + c],
                            self.lighting[b * 3 + c],
                            self.scale[c],
                        ));
                    }
                }
            }
        }
        x
    }
}

/// `(‖fast − reference‖ / ‖reference‖, ‖reference‖)`; the reference in f32 or f64.
pub fn relative_error<R: Copy + Into<f64>>(fast: &[f32], reference: &[R]) -> (f64, f64) {
    assert_eq!(fast.len(), reference.len());
    let diff: f64 = fast
        .iter()
        .zip(reference)
        .map(|(&a, &b)| (a as f64 - b.into()).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|&b| b.into().powi(2)).sum();
    ((diff / norm.max(1e-300)).sqrt(), norm.sqrt())
}

fn compare<R: Copy + Into<f64>>(
    kind: Kind,
    name: &str,
    fast: &[f32],
    reference: &[R],
) -> Comparison {
    let (relative_error, norm) = relative_error(fast, reference);
    Comparison {
        name: name.into(),
        kind,
        relative_error,
        norm,
    }
}

/// The latest step of `against_dfdx` (whose gradients were `direct`) twice more without the
/// update — recorded the second time, replayed the third (`compute.graphs`) — its logits and
/// gradients against the first's, which ran every kernel directly.
fn recorded_passes<D: FastDevice>(
    net: &mut FastNet<D>,
    batch: &TestBatch,
    seed: u64,
    direct: &[(Vec<f32>, Vec<f32>)],
) -> Result<Vec<Comparison>, CheckError> {
    let direct_logits = net.logits()?;
    for _ in 0..2 {
        let key = DropoutKey {
            seed,
            step: 0,
            first_image: 0,
        };
        net.forward(&batch.input(), Some(key))?;
        net.loss(&batch.labels)?;
        net.backward()?;
    }
    let mut out = vec![compare(
        Kind::Recorded,
        "recorded passes: logits",
        &net.logits()?,
        &direct_logits,
    )];
    for (i, ((w, b), (w0, b0))) in net.gradients()?.iter().zip(direct).enumerate() {
        let name = |what| format!("recorded passes: d {}.{what}", TORCH_NAMES[i]);
        out.push(compare(Kind::Recorded, &name("weight"), w, w0));
        out.push(compare(Kind::Recorded, &name("bias"), b, b0));
    }
    Ok(out)
}

/// What one checked training step found.
pub struct StepCheck {
    pub comparisons: Vec<Comparison>,
    /// The ReLU and pooling decisions the fast path made otherwise than exact arithmetic.
    pub decisions: Vec<Decisions>,
    pub algorithms: Vec<String>,
}

/// One training step of `spec`'s network (dropout on) on the fast path, from the weights and
/// batch the dfdx engine also steps from: the logits against dfdx's; every gradient against
/// dfdx's (reported) and the conv gradients against the f64 replay (held); the conv layers'
/// SGD update against the same update in f64.
pub fn against_dfdx<D: FastDevice>(
    dev: &D,
    compute: &ComputeConfig,
    spec: &Spec,
    batch: &TestBatch,
    seed: u64,
) -> Result<StepCheck, CheckError> {
    let (lr, momentum, decay) = (0.01, 0.9, 5e-4);
    let mut model = AlexNet::<f32, D>::new(dev, spec.clone(), seed);
    let masks = DropoutMasks::draw(dev, spec, seed, 0, batch.batch);
    let x: Act<f32, D> = dev.tensor_from_vec(
        batch.normalised(),
        (batch.batch, batch.crop * batch.crop, 3),
    );
    let logits = model.forward(x.traced(Gradients::leaky()), masks.as_ref());
    let reference_logits = logits.as_vec();
    let reference_grads = mean_cross_entropy(logits, &batch.labels).backward();
    let reference: Vec<[Vec<f32>; 2]> = model
        .layers()
        .iter()
        .map(|(_, l, _)| {
            [
                reference_grads.get(&l.weight).as_vec(),
                reference_grads.get(&l.bias).as_vec(),
            ]
        })
        .collect();

    let sgd = Sgd::new(dev, &model, momentum, decay);
    let mut net = FastNet::new(
        dev.fast_kernels(compute)?,
        &model,
        Some(&sgd.velocity),
        momentum,
        decay,
    )?;
    net.kernels()
        .set_mean_table(&batch.mean_table, batch.crop * 3)?;
    // The fast path draws its masks on the device: equal to the host's, or the logits differ.
    net.forward(
        &batch.input(),
        Some(DropoutKey {
            seed,
            step: 0,
            first_image: 0,
        }),
    )?;
    net.loss(&batch.labels)?;
    let mut out = vec![compare(
        Kind::Network,
        "logits",
        &net.logits()?,
        &reference_logits,
    )];
    net.backward()?;

    let fast = net.gradients()?;
    if compute.graphs.is_on() {
        out.extend(recorded_passes(&mut net, batch, seed, &fast)?);
    }
    for (i, ([weight, bias], (fast_weight, fast_bias))) in reference.iter().zip(&fast).enumerate() {
        let name = |what| format!("dfdx d {}.{what}", TORCH_NAMES[i]);
        out.push(compare(
            Kind::EndToEnd,
            &name("weight"),
            fast_weight,
            weight,
        ));
        out.push(compare(Kind::EndToEnd, &name("bias"), fast_bias, bias));
    }

    let before = net.record()?;
    out.extend(replay::against_head_replay(&before, &batch.labels));
    let (replayed, decisions) = replay::against_replay(&before, &before.d_features);
    out.extend(replayed);

    net.sgd_step(lr)?;
    let after = net.record()?;
    let step = SgdStep {
        learning_rate: lr as f32,
        momentum: momentum as f32,
        weight_decay: decay as f32,
    };
    let conv = before.blocks.iter().zip(&after.blocks).map(|(b, a)| {
        let name = b.block.names().0;
        (
            name,
            [&b.weight, &b.weight_velocity, &b.weight_grad],
            [&a.weight, &a.weight_velocity],
        )
    });
    let head = before
        .head
        .iter()
        .zip(&after.head)
        .enumerate()
        .map(|(i, (b, a))| {
            let name = TORCH_NAMES[CONV_BLOCKS + i];
            (
                name,
                [&b.weight, &b.weight_velocity, &b.weight_grad],
                [&a.weight, &a.weight_velocity],
            )
        });
    for (name, [w, v, g], [new_weight, new_velocity]) in conv.chain(head) {
        let (weight, velocity) = sgd_in_f64(&step, w, v, g);
        let kind = Kind::ElementwiseKernel;
        out.push(compare(
            kind,
            &format!("sgd momentum {name}.weight"),
            new_velocity,
            &velocity,
        ));
        out.push(compare(
            kind,
            &format!("sgd updated {name}.weight"),
            new_weight,
            &weight,
        ));
    }
    Ok(StepCheck {
        comparisons: out,
        decisions,
        algorithms: net.kernels().algorithms(),
    })
}

/// One SGD step (`kernels::SgdStep`'s rule) in f64: the updated weights and momentum.
fn sgd_in_f64(step: &SgdStep, w: &[f32], v: &[f32], g: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (lr, m, decay) = (
        step.learning_rate as f64,
        step.momentum as f64,
        step.weight_decay as f64,
    );
    w.iter()
        .zip(v)
        .zip(g)
        .map(|((&w, &v), &g)| {
            let v = m * v as f64 + g as f64 + decay * w as f64;
            (w as f64 - lr * v, v)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Layout, ModelConfig, Precision};
    use crate::kernels::LayerGradients;

    fn small_spec(lrn: bool) -> Spec {
        let config = ModelConfig {
            conv_channels: [8, 12, 16, 16, 12],
            fc_units: 24,
            // Wide weights and positive biases keep the ReLUs alive so that gradients reach
            // conv1; α large enough for LRN to shape them.
            init_std: 0.05,
            init_bias: 0.1,
            lrn,
            lrn_alpha: 0.05,
            ..ModelConfig::default()
        };
        Spec::new(&config, 67, 5).unwrap()
    }

    /// The small network with LRN on the host kernels, and a batch of `images` drawn with
    /// `seed` whose mean table the kernels hold.
    fn small_net(images: usize, seed: u64) -> (Spec, FastNet<Cpu>, TestBatch) {
        let dev = Cpu::default();
        let spec = small_spec(true);
        let model = AlexNet::<f32, Cpu>::new(&dev, spec.clone(), 5);
        let kernels = dev.fast_kernels(&strict()).unwrap();
        let mut net = FastNet::new(kernels, &model, None, 0.9, 5e-4).unwrap();
        let batch = TestBatch::random(images, spec.input, spec.classes, seed);
        net.kernels()
            .set_mean_table(&batch.mean_table, batch.crop * 3)
            .unwrap();
        (spec, net, batch)
    }

    fn strict() -> ComputeConfig {
        ComputeConfig {
            precision: Precision::Strict,
            ..ComputeConfig::default()
        }
    }

    /// The held comparisons of a step that exceed their strict tolerance.
    fn failures(step: &StepCheck) -> Vec<String> {
        step.comparisons
            .iter()
            .filter(|c| {
                tolerance(c.kind, 1e-4)
                    .is_some_and(|t| c.relative_error.is_nan() || c.relative_error > t)
            })
            .map(|c| format!("{}: {:e}", c.name, c.relative_error))
            .collect()
    }

    fn check(lrn: bool) {
        check_spec(small_spec(lrn));
    }

    fn check_spec(spec: Spec) {
        let dev = Cpu::default();
        let batch = TestBatch::random(3, spec.input, spec.classes, 11);
        let step = against_dfdx(&dev, &strict(), &spec, &batch, 5).unwrap();
        // Logits, 16 gradients against dfdx, 6 replayed in the head and the features', 10
        // replayed in the convolutions, 10 from exact decisions, 16 SGD.
        assert_eq!(step.comparisons.len(), 1 + 16 + 7 + 10 + 10 + 16);
        for r in &step.comparisons {
            assert!(
                r.norm > 1e-6,
                "{} is ~0: the comparison would mean nothing",
                r.name
            );
        }
        assert_eq!(failures(&step), Vec::<String>::new());
        // On the host, both engines run the same loops: end to end they agree as well.
        for r in step.comparisons.iter().filter(|c| c.kind == Kind::EndToEnd) {
            assert!(
                r.relative_error < 1e-4,
                "{}: {:e}",
                r.name,
                r.relative_error
            );
        }
    }

    /// The replay holds at every batch size, kinks or not; and wherever the gradients from an
    /// exact forward pass differ by more than rounding, a decision differs.
    #[test]
    fn the_replay_passes_at_every_batch_size_from_1_to_16() {
        let dev = Cpu::default();
        let spec = small_spec(true);
        for size in 1..=16 {
            let batch = TestBatch::random(size, spec.input, spec.classes, 100 + size as u64);
            let step = against_dfdx(&dev, &strict(), &spec, &batch, 5).unwrap();
            assert_eq!(failures(&step), Vec::<String>::new(), "batch {size}");
            let gap = step
                .comparisons
                .iter()
                .filter(|c| c.name.starts_with("exact"))
                .map(|c| c.relative_error)
                .fold(0.0, f64::max);
            let differing: usize = step.decisions.iter().map(|d| d.differing).sum();
            assert!(
                gap < 1e-4 || differing > 0,
                "batch {size}: a gap of {gap:e} with no decision differing"
            );
        }
    }

    /// A rank whose slice of a batch is empty still takes part in the gradient sums: it hands
    /// over zeros of the same sizes, in the order a rank with images hands its gradients
    /// (FC8 first), since the ranks' sums pair up by order.
    #[test]
    fn an_empty_slice_hands_zero_gradients_in_the_backward_passes_order() {
        let (spec, mut net, batch) = small_net(3, 2);
        net.forward(&batch.input(), None).unwrap();
        net.loss(&batch.labels).unwrap();
        // Per handed tensor: its length, and whether any value is not zero.
        let mut full = Vec::new();
        let record = |into: &mut Vec<(usize, bool)>, grads: LayerGradients<'_, Cpu>| {
            for (buf, len) in grads {
                into.push((len, buf[..len].iter().any(|&v| v != 0.0)));
            }
        };
        net.backward_summed(
            &mut |g| {
                record(&mut full, g);
                Ok(())
            },
            &mut |_| {},
        )
        .unwrap();
        let mut empty = Vec::new();
        net.backward_empty(&mut |g| {
            record(&mut empty, g);
            Ok(())
        })
        .unwrap();
        assert_eq!(full.len(), 16);
        // FC8's bias comes second: one value per class.
        assert_eq!(full[1].0, spec.classes);
        let lens = |v: &[(usize, bool)]| v.iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(lens(&full), lens(&empty));
        assert!(
            full.iter().all(|t| t.1),
            "every gradient of a real batch has values"
        );
        assert!(empty.iter().all(|t| !t.1), "an empty slice adds nothing");
    }

    /// The fast path draws its dropout masks with its kernels: the same values the dfdx path
    /// draws on the host, step by step.
    #[test]
    fn the_fast_paths_dropout_masks_are_the_hosts() {
        let dev = Cpu::default();
        let (spec, mut net, batch) = small_net(5, 2);
        for step in [0, 1, 77] {
            net.forward(
                &batch.input(),
                Some(DropoutKey {
                    seed: 9,
                    step,
                    first_image: 0,
                }),
            )
            .unwrap();
            let rec = net.record().unwrap();
            let host = DropoutMasks::<f32, Cpu>::draw(&dev, &spec, 9, step, 5).unwrap();
            assert_eq!(
                rec.head[0].mask.as_ref(),
                Some(&host.fc6.as_vec()),
                "step {step}"
            );
            assert_eq!(
                rec.head[1].mask.as_ref(),
                Some(&host.fc7.as_vec()),
                "step {step}"
            );
            assert_eq!(rec.head[2].mask, None);
        }
    }

    /// A gradient off by 0.1% in one element of conv3's filter gradient fails conv3 alone.
    #[test]
    fn the_replay_catches_a_wrong_gradient() {
        let (_, mut net, batch) = small_net(4, 3);
        net.forward(&batch.input(), None).unwrap();
        net.loss(&batch.labels).unwrap();
        net.backward().unwrap();
        let mut rec = net.record().unwrap();
        let d_features = rec.d_features.clone();
        let held = |rec: &crate::engine::fast::Recorded| -> Vec<(String, f64)> {
            let (comparisons, _) = replay::against_replay(rec, &d_features);
            comparisons
                .into_iter()
                .filter(|c| c.kind == Kind::Replay)
                .map(|c| (c.name, c.relative_error))
                .collect()
        };
        assert!(
            held(&rec).iter().all(|(_, e)| *e < 1e-5),
            "{:?}",
            held(&rec)
        );
        let grad = &mut rec.blocks[2].weight_grad;
        let largest = (0..grad.len())
            .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
            .unwrap();
        let norm = grad.iter().map(|g| g * g).sum::<f32>().sqrt();
        grad[largest] += 1e-3 * norm;
        for (name, error) in held(&rec) {
            let wrong = name == "replayed d conv3.weight";
            assert_eq!(error > 5e-4, wrong, "{name}: {error:e}");
        }
    }

    /// On the CPU both sides are the host kernels, so this checks the cases themselves: every
    /// output must be a tensor worth comparing (not zeros from dead inputs).
    #[test]
    fn every_kernel_case_produces_a_meaningful_output() {
        let paper = Spec::new(&ModelConfig::default(), 224, 10).unwrap();
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let compute = ComputeConfig { layout, ..strict() };
            let results = kernels_against_host(&Cpu::default(), &compute, &paper).unwrap();
            assert_eq!(results.len(), 54);
            for r in &results {
                assert!(r.norm > 1e-3, "{layout:?} {}: norm {}", r.name, r.norm);
                assert_eq!(r.relative_error, 0.0, "{layout:?} {}", r.name);
            }
        }
    }

    #[test]
    fn host_fast_path_equals_dfdx_with_lrn() {
        check(true);
    }

    #[test]
    fn host_fast_path_equals_dfdx_without_lrn() {
        check(false);
    }

    /// A pipeline without dropout: the fully connected layers read their inputs directly and
    /// the head keeps no masks.
    #[test]
    fn host_fast_path_equals_dfdx_without_dropout() {
        let mut spec = small_spec(true);
        spec.config.dropout = 0.0;
        check_spec(spec);
    }
}

/// One kernel call on random inputs, run on two kernel sets and compared.
#[derive(Debug, Clone, Copy)]
enum Case {
    Normalize {
        batch: usize,
        crop: usize,
    },
    Conv(ConvShape),
    BiasRelu(Planes),
    Lrn(Planes, LrnParams),
    Pool(PoolShape),
    ChannelsLast(Planes),
    Sgd(usize),
    /// `sgd_all` over tensors of these lengths.
    SgdAll([usize; 3]),
    Dropout(DropoutMask),
    MatMul(MatMul),
    /// `bias_add`, then `bias_backward` of an independent gradient.
    Bias {
        rows: usize,
        columns: usize,
    },
    Multiply(usize),
    SoftmaxCrossEntropy {
        rows: usize,
        classes: usize,
    },
}

/// The update the SGD cases make.
const SGD_CASE_STEP: SgdStep = SgdStep {
    learning_rate: 0.01,
    momentum: 0.9,
    weight_decay: 5e-4,
};

/// The output of `Case::Pool` holding each window's choice.
const ARGMAX: &str = "argmax";

/// One output of a kernel case on the host.
struct CaseOutput {
    name: String,
    values: Vec<f32>,
    /// Whether it is an activation buffer (bf16 in `Precision::Bf16`).
    activation: bool,
}

/// Random values in `[lo, hi)`, the same for the same `seed`.
fn random(len: usize, (lo, hi): (f32, f32), seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// Runs `case` on `k`; returns each output, named, on the host.
fn run_case<D: Storage<f32>, K: Kernels<D>>(
    k: &mut K,
    case: Case,
) -> KernelResult<Vec<CaseOutput>> {
    // f32 buffers (`up`) and activation buffers (`act`, in the precision's element type).
    let up =
        |k: &mut K, len: usize, range: (f32, f32), seed: u64| k.upload(&random(len, range, seed));
    let act = |k: &mut K, len: usize, range: (f32, f32), seed: u64| {
        k.upload_activation(&random(len, range, seed))
    };
    // Each output with its length when it is an activation buffer.
    let out: Vec<(&str, crate::kernels::Buf<D>, Option<usize>)> = match case {
        Case::Normalize { batch, crop } => {
            // Three batches back to back, read only at the end: a larger one in the middle and
            // the first size again, so that a device which stages uploads must keep each batch's
            // inputs until its own normalisation has read them, grow its buffers, and reuse them.
            let names = [
                "normalize",
                "normalize, next batch larger",
                "normalize, third batch",
            ];
            let mut outputs = Vec::with_capacity(names.len());
            for (i, (name, images)) in names.into_iter().zip([batch, batch + 1, batch]).enumerate()
            {
                let data = TestBatch::random(images, crop, 10, 1 + i as u64);
                if i == 0 {
                    // Every test batch indexes the same number of rows of the same length.
                    k.set_mean_table(&data.mean_table, crop * 3)?;
                }
                let len = images * 3 * crop * crop;
                let mut x = k.alloc_activation(len)?;
                k.normalize(&data.input(), &mut x)?;
                outputs.push((name, x, Some(len)));
            }
            outputs
        }
        Case::Conv(s) => {
            let (x, w, dy) = (
                act(k, s.input_len(), (-1.0, 1.0), 2)?,
                up(k, s.filter_len(), (-0.1, 0.1), 3)?,
                act(k, s.output_len(), (-1.0, 1.0), 4)?,
            );
            let (mut y, mut dx, mut dw) = (
                k.alloc_activation(s.output_len())?,
                k.alloc_activation(s.input_len())?,
                k.alloc(s.filter_len())?,
            );
            k.conv_forward(&s, &x, &w, &mut y)?;
            k.conv_backward_data(&s, &dy, &w, &mut dx)?;
            k.conv_backward_filter(&s, &x, &dy, &mut dw)?;
            vec![
                ("forward", y, Some(s.output_len())),
                ("backward data", dx, Some(s.input_len())),
                ("backward filter", dw, None),
            ]
        }
        Case::BiasRelu(p) => {
            let (mut y, bias, mut dy) = (
                act(k, p.len(), (-1.0, 1.0), 5)?,
                up(k, p.channels, (-0.5, 0.5), 6)?,
                act(k, p.len(), (-1.0, 1.0), 7)?,
            );
            let mut db = k.alloc(p.channels)?;
            k.bias_relu(&p, &mut y, &bias)?;
            k.relu_bias_backward(&p, &y, &mut dy, &mut db)?;
            vec![
                ("bias+relu", y, Some(p.len())),
                ("relu backward", dy, Some(p.len())),
                ("bias gradient", db, None),
            ]
        }
        Case::Lrn(p, lrn) => {
            let (x, dy) = (
                act(k, p.len(), (0.0, 3.0), 8)?,
                act(k, p.len(), (-1.0, 1.0), 9)?,
            );
            let (mut y, mut d, mut dx) = (
                k.alloc_activation(p.len())?,
                k.alloc(p.len())?,
                k.alloc_activation(p.len())?,
            );
            k.lrn_forward(&p, &lrn, &x, &mut y, &mut d)?;
            k.lrn_backward(&p, &lrn, &x, &d, &dy, &mut dx)?;
            vec![
                ("forward", y, Some(p.len())),
                ("denominator", d, None),
                ("backward", dx, Some(p.len())),
            ]
        }
        Case::Pool(s) => {
            let (x, dy) = (
                act(k, s.input_len(), (-1.0, 1.0), 10)?,
                act(k, s.output_len(), (-1.0, 1.0), 11)?,
            );
            let (mut y, mut argmax, mut dx) = (
                k.alloc_activation(s.output_len())?,
                k.alloc(s.output_len())?,
                k.alloc_activation(s.input_len())?,
            );
            k.pool_forward(&s, &x, &mut y, &mut argmax)?;
            k.pool_backward(&s, &argmax, &dy, &mut dx)?;
            vec![
                ("forward", y, Some(s.output_len())),
                (ARGMAX, argmax, None),
                ("backward", dx, Some(s.input_len())),
            ]
        }
        Case::ChannelsLast(p) => {
            let x = act(k, p.len(), (-1.0, 1.0), 12)?;
            let (mut y, mut back) = (k.alloc(p.len())?, k.alloc_activation(p.len())?);
            k.flatten_channels_last(&p, &x, &mut y)?;
            k.unflatten_channels_last(&p, &y, &mut back)?;
            vec![("to", y, None), ("back", back, Some(p.len()))]
        }
        Case::Sgd(n) => {
            let (mut w, mut v, g) = (
                up(k, n, (-1.0, 1.0), 13)?,
                up(k, n, (-0.1, 0.1), 14)?,
                up(k, n, (-1.0, 1.0), 15)?,
            );
            k.sgd(&SGD_CASE_STEP, &mut w, &mut v, &g)?;
            vec![("weights", w, None), ("momentum", v, None)]
        }
        Case::SgdAll(lens) => {
            let mut buffers = Vec::with_capacity(lens.len());
            for (i, len) in lens.into_iter().enumerate() {
                let seed = 30 + 3 * i as u64;
                buffers.push((
                    up(k, len, (-1.0, 1.0), seed)?,
                    up(k, len, (-0.1, 0.1), seed + 1)?,
                    up(k, len, (-1.0, 1.0), seed + 2)?,
                ));
            }
            let mut tensors: Vec<_> = buffers
                .iter_mut()
                .map(|(w, v, g)| SgdTensor { w, v, g })
                .collect();
            k.sgd_all(&SGD_CASE_STEP, &mut tensors)?;
            // Each output is the tensors' values end to end.
            let (mut weights, mut momentum) = (Vec::new(), Vec::new());
            for (w, v, _) in &buffers {
                weights.extend(k.download(w)?);
                momentum.extend(k.download(v)?);
            }
            let (weights, momentum) = (k.upload(&weights)?, k.upload(&momentum)?);
            vec![("weights", weights, None), ("momentum", momentum, None)]
        }
        Case::Dropout(mask) => {
            let mut out = k.alloc(mask.len())?;
            k.dropout_mask(&mask, &mut out)?;
            vec![("mask", out, None)]
        }
        Case::MatMul(mm) => {
            let (a, b) = (
                up(k, mm.a_len(), (-1.0, 1.0), 16)?,
                up(k, mm.b_len(), (-1.0, 1.0), 17)?,
            );
            let mut c = k.alloc(mm.c_len())?;
            k.matmul(&mm, &a, &b, &mut c)?;
            vec![("product", c, None)]
        }
        Case::Bias { rows, columns } => {
            let (mut y, bias, dy) = (
                up(k, rows * columns, (-1.0, 1.0), 18)?,
                up(k, columns, (-0.5, 0.5), 19)?,
                up(k, rows * columns, (-1.0, 1.0), 20)?,
            );
            let mut db = k.alloc(columns)?;
            k.bias_add(rows, columns, &mut y, &bias)?;
            k.bias_backward(rows, columns, &dy, &mut db)?;
            vec![("bias add", y, None), ("bias gradient", db, None)]
        }
        Case::Multiply(n) => {
            let (x, m) = (up(k, n, (-1.0, 1.0), 21)?, up(k, n, (0.0, 2.0), 22)?);
            let mut y = k.alloc(n)?;
            k.multiply(n, &x, &m, &mut y)?;
            vec![("product", y, None)]
        }
        Case::SoftmaxCrossEntropy { rows, classes } => {
            let logits = up(k, rows * classes, (-10.0, 10.0), 23)?;
            // The first and the last class among them, so that both ends of a row are read.
            let labels: Vec<u32> = (0..rows)
                .map(|r| (r * (classes - 1) / (rows - 1).max(1)) as u32)
                .collect();
            let (mut row_stats, mut dlogits) = (k.alloc(2 * rows)?, k.alloc(rows * classes)?);
            // A rank's slice of a larger batch: the gradient's mean is over more rows.
            let mean_over = rows + 5;
            k.softmax_cross_entropy(
                rows,
                mean_over,
                classes,
                &logits,
                &labels,
                &mut row_stats,
                &mut dlogits,
            )?;
            vec![
                ("losses and ranks", row_stats, None),
                ("dlogits", dlogits, None),
            ]
        }
    };
    out.into_iter()
        .map(|(name, buf, activation)| {
            let values = match activation {
                Some(len) => k.download_activation(&buf, len)?,
                None => k.download(&buf)?,
            };
            Ok(CaseOutput {
                name: name.to_string(),
                values,
                activation: activation.is_some(),
            })
        })
        .collect()
}

/// The kernel cases of `spec`'s network at batch 2: every kernel on the shapes the network
/// gives it (conv1 to conv3 cover the three convolution geometries).
fn cases(spec: &Spec) -> Vec<(String, Case)> {
    const BATCH: usize = 2;
    let blocks = spec.blocks();
    let planes = |channels, side: usize| Planes {
        batch: BATCH,
        channels,
        pixels: side * side,
    };
    let lrn = LrnParams {
        size: spec.config.lrn_size,
        k: spec.config.lrn_k,
        // Larger than the paper's 1e-4, so that the normalisation visibly shapes the result.
        alpha: 0.05,
        beta: spec.config.lrn_beta,
    };
    let crop = spec.input;
    let mut cases = vec![(
        "normalize".to_string(),
        Case::Normalize { batch: BATCH, crop },
    )];
    for block in &blocks[..3] {
        let shape = block.conv_shape(BATCH);
        cases.push((block.names().0.to_string(), Case::Conv(shape)));
    }
    let first = blocks[0];
    let relu = planes(first.out_channels, first.conv_side());
    cases.push((
        format!("bias/relu {}", first.names().0),
        Case::BiasRelu(relu),
    ));
    // More values per channel than one block of the GPU's bias reduction sums (8192), with a
    // partial last chunk.
    let wide = Planes {
        batch: 3,
        channels: 5,
        pixels: 5_001,
    };
    cases.push(("bias/relu, several chunks".into(), Case::BiasRelu(wide)));
    for block in blocks.iter().filter(|b| b.lrn) {
        let p = planes(block.out_channels, block.conv_side());
        cases.push((format!("lrn {}", block.names().0), Case::Lrn(p, lrn)));
    }
    // Widths that are multiples of nothing: the NHWC kernels hold whole pixels' channels per
    // block (a partial last block here) or one pixel per block when the channels are many.
    let odd = Planes {
        batch: 3,
        channels: 37,
        pixels: 45,
    };
    cases.push(("lrn, odd widths".into(), Case::Lrn(odd, lrn)));
    let many = Planes {
        batch: 1,
        channels: 4_099,
        pixels: 3,
    };
    cases.push(("lrn, many channels".into(), Case::Lrn(many, lrn)));
    for block in [&blocks[0], &blocks[CONV_BLOCKS - 1]] {
        if let Some(shape) = block.pool_shape(BATCH) {
            cases.push((block.names().2.to_string(), Case::Pool(shape)));
        }
    }
    let odd_pool = PoolShape {
        batch: 2,
        channels: 37,
        size: 14,
        kernel: 3,
        stride: 2,
    };
    cases.push(("pool, odd widths".into(), Case::Pool(odd_pool)));
    let last = blocks[CONV_BLOCKS - 1];
    let features = planes(last.out_channels, last.out_side());
    cases.push(("flatten".into(), Case::ChannelsLast(features)));
    // An odd length, so that no kernel can rely on a multiple of its block size.
    cases.push(("sgd".into(), Case::Sgd(100_003)));
    cases.push(("sgd, all at once".into(), Case::SgdAll([100_003, 7, 4_099])));
    let mask = DropoutMask {
        key: crate::model::dropout_key(3, 5, 6),
        // Rows further into a batch (a rank's slice).
        first_image: 7,
        rate: spec.config.dropout.max(0.5) as f64,
        keep: 2.0,
        images: BATCH,
        units: spec.fc6_inputs(),
    };
    cases.push(("dropout".into(), Case::Dropout(mask)));
    // The three forms of product the fully connected layers' forward and backward passes take,
    // on sizes that are multiples of nothing.
    let (m, n, k) = (3, 11, 37);
    for (name, a_transposed, b_transposed) in [
        ("matmul", false, false),
        ("matmul, a transposed", true, false),
        ("matmul, b transposed", false, true),
    ] {
        let mm = MatMul {
            m,
            n,
            k,
            a_transposed,
            b_transposed,
        };
        cases.push((name.into(), Case::MatMul(mm)));
    }
    // More columns than one block of threads, and not a multiple of it.
    cases.push((
        "fc bias".into(),
        Case::Bias {
            rows: 7,
            columns: 1_001,
        },
    ));
    cases.push(("multiply".into(), Case::Multiply(10_007)));
    // Rows wider than the GPU's block, whose stride then leaves a partial last step.
    cases.push((
        "softmax cross-entropy".into(),
        Case::SoftmaxCrossEntropy {
            rows: 5,
            classes: 1_003,
        },
    ));
    cases
}

/// Every kernel of `dev` against the host kernels on random inputs of `spec`'s shapes: one
/// comparison per output.
pub fn kernels_against_host<D: FastDevice>(
    dev: &D,
    compute: &ComputeConfig,
    spec: &Spec,
) -> Result<Vec<Comparison>, CheckError> {
    let mut device = dev.fast_kernels(compute)?;
    // In the device's layout: the host's NHWC kernels compute in NCHW and transpose.
    let mut host = HostKernels::new(&Cpu::default(), compute.layout, compute.precision)?;
    let mut out = Vec::new();
    for (name, case) in cases(spec) {
        let ours = run_case(&mut device, case)?;
        let reference = run_case(&mut host, case)?;
        for (ours, reference) in ours.iter().zip(&reference) {
            let (output, a, b) = (&ours.name, &ours.values, &reference.values);
            let bf16 = compute.precision.bf16_activations();
            let kind = match (case, output.as_str()) {
                (Case::Conv(_) | Case::MatMul(_), _) => Kind::ConvolutionKernel,
                (Case::Pool(_), ARGMAX) => Kind::ExactKernel,
                _ if bf16 && ours.activation => Kind::Bf16Kernel,
                _ => Kind::ElementwiseKernel,
            };
            out.push(compare(kind, &format!("kernel {name} {output}"), a, b));
        }
    }
    Ok(out)
}

/// The tolerance a comparison is held to, `None` for one that is only reported: convolution
/// outputs and everything downstream of them get `conv`; elementwise kernels must agree to
/// float rounding, and decisions exactly.
pub fn tolerance(kind: Kind, conv: f64) -> Option<f64> {
    match kind {
        Kind::ElementwiseKernel => Some(1e-5),
        Kind::Bf16Kernel => Some(BF16_KERNEL_TOLERANCE),
        Kind::ExactKernel | Kind::Recorded => Some(0.0),
        Kind::ConvolutionKernel | Kind::Network | Kind::Replay => Some(conv),
        Kind::EndToEnd => None,
    }
}

/// What a step's tensors are held to in strict fp32: about a thousand ulps, room for the
/// summation order of the device's convolutions and nothing more.
pub const STRICT_TOLERANCE: f64 = 1e-4;
/// ... and in TF32 without a measured reference (10-bit mantissas in every product).
pub const TF32_TOLERANCE: f64 = 2e-2;
/// ... and in bf16 without a measured reference (8-bit mantissas in every stored activation,
/// gradient and product operand).
pub const BF16_TOLERANCE: f64 = 5e-2;
/// What a bf16-stored elementwise output is held to: a few values one bf16 step (2^-8
/// relative) apart weigh far less than this in a tensor's norm; a wrong value does not.
pub const BF16_KERNEL_TOLERANCE: f64 = 1e-3;

/// The fixed tolerance of a step's tensors in `precision` (see `tolerance`).
pub fn step_tolerance(precision: crate::config::Precision) -> f64 {
    match precision {
        crate::config::Precision::Strict => STRICT_TOLERANCE,
        crate::config::Precision::Tf32 => TF32_TOLERANCE,
        crate::config::Precision::Bf16 => BF16_TOLERANCE,
    }
}

/// Held to a measured reference (`--reference-errors`), a tensor of the network's step may
/// differ from exact arithmetic by this multiple of PyTorch's own error for the same tensor in
/// the same precision.
pub const REFERENCE_MULTIPLE: f64 = 2.0;

/// PyTorch's own error in a precision on the checked case (`benches/pytorch_precision.py`):
/// per tensor (`logits`, `features.0.weight`, ...), relative to its fp32 step.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReferenceErrors {
    pub batch: usize,
    pub precision: String,
    pub errors: std::collections::BTreeMap<String, f64>,
}

/// The PyTorch name of the tensor a step comparison compares (`None` for kernels).
fn torch_tensor(name: &str) -> Option<String> {
    if name == "logits" {
        return Some(name.into());
    }
    let rest = name.strip_prefix("replayed d conv")?;
    let (number, what) = rest.split_once('.')?;
    let index: usize = number.parse().ok()?;
    Some(format!(
        "{}.{what}",
        TORCH_NAMES.get(index.checked_sub(1)?)?
    ))
}

/// The checked network's initialisation (see `CheckJob::run`).
pub const CHECK_INIT_STD: f32 = 0.02;
pub const CHECK_INIT_BIAS: f32 = 0.1;

/// `alexnet check-fast`: both checks on whichever device `on_device` opens.
pub struct CheckJob {
    pub pipeline: crate::config::Pipeline,
    pub batch: usize,
    pub classes: usize,
    /// PyTorch's measured error in this precision on this case, for the tolerances.
    pub reference: Option<ReferenceErrors>,
}

/// What `check-fast` found: every comparison with the tolerance it is held to (`None`:
/// reported only), and the decisions the step made otherwise than exact arithmetic.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub device: String,
    pub precision: crate::config::Precision,
    pub batch: usize,
    /// Where the step's tolerances come from.
    pub tolerances: String,
    pub results: Vec<(Comparison, Option<f64>)>,
    pub decisions: Vec<Decisions>,
    /// The convolution algorithms the step ran (empty on the host).
    pub algorithms: Vec<String>,
}

impl CheckReport {
    pub fn failures(&self) -> usize {
        self.results
            .iter()
            .filter(|(c, tolerance)| {
                tolerance.is_some_and(|t| c.relative_error.is_nan() || c.relative_error > t)
            })
            .count()
    }
}

impl std::fmt::Display for CheckReport {
    /// One line per comparison with its verdict, then the decisions and algorithms.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let precision = format!("{:?}", self.precision).to_lowercase();
        writeln!(
            f,
            "fast path vs reference on {} ({precision}, batch {}): relative error per tensor; \
             tolerances {}",
            self.device, self.batch, self.tolerances
        )?;
        for (c, tolerance) in &self.results {
            let (limit, verdict) = match tolerance {
                Some(t) if c.relative_error <= *t => (format!("tolerance {t:.1e}"), "ok"),
                Some(t) => (format!("tolerance {t:.1e}"), "FAIL"),
                None => ("reported only".to_string(), "-"),
            };
            writeln!(
                f,
                "  {:<36} {:>10.2e}  ({limit}, norm {:.2e})  {verdict}",
                c.name, c.relative_error, c.norm
            )?;
        }
        let differing: Vec<String> = self
            .decisions
            .iter()
            .map(|d| format!("{} {}/{}", d.stage, d.differing, d.total))
            .collect();
        writeln!(
            f,
            "decisions made otherwise than in exact arithmetic: {}",
            differing.join(", ")
        )?;
        for algorithm in &self.algorithms {
            writeln!(f, "  {algorithm}")?;
        }
        Ok(())
    }
}

impl crate::device::DeviceJob for CheckJob {
    type Output = Result<CheckReport, CheckError>;
    fn run<D: FastDevice>(self, dev: D, device_name: String) -> Self::Output {
        let compute = self.pipeline.compute;
        let conv_tolerance = step_tolerance(compute.precision);
        let crop = self.pipeline.loader.crop_size as usize;
        let spec = check_spec(&self.pipeline, self.classes)?;
        let batch = TestBatch::random(self.batch, crop, self.classes, 7);
        let mut results = kernels_against_host(&dev, &compute, &spec)?;
        let step = against_dfdx(&dev, &compute, &spec, &batch, self.pipeline.train.seed)?;
        results.extend(step.comparisons);
        let measured = |c: &Comparison| {
            let reference = self.reference.as_ref()?;
            let error = reference.errors.get(&torch_tensor(&c.name)?)?;
            // Never stricter than strict fp32 is held to.
            Some((REFERENCE_MULTIPLE * error).max(STRICT_TOLERANCE))
        };
        let tolerances = match &self.reference {
            Some(r) => format!(
                "of the step: {REFERENCE_MULTIPLE}× PyTorch's own {} error per tensor (batch {})",
                r.precision, r.batch
            ),
            None => format!("of the step: {conv_tolerance:.0e}"),
        };
        Ok(CheckReport {
            device: device_name,
            precision: compute.precision,
            batch: self.batch,
            tolerances,
            results: results
                .into_iter()
                .map(|c| {
                    let tolerance =
                        tolerance(c.kind, conv_tolerance).map(|t| measured(&c).unwrap_or(t));
                    (c, tolerance)
                })
                .collect(),
            decisions: step.decisions,
            algorithms: step.algorithms,
        })
    }
}

/// The checked network: the pipeline's, started from wider weights.
///
/// With the paper's initialisation (weights N(0, 0.01²), biases 1) the outputs of conv2, conv4
/// and conv5 lie within a few ulps of 1.0, so pooling windows hold exactly equal maxima: dfdx
/// routes their gradient to every tied input, the fast path (like cuDNN and PyTorch) to the
/// first. Both are valid; to compare the kernels rather than that convention, the checked
/// network starts from wider weights.
pub fn check_spec(pipeline: &crate::config::Pipeline, classes: usize) -> Result<Spec, CheckError> {
    let mut model = pipeline.model.clone();
    (model.init_std, model.init_bias) = (CHECK_INIT_STD, CHECK_INIT_BIAS);
    Ok(Spec::new(
        &model,
        pipeline.loader.crop_size as usize,
        classes,
    )?)
}

/// The checked step's case as PyTorch reads it (`benches/pytorch_precision.py`): the initial
/// weights under PyTorch's names and layouts, the normalised input (NCHW), the labels and the
/// dropout masks (over PyTorch's flattening of the features), and the network's settings.
pub fn write_case(
    pipeline: &crate::config::Pipeline,
    batch_size: usize,
    classes: usize,
    path: &std::path::Path,
) -> Result<(), CheckError> {
    use crate::model::checkpoint::{export_layers, TensorFile};
    let dev = Cpu::default();
    let spec = check_spec(pipeline, classes)?;
    let seed = pipeline.train.seed;
    let model = AlexNet::<f32, Cpu>::new(&dev, spec.clone(), seed);
    let batch = TestBatch::random(batch_size, spec.input, classes, 7);
    let mut file = TensorFile::default();
    let layers = model.layers();
    export_layers(
        &mut file,
        "",
        layers.map(|(_, l, _)| l),
        crate::model::torch_layouts(&spec),
    );
    let (b, crop) = (batch.batch, batch.crop);
    let pixels = Planes {
        batch: b,
        channels: 3,
        pixels: crop * crop,
    };
    let input = crate::kernels::loops::to_nchw(&pixels, &batch.normalised());
    file.tensors
        .insert("input".into(), (vec![b, 3, crop, crop], input));
    let labels = batch.labels.iter().map(|&l| l as f32).collect();
    file.tensors.insert("labels".into(), (vec![b], labels));
    if let Some(masks) = DropoutMasks::<f32, Cpu>::draw(&dev, &spec, seed, 0, b) {
        let last = spec.blocks()[CONV_BLOCKS - 1];
        let planes = Planes {
            batch: b,
            channels: last.out_channels,
            pixels: last.out_side() * last.out_side(),
        };
        let fc6 = crate::kernels::loops::to_nchw(&planes, &masks.fc6.as_vec());
        file.tensors
            .insert("dropout.fc6".into(), (vec![b, planes.len() / b], fc6));
        let fc7 = masks.fc7.as_vec();
        file.tensors
            .insert("dropout.fc7".into(), (vec![b, fc7.len() / b], fc7));
    }
    let c = &spec.config;
    for (key, value) in [
        ("batch", b.to_string()),
        ("classes", classes.to_string()),
        ("lrn", c.lrn.to_string()),
        ("lrn_size", c.lrn_size.to_string()),
        ("lrn_k", c.lrn_k.to_string()),
        ("lrn_alpha", c.lrn_alpha.to_string()),
        ("lrn_beta", c.lrn_beta.to_string()),
    ] {
        file.metadata.insert(key.into(), value);
    }
    file.write(path)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Fast(#[from] FastError),
    // Not a `#[from]` source: the message holds it already, and a source would print it twice.
    #[error("a kernel failed during the check: {0}")]
    Kernel(KernelError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Checkpoint(#[from] crate::model::checkpoint::CheckpointError),
}

impl From<KernelError> for CheckError {
    fn from(e: KernelError) -> Self {
        Self::Kernel(e)
    }
}
