//! Which device the work runs on, and what the rest of the crate needs of one. Every
//! device-generic job (training, evaluation, the training benchmark, the fast path's check)
//! goes through `on_device`, so opening and configuring a device happens once.

use dfdx::prelude::*;

use crate::config::ComputeConfig;
use crate::kernels::{host::HostKernels, KernelError, Kernels};

/// A device the trainer can run on: dfdx's devices plus the u8 upload (dfdx's dtype
/// conversion bound is crate-private, so it is implemented per concrete device).
pub trait TrainDevice: Device<f32> + Synchronize {
    /// A device buffer of bytes.
    type Bytes;
    /// Copies `bytes` to the device (into `buffer` when its size matches) and converts them to
    /// f32 of shape `shape`.
    fn upload_u8(
        &self,
        buffer: &mut Option<Self::Bytes>,
        bytes: &[u8],
        shape: (usize, usize, usize),
    ) -> Tensor<(usize, usize, usize), f32, Self>;
}

macro_rules! train_device {
    ($device:ty) => {
        impl TrainDevice for $device {
            type Bytes = Tensor<(usize,), u8, $device>;
            fn upload_u8(
                &self,
                buffer: &mut Option<Self::Bytes>,
                bytes: &[u8],
                shape: (usize, usize, usize),
            ) -> Tensor<(usize, usize, usize), f32, Self> {
                let mut pixels = match buffer.take() {
                    Some(t) if t.shape().0 == bytes.len() => t,
                    _ => self.zeros_like(&(bytes.len(),)),
                };
                pixels.copy_from(bytes);
                let x = pixels.clone().reshape_like(&shape).to_dtype::<f32>();
                *buffer = Some(pixels);
                x
            }
        }
    };
}

train_device!(Cpu);
#[cfg(feature = "cuda")]
train_device!(Cuda);

/// A dfdx device with kernels for the fast path.
pub trait FastDevice: TrainDevice {
    /// Whether this is a GPU (where `engine = "auto"` picks the fast path).
    const GPU: bool = false;
    type Kernels: Kernels<Self>;
    fn fast_kernels(&self, compute: &ComputeConfig) -> Result<Self::Kernels, KernelError>;
}

impl FastDevice for Cpu {
    type Kernels = HostKernels;
    fn fast_kernels(&self, _: &ComputeConfig) -> Result<HostKernels, KernelError> {
        HostKernels::new(self)
    }
}

#[cfg(feature = "cuda")]
impl FastDevice for Cuda {
    const GPU: bool = true;
    type Kernels = crate::kernels::cuda::CudaKernels;

    fn fast_kernels(
        &self,
        compute: &ComputeConfig,
    ) -> Result<crate::kernels::cuda::CudaKernels, KernelError> {
        crate::kernels::cuda::CudaKernels::new(self, compute)
    }
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    /// CUDA when the binary was built with it, else the CPU.
    pub fn default_for_build() -> Self {
        if cfg!(feature = "cuda") {
            DeviceKind::Cuda
        } else {
            DeviceKind::Cpu
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "this binary was built without CUDA; build it with `cargo build --release --features \
         cuda` (or use `make train CUDA=1`), or use --device cpu"
    )]
    NoCuda,
    #[error("cannot open CUDA device 0: {0}")]
    Open(String),
}

/// Work that runs on whichever device `--device` picks.
pub trait DeviceJob {
    type Output;
    fn run<D: FastDevice>(self, dev: D, device_name: String) -> Self::Output;
}

/// Opens the chosen device (default: CUDA in a CUDA build, else the CPU) and runs `job` on it.
///
/// Both devices keep dfdx's tensor cache on: every training step allocates tensors of the
/// same shapes, and handing freed buffers back to the allocator made the kernel map and zero
/// fresh pages every step (on the CPU, 35-42% of training's CPU time was system time).
pub fn on_device<J: DeviceJob>(
    kind: Option<DeviceKind>,
    seed: u64,
    job: J,
) -> Result<J::Output, DeviceError> {
    match kind.unwrap_or_else(DeviceKind::default_for_build) {
        DeviceKind::Cpu => {
            let name = format!("the CPU ({} threads)", rayon::current_num_threads());
            Ok(job.run(cpu(), name))
        }
        DeviceKind::Cuda => on_cuda(seed, job),
    }
}

/// The CPU device as training uses it (also for benchmarks, so that they measure the same).
pub fn cpu() -> Cpu {
    // Tiny gradients late in training are denormals, which x86 handles ~100× slower.
    dfdx::flush_denormals_to_zero();
    let dev = Cpu::default();
    dev.enable_cache();
    dev
}

#[cfg(feature = "cuda")]
fn on_cuda<J: DeviceJob>(seed: u64, job: J) -> Result<J::Output, DeviceError> {
    let dev =
        dfdx::tensor::Cuda::try_build(0, seed).map_err(|e| DeviceError::Open(format!("{e:?}")))?;
    dev.enable_cache();
    Ok(job.run(dev, "CUDA device 0".into()))
}

#[cfg(not(feature = "cuda"))]
fn on_cuda<J: DeviceJob>(_: u64, _: J) -> Result<J::Output, DeviceError> {
    Err(DeviceError::NoCuda)
}
