//! `alexnet check-fast`: the fast path's kernels against the host kernels, and the fast path
//! against the dfdx engine on the same weights and batch (logits, every parameter's gradient
//! and one SGD update), as relative errors `‖fast − reference‖ / ‖reference‖` per tensor.
//! Run by the tests on the CPU (host kernels) and on a GPU by `alexnet check-fast`.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::ComputeConfig;
use crate::device::FastDevice;
use crate::engine::fast::{FastError, FastNet};
use crate::engine::loss::mean_cross_entropy;
use crate::engine::sgd::Sgd;
use crate::kernels::host::HostKernels;
use crate::kernels::{
    ConvShape, InputBatch, KernelError, KernelResult, Kernels, LrnParams, Planes, PoolShape,
    SgdStep,
};
use crate::model::join::join;
use crate::model::{Act, AlexNet, DropoutMasks, Spec, CONV_BLOCKS, TORCH_NAMES};
use crate::pixels;

/// What a comparison compares, which sets the tolerance it is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An elementwise kernel (normalise, bias/ReLU, LRN, pooling, layout, SGD): float rounding.
    ElementwiseKernel,
    /// A convolution kernel: the device's convolution arithmetic (TF32 where allowed).
    ConvolutionKernel,
    /// A tensor of the whole network's step, downstream of convolutions.
    Network,
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

pub fn relative_error(fast: &[f32], reference: &[f32]) -> (f64, f64) {
    assert_eq!(fast.len(), reference.len());
    let diff: f64 = fast
        .iter()
        .zip(reference)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|&b| (b as f64).powi(2)).sum();
    ((diff / norm.max(1e-300)).sqrt(), norm.sqrt())
}

fn compare(kind: Kind, name: &str, fast: &[f32], reference: &[f32]) -> Comparison {
    let (relative_error, norm) = relative_error(fast, reference);
    Comparison {
        name: name.into(),
        kind,
        relative_error,
        norm,
    }
}

/// One training step of `spec`'s network (dropout on) both ways from the same weights:
/// logits, the gradients of all sixteen parameter tensors, and the conv layers' SGD updates.
pub fn against_dfdx<D: FastDevice>(
    dev: &D,
    compute: &ComputeConfig,
    spec: &Spec,
    batch: &TestBatch,
    seed: u64,
) -> Result<Vec<Comparison>, CheckError> {
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
    let names = TORCH_NAMES;
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

    let mut sgd = Sgd::new(dev, &model, momentum, decay);
    let mut net = FastNet::new(
        dev,
        dev.fast_kernels(compute)?,
        &model,
        Some(&sgd.velocity),
        momentum,
        decay,
    )?;
    net.kernels()
        .set_mean_table(&batch.mean_table, batch.crop * 3)?;
    let features = net.forward(&batch.input())?;
    let (traced, joined) = join(features);
    let logits = model.head(traced, masks.as_ref());
    let network = Kind::Network;
    let mut out = vec![compare(
        network,
        "logits",
        &logits.as_vec(),
        &reference_logits,
    )];
    let mut grads = mean_cross_entropy(logits, &batch.labels).backward();
    net.backward(&mut grads, &joined)?;
    let conv = net.gradients()?;
    for (i, [weight, bias]) in reference.iter().enumerate() {
        let (fast_weight, fast_bias) = match conv.get(i) {
            Some((w, b)) => (w.clone(), b.clone()),
            None => {
                let layer = model.layers()[i].1;
                (
                    grads.get(&layer.weight).as_vec(),
                    grads.get(&layer.bias).as_vec(),
                )
            }
        };
        let name = |what| format!("d {}.{what}", names[i]);
        out.push(compare(network, &name("weight"), &fast_weight, weight));
        out.push(compare(network, &name("bias"), &fast_bias, bias));
    }

    // One update each way from the same (reference) gradients: the fast path's own SGD
    // against dfdx-side SGD, compared as the momentum each leaves (the weights' change
    // itself is lost in their rounding) and as the updated weights.
    sgd.step(&mut model, &reference_grads, lr);
    let dfdx_weights = conv_weights(&model);
    let dfdx_velocity: Vec<Vec<f32>> = sgd.velocity[..CONV_BLOCKS]
        .iter()
        .map(|v| v.weight.as_vec())
        .collect();
    net.sgd_step(lr)?;
    net.export(&mut model, &mut sgd.velocity)?;
    let fast_weights = conv_weights(&model);
    for i in 0..CONV_BLOCKS {
        let velocity = sgd.velocity[i].weight.as_vec();
        let name = |what| format!("{what} {}.weight", names[i]);
        out.push(compare(
            network,
            &name("momentum"),
            &velocity,
            &dfdx_velocity[i],
        ));
        out.push(compare(
            network,
            &name("updated"),
            &fast_weights[i],
            &dfdx_weights[i],
        ));
    }
    Ok(out)
}

