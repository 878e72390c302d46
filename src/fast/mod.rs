//! The fast path: AlexNet's convolutional part on the project's own kernels, joined to dfdx
//! at the flattened features.
//!
//! dfdx keeps a tensor's device memory private, so its ops cannot be mixed with cuDNN calls
//! inside one layer. The network is split instead: the convolutional part (conv1 to pool3,
//! ~95% of the arithmetic) runs on `Kernels` over buffers this module owns — weights,
//! momentum, activations — and hands its output to dfdx as a traced input (`model::join`).
//! FC6 to FC8, dropout, the loss and their autodiff stay in dfdx. After dfdx's backward pass
//! the features' gradient is read straight from dfdx's gradient buffer and pushed back
//! through the convolutional part here, and SGD updates its parameters in place.
//!
//! Everything except the kernels — the join, parameter ownership, SGD, checkpoints and resume —
//! is the same code on every device, so the CPU tests exercise it with `host::HostKernels`.

pub mod check;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
pub mod kernels;
pub mod net;

use crate::config::ComputeConfig;
use crate::train::TrainDevice;
pub use kernels::Kernels;

#[derive(Debug, thiserror::Error)]
pub enum FastError {
    #[error("cannot start the fast path on the GPU: {0}")]
    Cuda(String),
}

/// A dfdx device with kernels for the fast path.
pub trait FastDevice: TrainDevice {
    /// Whether this is a GPU (where `engine = "auto"` picks the fast path).
    const GPU: bool = false;
    type Kernels: Kernels<Self>;
    fn fast_kernels(&self, compute: &ComputeConfig) -> Result<Self::Kernels, FastError>;
}

impl FastDevice for dfdx::prelude::Cpu {
    type Kernels = host::HostKernels;
    fn fast_kernels(&self, _: &ComputeConfig) -> Result<host::HostKernels, FastError> {
        Ok(host::HostKernels::new(self))
    }
}
