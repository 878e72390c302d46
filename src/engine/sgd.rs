//! SGD with momentum and weight decay, PyTorch's formulation (and dfdx's `Sgd`'s):
//! `v ← μ·v + (g + λ·w)`, `w ← w − lr·v`. Written here because the velocity must be saved in
//! checkpoints for an exact resume, and dfdx keeps its own private.

use dfdx::prelude::*;

use crate::model::{Affine, AlexNet};

pub struct Sgd<D: Device<f32>> {
    pub momentum: f64,
    pub weight_decay: f64,
    /// One velocity per weight and bias, shaped like the model's layers.
    pub velocity: [Affine<f32, D>; 8],
}

impl<D: Device<f32>> Sgd<D> {
    /// Zero velocity for `model`.
    pub fn new(dev: &D, model: &AlexNet<f32, D>, momentum: f64, weight_decay: f64) -> Self {
        let layers = model.layers();
        let velocity = std::array::from_fn(|i| {
            let layer = layers[i].1;
            Affine {
                weight: dev.zeros_like(layer.weight.shape()),
                bias: dev.zeros_like(layer.bias.shape()),
            }
        });
        Self {
            momentum,
            weight_decay,
            velocity,
        }
    }

    /// One update of every parameter from `grads`.
    pub fn step(&mut self, model: &mut AlexNet<f32, D>, grads: &Gradients<f32, D>, lr: f64) {
        self.step_layers(model, grads, lr, 0..8);
    }

    /// One update of the weighted layers `layers` (0-4 conv, 5-7 FC) from `grads`.
    pub fn step_layers(
        &mut self,
        model: &mut AlexNet<f32, D>,
        grads: &Gradients<f32, D>,
        lr: f64,
        layers: std::ops::Range<usize>,
    ) {
        let (momentum, decay) = (self.momentum, self.weight_decay);
        let pairs = model.layers_mut().into_iter().zip(&mut self.velocity);
        for (layer, velocity) in pairs.skip(layers.start).take(layers.len()) {
            let grad = grads.get(&layer.weight);
            update(
                &mut layer.weight,
                &mut velocity.weight,
                grad,
                lr,
                momentum,
                decay,
            );
            let grad = grads.get(&layer.bias);
            update(
                &mut layer.bias,
                &mut velocity.bias,
                grad,
                lr,
                momentum,
                decay,
            );
        }
    }
}

fn update<S: Shape, D: Device<f32>>(
    param: &mut Tensor<S, f32, D>,
    velocity: &mut Tensor<S, f32, D>,
    mut grad: Tensor<S, f32, D>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) {
    grad.axpy(1.0, param, weight_decay); // g + λw
    velocity.axpy(momentum, &grad, 1.0); // μv + g
    param.axpy(1.0, velocity, -lr); // w − lr·v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::Spec;

    /// Two steps by hand: v₁ = g₁ + λw₀, w₁ = w₀ − lr·v₁; v₂ = μv₁ + g₂ + λw₁, w₂ = w₁ − lr·v₂
    /// (PyTorch's `torch.optim.SGD` with momentum and weight decay).
    #[test]
    fn two_steps_follow_pytorchs_formula() {
        let dev = Cpu::default();
        let config = ModelConfig {
            conv_channels: [2; 5],
            fc_units: 4,
            ..ModelConfig::default()
        };
        let spec = Spec::new(&config, 63, 2).unwrap();
        let mut model = AlexNet::<f32, Cpu>::new(&dev, spec, 1);
        let (lr, mu, wd) = (0.1, 0.9, 0.01);
        let mut sgd = Sgd::new(&dev, &model, mu, wd);
        let x: crate::model::Act<f32, Cpu> = dev.sample_normal_like(&(2, 63 * 63, 3));
        let mut expected_v = vec![0f32; 0];
        for _ in 0..2 {
            let w0 = model.fc8.weight.as_vec();
            let logits = model.forward(x.clone().traced(Gradients::leaky()), None);
            let grads = logits.square().sum().backward();
            let g = grads.get(&model.fc8.weight).as_vec();
            let v: Vec<f32> = (0..w0.len())
                .map(|i| {
                    let previous = expected_v.get(i).copied().unwrap_or(0.0);
                    mu as f32 * previous + (g[i] + wd as f32 * w0[i])
                })
                .collect();
            sgd.step(&mut model, &grads, lr);
            let w1 = model.fc8.weight.as_vec();
            for i in 0..w0.len() {
                let want = w0[i] - lr as f32 * v[i];
                let close = (w1[i] - want).abs() <= 1e-6 * (1.0 + want.abs());
                assert!(close, "{i}: {} vs {want}", w1[i]);
            }
            let velocity = sgd.velocity[7].weight.as_vec();
            for (got, want) in velocity.iter().zip(&v) {
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
            expected_v = v;
        }
    }
}