fn conv_weights<D: Device<f32>>(model: &AlexNet<f32, D>) -> Vec<Vec<f32>> {
    model.layers()[..CONV_BLOCKS]
        .iter()
        .map(|(_, l, _)| l.weight.as_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, Precision};

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

    fn strict() -> ComputeConfig {
        ComputeConfig {
            precision: Precision::Strict,
            ..ComputeConfig::default()
        }
    }

    fn check(lrn: bool) {
        let dev = Cpu::default();
        let spec = small_spec(lrn);
        let batch = TestBatch::random(3, spec.input, spec.classes, 11);
        let results = against_dfdx(&dev, &strict(), &spec, &batch, 5).unwrap();
        assert_eq!(results.len(), 1 + 16 + 10);
        for r in &results {
            assert!(
                r.norm > 1e-6,
                "{} is ~0: the comparison would mean nothing",
                r.name
            );
            assert!(
                r.relative_error < 1e-4,
                "{}: relative error {:e}",
                r.name,
                r.relative_error
            );
        }
    }

    /// On the CPU both sides are the host kernels, so this checks the cases themselves: every
    /// output must be a tensor worth comparing (not zeros from dead inputs).
    #[test]
    fn every_kernel_case_produces_a_meaningful_output() {
        let paper = Spec::new(&ModelConfig::default(), 224, 10).unwrap();
        let results = kernels_against_host(&Cpu::default(), &strict(), &paper).unwrap();
        assert_eq!(results.len(), 27);
        for r in &results {
            assert!(r.norm > 1e-3, "{}: norm {}", r.name, r.norm);
            assert_eq!(r.relative_error, 0.0, "{}", r.name);
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
}

/// One kernel call on random inputs, run on two kernel sets and compared.
#[derive(Debug, Clone, Copy)]
enum Case {
    Normalize { batch: usize, crop: usize },
    Conv(ConvShape),
    BiasRelu(Planes),
    Lrn(Planes, LrnParams),
    Pool(PoolShape),
    ChannelsLast(Planes),
    Sgd(usize),
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
) -> KernelResult<Vec<(String, Vec<f32>)>> {
    let mut up = |len: usize, range: (f32, f32), seed: u64| k.upload(&random(len, range, seed));
    let out = match case {
        Case::Normalize { batch, crop } => {
            let data = TestBatch::random(batch, crop, 10, 1);
            let mut x = k.alloc(batch * 3 * crop * crop)?;
            k.set_mean_table(&data.mean_table, crop * 3)?;
            k.normalize(&data.input(), &mut x)?;
            vec![("normalize", x)]
        }
        Case::Conv(s) => {
            let (x, w, dy) = (
                up(s.input_len(), (-1.0, 1.0), 2)?,
                up(s.filter_len(), (-0.1, 0.1), 3)?,
                up(s.output_len(), (-1.0, 1.0), 4)?,
            );
            let (mut y, mut dx, mut dw) = (
                k.alloc(s.output_len())?,
                k.alloc(s.input_len())?,
                k.alloc(s.filter_len())?,
            );
            k.conv_forward(&s, &x, &w, &mut y)?;
            k.conv_backward_data(&s, &dy, &w, &mut dx)?;
            k.conv_backward_filter(&s, &x, &dy, &mut dw)?;
            vec![
                ("forward", y),
                ("backward data", dx),
                ("backward filter", dw),
            ]
        }
        Case::BiasRelu(p) => {
            let (mut y, bias, mut dy) = (
                up(p.len(), (-1.0, 1.0), 5)?,
                up(p.channels, (-0.5, 0.5), 6)?,
                up(p.len(), (-1.0, 1.0), 7)?,
            );
            let mut db = k.alloc(p.channels)?;
            k.bias_relu(&p, &mut y, &bias)?;
            k.relu_bias_backward(&p, &y, &mut dy, &mut db)?;
            vec![
                ("bias+relu", y),
                ("relu backward", dy),
                ("bias gradient", db),
            ]
        }
        Case::Lrn(p, lrn) => {
            let (x, dy) = (up(p.len(), (0.0, 3.0), 8)?, up(p.len(), (-1.0, 1.0), 9)?);
            let (mut y, mut d, mut dx) = (k.alloc(p.len())?, k.alloc(p.len())?, k.alloc(p.len())?);
            k.lrn_forward(&p, &lrn, &x, &mut y, &mut d)?;
            k.lrn_backward(&p, &lrn, &x, &d, &dy, &mut dx)?;
            vec![("forward", y), ("denominator", d), ("backward", dx)]
        }
        Case::Pool(s) => {
            let (x, dy) = (
                up(s.input_len(), (-1.0, 1.0), 10)?,
                up(s.output_len(), (-1.0, 1.0), 11)?,
            );
            let (mut y, mut dx) = (k.alloc(s.output_len())?, k.alloc(s.input_len())?);
            k.pool_forward(&s, &x, &mut y)?;
            k.pool_backward(&s, &x, &y, &dy, &mut dx)?;
            vec![("forward", y), ("backward", dx)]
        }
        Case::ChannelsLast(p) => {
            let x = up(p.len(), (-1.0, 1.0), 12)?;
            let (mut y, mut back) = (k.alloc(p.len())?, k.alloc(p.len())?);
            k.flatten_channels_last(&p, &x, &mut y)?;
            k.unflatten_channels_last(&p, &y, &mut back)?;
            vec![("to", y), ("back", back)]
        }
        Case::Sgd(n) => {
            let (mut w, mut v, g) = (
                up(n, (-1.0, 1.0), 13)?,
                up(n, (-0.1, 0.1), 14)?,
                up(n, (-1.0, 1.0), 15)?,
            );
            let step = SgdStep {
                learning_rate: 0.01,
                momentum: 0.9,
                weight_decay: 5e-4,
            };
            k.sgd(&step, &mut w, &mut v, &g)?;
            vec![("weights", w), ("momentum", v)]
        }
    };
    out.into_iter()
        .map(|(name, buf)| Ok((name.to_string(), k.download(&buf)?)))
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
    for block in blocks.iter().filter(|b| b.lrn) {
        let p = planes(block.out_channels, block.conv_side());
        cases.push((format!("lrn {}", block.names().0), Case::Lrn(p, lrn)));
    }
    for block in [&blocks[0], &blocks[CONV_BLOCKS - 1]] {
        if let Some(shape) = block.pool_shape(BATCH) {
            cases.push((block.names().2.to_string(), Case::Pool(shape)));
        }
    }
    let last = blocks[CONV_BLOCKS - 1];
    let features = planes(last.out_channels, last.out_side());
    cases.push(("flatten".into(), Case::ChannelsLast(features)));
    // An odd length, so that no kernel can rely on a multiple of its block size.
    cases.push(("sgd".into(), Case::Sgd(100_003)));
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
    let mut host = HostKernels::new(&Cpu::default())?;
    let mut out = Vec::new();
    for (name, case) in cases(spec) {
        let kind = match case {
            Case::Conv(_) => Kind::ConvolutionKernel,
            _ => Kind::ElementwiseKernel,
        };
        let ours = run_case(&mut device, case)?;
        let reference = run_case(&mut host, case)?;
        for ((output, a), (_, b)) in ours.iter().zip(&reference) {
            out.push(compare(kind, &format!("kernel {name} {output}"), a, b));
        }
    }
    Ok(out)
}

/// The tolerance a comparison is held to: convolution outputs and everything downstream of
/// them get `conv`; elementwise kernels must agree to float rounding.
pub fn tolerance(kind: Kind, conv: f64) -> f64 {
    match kind {
        Kind::ElementwiseKernel => 1e-5,
        Kind::ConvolutionKernel | Kind::Network => conv,
    }
}

/// The checked network's initialisation (see `CheckJob::run`).
pub const CHECK_INIT_STD: f32 = 0.02;
pub const CHECK_INIT_BIAS: f32 = 0.1;

/// `alexnet check-fast`: both checks on whichever device `on_device` opens.
pub struct CheckJob {
    pub pipeline: crate::config::Pipeline,
    pub batch: usize,
    pub classes: usize,
}

/// What `check-fast` found: every comparison with the tolerance it is held to.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub device: String,
    pub precision: crate::config::Precision,
    pub results: Vec<(Comparison, f64)>,
}

impl CheckReport {
    pub fn failures(&self) -> usize {
        self.results
            .iter()
            .filter(|(c, tolerance)| c.relative_error.is_nan() || c.relative_error > *tolerance)
            .count()
    }
}

impl std::fmt::Display for CheckReport {
    /// One line per comparison with its verdict.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let precision = format!("{:?}", self.precision).to_lowercase();
        writeln!(
            f,
            "fast path vs reference on {} ({precision}): relative error per tensor",
            self.device
        )?;
        for (c, tolerance) in &self.results {
            let verdict = if c.relative_error <= *tolerance {
                "ok"
            } else {
                "FAIL"
            };
            writeln!(
                f,
                "  {:<40} {:>10.2e}  (tolerance {:.0e}, norm {:.2e})  {verdict}",
                c.name, c.relative_error, tolerance, c.norm
            )?;
        }
        Ok(())
    }
}

