//! Which device the work runs on, and what the rest of the crate needs of one. Every
//! device-generic job (training, evaluation, the training benchmark, the fast path's check)
//! goes through `on_device`, so opening and configuring a device happens once.

use dfdx::prelude::*;

use crate::config::ComputeConfig;
use crate::dist::{DistError, World};
use crate::kernels::host::{HostKernels, HostSum};
use crate::kernels::{GradientSum, KernelError, Kernels};

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
    /// How the ranks of a data-parallel job sum their gradients on this device.
    type GradientSum: GradientSum<Self>;
    fn fast_kernels(&self, compute: &ComputeConfig) -> Result<Self::Kernels, KernelError>;
    /// What rank 0 hands every rank at the rendezvous for summing gradients (NCCL's unique
    /// id on CUDA; nothing on the CPU).
    fn collective_id() -> Result<Vec<u8>, DistError>;
    /// This rank's part in the gradient sums of `world`, from rank 0's `collective_id`.
    fn gradient_sum(&self, world: World, id: &[u8]) -> Result<Self::GradientSum, DistError>;
}

impl FastDevice for Cpu {
    type Kernels = HostKernels;
    type GradientSum = HostSum;
    fn fast_kernels(&self, compute: &ComputeConfig) -> Result<HostKernels, KernelError> {
        Ok(HostKernels::new(self, compute.layout, compute.precision)?
            .replaying(compute.graphs.is_on()))
    }
    fn collective_id() -> Result<Vec<u8>, DistError> {
        Ok(Vec::new())
    }
    fn gradient_sum(&self, _: World, _: &[u8]) -> Result<HostSum, DistError> {
        Ok(HostSum)
    }
}

#[cfg(feature = "cuda")]
impl FastDevice for Cuda {
    const GPU: bool = true;
    type Kernels = crate::kernels::cuda::CudaKernels;
    type GradientSum = crate::kernels::cuda::nccl::NcclSum;

    fn fast_kernels(
        &self,
        compute: &ComputeConfig,
    ) -> Result<crate::kernels::cuda::CudaKernels, KernelError> {
        crate::kernels::cuda::CudaKernels::new(self, compute)
    }
    fn collective_id() -> Result<Vec<u8>, DistError> {
        crate::kernels::cuda::nccl::unique_id()
    }
    fn gradient_sum(
        &self,
        world: World,
        id: &[u8],
    ) -> Result<crate::kernels::cuda::nccl::NcclSum, DistError> {
        crate::kernels::cuda::nccl::NcclSum::new(self, world, id)
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
    #[error("cannot open CUDA device {ordinal}: {reason}")]
    Open { ordinal: usize, reason: String },
    #[error(
        "local rank {local_rank} has no GPU of its own: this machine shows {count} CUDA \
         device(s); start at most {count} ranks per machine (torchrun --nproc-per-node, or \
         Slurm's --ntasks-per-node)"
    )]
    NoGpuForRank { local_rank: usize, count: usize },
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
    on_device_of_rank(kind, 0, seed, job)
}

/// `on_device` for the rank with index `local_rank` on its machine: it takes GPU
/// `local_rank`, or the only GPU it sees (a launcher that gives each rank its own, through
/// `CUDA_VISIBLE_DEVICES`).
pub fn on_device_of_rank<J: DeviceJob>(
    kind: Option<DeviceKind>,
    local_rank: usize,
    seed: u64,
    job: J,
) -> Result<J::Output, DeviceError> {
    match kind.unwrap_or_else(DeviceKind::default_for_build) {
        DeviceKind::Cpu => {
            let name = format!("the CPU ({} threads)", rayon::current_num_threads());
            Ok(job.run(cpu(), name))
        }
        DeviceKind::Cuda => on_cuda(local_rank, seed, job),
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
fn on_cuda<J: DeviceJob>(local_rank: usize, seed: u64, job: J) -> Result<J::Output, DeviceError> {
    let ordinal = if local_rank == 0 {
        0
    } else {
        let count = cudarc::driver::CudaDevice::count().map_err(|e| DeviceError::Open {
            ordinal: local_rank,
            reason: format!("{e:?}"),
        })? as usize;
        match count {
            1 => 0,
            n if local_rank < n => local_rank,
            _ => return Err(DeviceError::NoGpuForRank { local_rank, count }),
        }
    };
    let dev = dfdx::tensor::Cuda::try_build(ordinal, seed).map_err(|e| DeviceError::Open {
        ordinal,
        reason: format!("{e:?}"),
    })?;
    dev.enable_cache();
    Ok(job.run(dev, format!("CUDA device {ordinal}")))
}

#[cfg(not(feature = "cuda"))]
fn on_cuda<J: DeviceJob>(_: usize, _: u64, _: J) -> Result<J::Output, DeviceError> {
    Err(DeviceError::NoCuda)
}
