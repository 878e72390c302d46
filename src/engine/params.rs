//! A weighted layer's tensors on a kernel device: weight and bias, their momentum and their
//! last gradients, and the tensors of the SGD update over them — the same for a convolution and a fully
//! connected layer, whatever layout the weight has.

use dfdx::prelude::Storage;

use crate::kernels::{Buf, KernelResult, Kernels, LayerGradients, SgdTensor};

pub struct Params<D: Storage<f32>> {
    pub weight: Buf<D>,
    pub bias: Buf<D>,
    pub weight_velocity: Buf<D>,
    pub bias_velocity: Buf<D>,
    pub weight_grad: Buf<D>,
    pub bias_grad: Buf<D>,
    /// The weight's and the bias's number of values (a device's buffers may be longer).
    lens: (usize, usize),
}

impl<D: Storage<f32>> Params<D> {
    /// Uploads `weight` and `bias` (in the kernels' layout) and their momentum (`None` for
    /// zeros); the gradients get buffers of the same sizes.
    pub fn upload<K: Kernels<D>>(
        k: &mut K,
        weight: &[f32],
        bias: &[f32],
        velocity: Option<(&[f32], &[f32])>,
    ) -> KernelResult<Self> {
        let (weight_velocity, bias_velocity) = match velocity {
            Some((w, b)) => (k.upload(w)?, k.upload(b)?),
            None => (
                k.upload(&vec![0.0; weight.len()])?,
                k.upload(&vec![0.0; bias.len()])?,
            ),
        };
        Ok(Self {
            weight: k.upload(weight)?,
            bias: k.upload(bias)?,
            weight_velocity,
            bias_velocity,
            weight_grad: k.alloc(weight.len())?,
            bias_grad: k.alloc(bias.len())?,
            lens: (weight.len(), bias.len()),
        })
    }

    /// Adds the weight's and the bias's bits to `hash`.
    pub fn hash_into<K: Kernels<D>>(
        &self,
        k: &mut K,
        hash: &mut xxhash_rust::xxh3::Xxh3,
    ) -> KernelResult {
        for (buf, len) in [(&self.weight, self.lens.0), (&self.bias, self.lens.1)] {
            for v in k.download_prefix(buf, len)? {
                hash.update(&v.to_bits().to_le_bytes());
            }
        }
        Ok(())
    }

    /// The weight's and the bias's gradients, for summing across ranks.
    pub fn gradients(&mut self) -> LayerGradients<'_, D> {
        [
            (&mut self.weight_grad, self.lens.0),
            (&mut self.bias_grad, self.lens.1),
        ]
    }

    /// Sets the gradients to zero (a rank whose slice of a batch is empty adds nothing).
    pub fn zero_gradients<K: Kernels<D>>(&mut self, k: &mut K) -> KernelResult {
        self.weight_grad = k.upload(&vec![0.0; self.lens.0])?;
        self.bias_grad = k.upload(&vec![0.0; self.lens.1])?;
        Ok(())
    }

    /// The weight's and the bias's SGD update from the last gradients.
    pub fn sgd_tensors(&mut self) -> [SgdTensor<'_, D>; 2] {
        [
            SgdTensor {
                w: &mut self.weight,
                v: &mut self.weight_velocity,
                g: &self.weight_grad,
            },
            SgdTensor {
                w: &mut self.bias,
                v: &mut self.bias_velocity,
                g: &self.bias_grad,
            },
        ]
    }
}
