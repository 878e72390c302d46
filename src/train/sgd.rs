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
        let (momentum, decay) = (self.momentum, self.weight_decay);
        for (layer, velocity) in model.layers_mut().into_iter().zip(&mut self.velocity) {
            let grad = grads.get(&layer.weight);
            update(&mut layer.weight, &mut velocity.weight, grad, lr, momentum, decay);
            let grad = grads.get(&layer.bias);
            update(&mut layer.bias, &mut velocity.bias, grad, lr, momentum, decay);
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
