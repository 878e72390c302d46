//! Joining features computed outside dfdx's autodiff to its tape.
//!
//! A convolutional part with its own device code (and its own parameters) hands dfdx the
//! flattened features; the fully connected part, dropout and the loss stay in dfdx. dfdx
//! records operations on the tape that travels with the input tensor, so the features enter
//! as a new traced input, and after `backward` the loss's gradient with respect to them is
//! read back by the tensor's id — what the convolutional part needs for its own backward pass.
//! Training allocates gradients with `Gradients::leaky`, which keeps the gradients of inputs
//! as well as of parameters.

use dfdx::prelude::*;

use super::Mat;

/// A matrix that records the operations applied to it.
pub type Traced<E, D> = Mat<E, D, OwnedTape<E, D>>;

/// Where the gradient of joined features is found after `backward`.
pub struct JoinedFeatures<E: Dtype, D: Device<E>> {
    /// The features without a tape; shares the traced tensor's id.
    leaf: Mat<E, D>,
}

/// `features` as an input that records the operations applied to it.
pub fn join<E: Dtype, D: Device<E>>(features: Mat<E, D>) -> (Traced<E, D>, JoinedFeatures<E, D>) {
    let leaf = features.clone();
    (features.traced(Gradients::leaky()), JoinedFeatures { leaf })
}

impl<E: Dtype, D: Device<E>> JoinedFeatures<E, D> {
    /// d loss / d features, shaped like the features; zeros if the loss did not use them.
    pub fn gradient(&self, grads: &mut Gradients<E, D>) -> Result<Mat<E, D>, D::Err> {
        grads.try_alloc_for(&self.leaf)?;
        Ok(grads.get(&self.leaf))
    }

    /// The same gradient as dfdx's own buffer (no copy): what a backward pass outside dfdx
    /// reads. Zeros if the loss did not use the features.
    pub fn gradient_buffer<'a>(
        &self,
        grads: &'a mut Gradients<E, D>,
    ) -> &'a <D as Storage<E>>::Vec {
        grads
            .get_or_alloc_mut(&self.leaf)
            .expect("allocating a gradient buffer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::{AlexNet, DropoutMasks, Spec};

    type Dev = Cpu;

    fn spec() -> Spec {
        let config = ModelConfig {
            conv_channels: [4, 6, 8, 8, 6],
            fc_units: 12,
            // Wide enough weights and positive biases keep every ReLU layer alive, so that
            // gradients reach conv1; α large enough for LRN to shape them.
            init_std: 0.2,
            init_bias: 0.1,
            lrn_alpha: 0.1,
            ..ModelConfig::default()
        };
        Spec::new(&config, 67, 5).unwrap()
    }

    fn loss(
        logits: Mat<f64, Dev, OwnedTape<f64, Dev>>,
        labels: &[usize],
    ) -> Tensor<Rank0, f64, Dev, OwnedTape<f64, Dev>> {
        let dev = logits.device().clone();
        let labels = dev.tensor_from_vec(labels.to_vec(), (labels.len(),));
        logits
            .log_softmax::<Axis<1>>()
            .select(labels)
            .mean()
            .negate()
    }

    /// Weight and bias gradients of the weighted layers `layers` (0-4 conv, 5-7 FC).
    fn grads_of(
        model: &AlexNet<f64, Dev>,
        grads: &Gradients<f64, Dev>,
        layers: std::ops::Range<usize>,
    ) -> Vec<Vec<f64>> {
        model.layers()[layers]
            .iter()
            .flat_map(|(_, layer, _)| {
                [
                    grads.get(&layer.weight).as_vec(),
                    grads.get(&layer.bias).as_vec(),
                ]
            })
            .collect()
    }

    fn assert_close(a: &[f64], b: &[f64], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().map(|v| v.abs()).fold(1e-12, f64::max);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-10 * scale, "{what}: {x} vs {y}");
        }
    }

    /// The split the fast path relies on: dfdx's whole network against its convolutional part
    /// computed untracked, joined as features, with the head (and dropout) in dfdx; and the
    /// joined features' gradient, pushed back through the convolutional part, gives that
    /// part's parameter gradients.
    #[test]
    fn joined_features_give_the_whole_networks_logits_and_gradients() {
        let dev = Dev::default();
        let spec = spec();
        let mut model = AlexNet::<f64, Dev>::new(&dev, spec.clone(), 3);
        let batch = 3;
        let input = spec.input * spec.input * 3;
        let x: Vec<f64> = (0..batch * input)
            .map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0)
            .collect();
        let x = dev.tensor_from_vec(x, (batch, spec.input * spec.input, 3));
        let labels = [1, 4, 0];
        let masks = DropoutMasks::draw(&dev, &spec, 9, 2, batch);

        let whole = model.forward(x.clone().traced(Gradients::leaky()), masks.as_ref());
        let whole_logits = whole.as_vec();
        let whole_grads = grads_of(&model, &loss(whole, &labels).backward(), 0..8);
        // The comparison below means something only if gradient reaches conv1.
        assert!(whole_grads[0].iter().any(|&g| g.abs() > 1e-9));

        let features = model.features(x.clone());
        let (traced, joined) = join(features);
        let logits = model.head(traced, masks.as_ref());
        assert_close(&logits.as_vec(), &whole_logits, "logits");
        let mut grads = loss(logits, &labels).backward();
        let d_features = joined.gradient(&mut grads).unwrap();
        let head_grads = grads_of(&model, &grads, 5..8);
        for (k, g) in head_grads.iter().enumerate() {
            assert_close(g, &whole_grads[10 + k], &format!("head gradient {k}"));
        }

        // <features, d_features> has the loss's gradients in the convolutional part.
        let features = model.features(x.traced(Gradients::leaky()));
        let surrogate = (features * d_features).sum();
        let conv_grads = grads_of(&model, &surrogate.backward(), 0..5);
        for (k, g) in conv_grads.iter().enumerate() {
            assert_close(g, &whole_grads[k], &format!("conv gradient {k}"));
        }
    }

    #[test]
    fn unused_features_have_a_zero_gradient() {
        let dev = Dev::default();
        let features = dev.tensor_from_vec(vec![1.0f64, 2.0, 3.0, 4.0], (2, 2));
        let (traced, joined) = join(features);
        drop(traced);
        let unrelated = dev.tensor([1.0f64, 2.0]).traced(Gradients::leaky());
        let mut grads = unrelated.sum().backward();
        assert_eq!(joined.gradient(&mut grads).unwrap().as_vec(), vec![0.0; 4]);
    }
}
