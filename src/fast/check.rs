//! The fast path against the dfdx path on the same weights and batch: logits, every
//! parameter's gradient and one SGD update, as relative errors `‖fast − dfdx‖ / ‖dfdx‖` per
//! tensor. Run by the tests on the CPU (host kernels) and by `alexnet check-fast` on a GPU.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::kernels::{InputBatch, Kernels};
use super::net::FastNet;
use super::{FastDevice, FastError};
use crate::config::Precision;
use crate::model::join::join;
use crate::model::{Act, AlexNet, DropoutMasks, Mat, Spec};
use crate::train::sgd::Sgd;

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub name: String,
    pub relative_error: f64,
    /// ‖dfdx‖: a comparison of near-zero tensors means little.
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
    pub labels: Vec<usize>,
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
            labels: (0..batch).map(|_| rng.random_range(0..classes)).collect(),
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
                        let pixel = self.pixels[((b * crop + y) * crop + xx) * 3 + c] as f32;
                        let v =
                            pixel - self.mean_table[row + xx * 3 + c] + self.lighting[b * 3 + c];
                        x.push(v * self.scale[c]);
                    }
                }
            }
        }
        x
    }
}

fn loss<D: Device<f32>>(
    logits: Mat<f32, D, OwnedTape<f32, D>>,
    labels: &[usize],
) -> Tensor<Rank0, f32, D, OwnedTape<f32, D>> {
    let dev = logits.device().clone();
    let labels = dev.tensor_from_vec(labels.to_vec(), (labels.len(),));
    logits
        .log_softmax::<Axis<1>>()
        .select(labels)
        .mean()
        .negate()
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

fn compare(name: &str, fast: &[f32], reference: &[f32]) -> Comparison {
    let (relative_error, norm) = relative_error(fast, reference);
    Comparison {
        name: name.into(),
        relative_error,
        norm,
    }
}

/// One training step of `spec`'s network (dropout on) both ways from the same weights:
/// logits, the gradients of all sixteen parameter tensors, and the conv layers' SGD updates.
pub fn against_dfdx<D: FastDevice>(
    dev: &D,
    precision: Precision,
    spec: &Spec,
    batch: &TestBatch,
    seed: u64,
) -> Result<Vec<Comparison>, FastError> {
    let (lr, momentum, decay) = (0.01, 0.9, 5e-4);
    let mut model = AlexNet::<f32, D>::new(dev, spec.clone(), seed);
    let masks = DropoutMasks::draw(dev, spec, seed, 0, batch.batch);
    let x: Act<f32, D> = dev.tensor_from_vec(
        batch.normalised(),
        (batch.batch, batch.crop * batch.crop, 3),
    );
    let logits = model.forward(x.traced(Gradients::leaky()), masks.as_ref());
    let reference_logits = logits.as_vec();
    let reference_grads = loss(logits, &batch.labels).backward();
    let names = crate::model::TORCH_NAMES;
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
        dev.fast_kernels(precision)?,
        &model,
        &sgd.velocity,
        momentum,
        decay,
    );
    net.kernels()
        .set_mean_table(&batch.mean_table, batch.crop * 3);
    let features = net.forward(&batch.input());
    let (traced, joined) = join(features);
    let logits = model.head(traced, masks.as_ref());
    let mut out = vec![compare("logits", &logits.as_vec(), &reference_logits)];
    let mut grads = loss(logits, &batch.labels).backward();
    net.backward(&mut grads, &joined);
    let conv = net.gradients();
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
        out.push(compare(
            &format!("d {}.weight", names[i]),
            &fast_weight,
            weight,
        ));
        out.push(compare(&format!("d {}.bias", names[i]), &fast_bias, bias));
    }

    // One update each way from the same (reference) gradients: the fast path's own SGD
    // against dfdx-side SGD, compared as the momentum each leaves (the weights' change
    // itself is lost in their rounding) and as the updated weights.
    sgd.step(&mut model, &reference_grads, lr);
    let dfdx_weights = conv_weights(&model);
    let dfdx_velocity: Vec<Vec<f32>> = sgd.velocity[..5]
        .iter()
        .map(|v| v.weight.as_vec())
        .collect();
    net.sgd_step(lr);
    net.export(&mut model, &mut sgd.velocity);
    let fast_weights = conv_weights(&model);
    for i in 0..5 {
        let velocity = sgd.velocity[i].weight.as_vec();
        out.push(compare(
            &format!("momentum {}.weight", names[i]),
            &velocity,
            &dfdx_velocity[i],
        ));
        out.push(compare(
            &format!("updated {}.weight", names[i]),
            &fast_weights[i],
            &dfdx_weights[i],
        ));
    }
    Ok(out)
}

fn conv_weights<D: Device<f32>>(model: &AlexNet<f32, D>) -> Vec<Vec<f32>> {
    model.layers()[..5]
        .iter()
        .map(|(_, l, _)| l.weight.as_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

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

    fn check(lrn: bool) {
        let dev = Cpu::default();
        let spec = small_spec(lrn);
        let batch = TestBatch::random(3, spec.input, spec.classes, 11);
        let results = against_dfdx(&dev, Precision::Strict, &spec, &batch, 5).unwrap();
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

    #[test]
    fn host_fast_path_equals_dfdx_with_lrn() {
        check(true);
    }

    #[test]
    fn host_fast_path_equals_dfdx_without_lrn() {
        check(false);
    }
}