impl crate::device::DeviceJob for CheckJob {
    type Output = Result<CheckReport, CheckError>;
    fn run<D: FastDevice>(self, dev: D, device_name: String) -> Self::Output {
        let compute = self.pipeline.compute;
        let conv_tolerance = match compute.precision {
            crate::config::Precision::Strict => 1e-4,
            crate::config::Precision::Tf32 => 2e-2,
        };
        let crop = self.pipeline.loader.crop_size as usize;
        // With the paper's initialisation (weights N(0, 0.01²), biases 1) the outputs of
        // conv2, conv4 and conv5 lie within a few ulps of 1.0, so pooling windows hold
        // exactly equal maxima: dfdx routes their gradient to every tied input, the fast path
        // (like cuDNN and PyTorch) to the first. Both are valid; to compare the kernels rather
        // than that convention, the checked network starts from wider weights.
        let mut model = self.pipeline.model.clone();
        (model.init_std, model.init_bias) = (CHECK_INIT_STD, CHECK_INIT_BIAS);
        let spec = Spec::new(&model, crop, self.classes)?;
        let batch = TestBatch::random(self.batch, crop, self.classes, 7);
        let mut results = kernels_against_host(&dev, &compute, &spec)?;
        results.extend(against_dfdx(
            &dev,
            &compute,
            &spec,
            &batch,
            self.pipeline.train.seed,
        )?);
        Ok(CheckReport {
            device: device_name,
            precision: compute.precision,
            results: results
                .into_iter()
                .map(|c| {
                    let tolerance = tolerance(c.kind, conv_tolerance);
                    (c, tolerance)
                })
                .collect(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Fast(#[from] FastError),
    #[error("a kernel failed during the check: {0}")]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}
