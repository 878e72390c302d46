//! The training loss on the device.

use dfdx::prelude::*;

use crate::model::Mat;

/// Mean cross-entropy of `logits` against `labels`.
pub fn mean_cross_entropy<D: Device<f32>>(
    logits: Mat<f32, D, OwnedTape<f32, D>>,
    labels: &[u32],
) -> Tensor<Rank0, f32, D, OwnedTape<f32, D>> {
    let dev = logits.device().clone();
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let labels = dev.tensor_from_vec(labels, (logits.shape().0,));
    logits
        .log_softmax::<Axis<1>>()
        .select(labels)
        .mean()
        .negate()
}
