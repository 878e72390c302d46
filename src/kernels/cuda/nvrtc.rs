//! The fast path's own kernels (`kernels.cu`, everything but the convolutions): compiled by
//! NVRTC when the kernels start, loaded into dfdx's context, looked up once, and launched
//! with every launch checked.

use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaFunction, LaunchAsync, LaunchConfig};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

use super::check;
use crate::kernels::{KernelError, KernelResult};

const MODULE: &str = "alexnet_fast";
const SOURCE: &str = include_str!("kernels.cu");
/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;
/// Must equal `RELU_BIAS_THREADS` in the CUDA source: the kernel's shared-memory tree is
/// sized by it.
const RELU_BIAS_THREADS: u32 = 256;
/// Must equal `RELU_BIAS_CHUNK` in the CUDA source: the values of a channel one block sums.
const RELU_BIAS_CHUNK: usize = 8192;
/// Must equal `RELU_BIAS_ROWS` and `RELU_BIAS_LANES` in the CUDA source: the rows and the
/// channels one block of `relu_bias_partials_nhwc` sums.
const RELU_BIAS_ROWS: usize = 1024;
const RELU_BIAS_LANES: usize = 32;
/// The shared memory the NHWC LRN kernels may take per block: a block holds whole rows of
/// channels, as many as fit (at least one).
const LRN_SHARED_FLOATS: usize = 4096;
/// The most channels an NHWC LRN block holds in the 48 KiB of shared memory a kernel may take
/// without asking for more.
pub(super) const LRN_NHWC_MAX_CHANNELS: usize = 12 * 1024;
/// Must equal `SOFTMAX_THREADS` in the CUDA source: the kernel's shared-memory tree and its
/// stride over a row are sized by it.
pub(super) const SOFTMAX_THREADS: u32 = 256;

/// Each kernel's name in `kernels.cu` and the call its launch errors name.
const KERNELS: [(&str, &str); 22] = [
    ("normalize", "cuLaunchKernel(normalize)"),
    ("bias_relu", "cuLaunchKernel(bias_relu)"),
    ("relu_bias_partials", "cuLaunchKernel(relu_bias_partials)"),
    (
        "relu_bias_partials_nhwc",
        "cuLaunchKernel(relu_bias_partials_nhwc)",
    ),
    ("lrn_forward", "cuLaunchKernel(lrn_forward)"),
    ("lrn_backward", "cuLaunchKernel(lrn_backward)"),
    ("lrn_forward_nhwc", "cuLaunchKernel(lrn_forward_nhwc)"),
    ("lrn_backward_nhwc", "cuLaunchKernel(lrn_backward_nhwc)"),
    ("pool_forward", "cuLaunchKernel(pool_forward)"),
    ("pool_backward", "cuLaunchKernel(pool_backward)"),
    ("pool_forward_nhwc", "cuLaunchKernel(pool_forward_nhwc)"),
    ("pool_backward_nhwc", "cuLaunchKernel(pool_backward_nhwc)"),
    ("copy", "cuLaunchKernel(copy)"),
    ("to_channels_last", "cuLaunchKernel(to_channels_last)"),
    ("from_channels_last", "cuLaunchKernel(from_channels_last)"),
    ("sgd", "cuLaunchKernel(sgd)"),
    ("sgd_all", "cuLaunchKernel(sgd_all)"),
    ("dropout_mask", "cuLaunchKernel(dropout_mask)"),
    ("bias_add", "cuLaunchKernel(bias_add)"),
    ("bias_backward", "cuLaunchKernel(bias_backward)"),
    ("multiply", "cuLaunchKernel(multiply)"),
    (
        "softmax_cross_entropy",
        "cuLaunchKernel(softmax_cross_entropy)",
    ),
];

/// One loaded kernel.
pub(super) struct Kernel {
    function: CudaFunction,
    call: &'static str,
}

impl Kernel {
    /// Queues the kernel on the device's stream. A failure to queue it is an error naming
    /// the kernel; a fault while it runs surfaces at the next call that waits (see `check`).
    ///
    /// # Safety
    /// `params` must match the kernel's parameters in `kernels.cu`, and every buffer must be
    /// as long as the kernel indexes for `cfg` and those parameters.
    pub(super) unsafe fn launch<P>(&self, cfg: LaunchConfig, params: P) -> KernelResult
    where
        CudaFunction: LaunchAsync<P>,
    {
        self.function
            .clone()
            .launch(cfg, params)
            .map_err(|e| check::driver(self.call, e))
    }
}

/// The NVRTC kernels, looked up once.
pub(super) struct Functions {
    pub(super) normalize: Kernel,
    pub(super) bias_relu: Kernel,
    pub(super) relu_bias_partials: Kernel,
    pub(super) relu_bias_partials_nhwc: Kernel,
    pub(super) lrn_forward: Kernel,
    pub(super) lrn_backward: Kernel,
    pub(super) lrn_forward_nhwc: Kernel,
    pub(super) lrn_backward_nhwc: Kernel,
    pub(super) pool_forward: Kernel,
    pub(super) pool_backward: Kernel,
    pub(super) pool_forward_nhwc: Kernel,
    pub(super) pool_backward_nhwc: Kernel,
    pub(super) copy: Kernel,
    pub(super) to_channels_last: Kernel,
    pub(super) from_channels_last: Kernel,
    pub(super) sgd: Kernel,
    pub(super) sgd_all: Kernel,
    pub(super) dropout_mask: Kernel,
    pub(super) bias_add: Kernel,
    pub(super) bias_backward: Kernel,
    pub(super) multiply: Kernel,
    pub(super) softmax_cross_entropy: Kernel,
}

/// What to try when the kernels cannot be built or loaded.
const REMEDY: &str = "the fast path needs NVRTC (libnvrtc) from a CUDA toolkit no newer than \
                      the driver; fix the installation, or run with --engine dfdx";

impl Functions {
    /// Compiles `kernels.cu` and loads it into `dev`'s context. Every failure is a
    /// `KernelError::Setup` saying what to do.
    pub(super) fn load(dev: &Arc<CudaDevice>) -> KernelResult<Self> {
        // No contraction into fused multiply-adds: the elementwise kernels then round exactly
        // like the host reference's separate multiplies and adds.
        let options = CompileOptions {
            fmad: Some(false),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(SOURCE, options).map_err(|e| {
            KernelError::Setup(format!(
                "NVRTC could not compile the fast path's kernels \
                 (src/kernels/cuda/kernels.cu): {}; {REMEDY}",
                compile_error(&e)
            ))
        })?;
        dev.load_ptx(ptx, MODULE, &KERNELS.map(|(name, _)| name))
            .map_err(|e| {
                KernelError::Setup(format!(
                    "the driver could not load the compiled kernels (cuModuleLoadData): {}; \
                     {REMEDY}",
                    check::driver_status(&e)
                ))
            })?;
        let get = |name: &str| -> KernelResult<Kernel> {
            let found = KERNELS.iter().find(|(n, _)| *n == name);
            let function = found.and_then(|(n, _)| dev.get_func(MODULE, n));
            match (found, function) {
                (Some(&(_, call)), Some(function)) => Ok(Kernel { function, call }),
                _ => Err(KernelError::Setup(format!(
                    "kernel {name} is missing from the loaded module: kernels.cu and the \
                     table in src/kernels/cuda/nvrtc.rs disagree (a bug in this build)"
                ))),
            }
        };
        Ok(Self {
            normalize: get("normalize")?,
            bias_relu: get("bias_relu")?,
            relu_bias_partials: get("relu_bias_partials")?,
            relu_bias_partials_nhwc: get("relu_bias_partials_nhwc")?,
            lrn_forward: get("lrn_forward")?,
            lrn_backward: get("lrn_backward")?,
            lrn_forward_nhwc: get("lrn_forward_nhwc")?,
            lrn_backward_nhwc: get("lrn_backward_nhwc")?,
            pool_forward: get("pool_forward")?,
            pool_backward: get("pool_backward")?,
            pool_forward_nhwc: get("pool_forward_nhwc")?,
            pool_backward_nhwc: get("pool_backward_nhwc")?,
            copy: get("copy")?,
            to_channels_last: get("to_channels_last")?,
            from_channels_last: get("from_channels_last")?,
            sgd: get("sgd")?,
            sgd_all: get("sgd_all")?,
            dropout_mask: get("dropout_mask")?,
            bias_add: get("bias_add")?,
            bias_backward: get("bias_backward")?,
            multiply: get("multiply")?,
            softmax_cross_entropy: get("softmax_cross_entropy")?,
        })
    }
}

/// NVRTC's status and, for a compile error, its log (cudarc's `Display` prints the log as an
/// escaped C string).
fn compile_error(error: &CompileError) -> String {
    match error {
        CompileError::CompileError { nvrtc, log, .. } => {
            format!("{:?}: {}", nvrtc.0, log.to_string_lossy().trim_end())
        }
        other => format!("{other:?}"),
    }
}

/// One thread per item, `THREADS` per block.
pub(super) fn grid(n: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Must equal `SGD_MAX_TENSORS` in the CUDA source: the tensors `sgd_all` holds in shared
/// memory.
pub(super) const SGD_MAX_TENSORS: usize = 32;

/// `sgd_all`'s launch over `total` values: a grid-stride loop, enough blocks to fill any GPU.
pub(super) fn grid_stride(total: u64) -> LaunchConfig {
    const MAX_BLOCKS: u64 = 4096;
    let blocks = total.div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// How many blocks `relu_bias_partials` gives each channel of `count` values (a function of
/// the shape alone, so the sums' order, and their rounding, never changes).
pub(super) fn relu_bias_splits(count: usize) -> u32 {
    count.div_ceil(RELU_BIAS_CHUNK).max(1) as u32
}

/// `relu_bias_partials`'s launch: `splits × channels` blocks of exactly `RELU_BIAS_THREADS`
/// threads (each block its own fixed reduction tree: deterministic without atomics).
pub(super) fn per_chunk(splits: u32, channels: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (splits, channels, 1),
        block_dim: (RELU_BIAS_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// How many blocks of rows `relu_bias_partials_nhwc` splits `rows` rows into (a function of
/// the shape alone, as `relu_bias_splits`).
pub(super) fn relu_bias_row_splits(rows: usize) -> u32 {
    rows.div_ceil(RELU_BIAS_ROWS).max(1) as u32
}

/// `relu_bias_partials_nhwc`'s launch: a block of exactly `RELU_BIAS_THREADS` threads per
/// 32 channels and split of the rows.
pub(super) fn per_lanes_and_rows(channels: u32, splits: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (channels.div_ceil(RELU_BIAS_LANES as u32), splits, 1),
        block_dim: (RELU_BIAS_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The NHWC LRN kernels' launch over `rows` rows of `channels` (at most
/// `LRN_NHWC_MAX_CHANNELS`, checked by the caller): whole rows per block, as many as
/// `LRN_SHARED_FLOATS` hold, and the shared memory they take. Returns the rows per block too.
pub(super) fn lrn_rows(rows: u32, channels: u32) -> (LaunchConfig, u32) {
    let per_block = (LRN_SHARED_FLOATS as u32 / channels.max(1)).max(1);
    let config = LaunchConfig {
        grid_dim: (rows.div_ceil(per_block), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: per_block * channels * std::mem::size_of::<f32>() as u32,
    };
    (config, per_block)
}

/// `softmax_cross_entropy`'s launch: one block of exactly `SOFTMAX_THREADS` threads per row.
pub(super) fn per_row(rows: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (SOFTMAX_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC compiles `kernels.cu` without the host headers nvcc would add (no `INFINITY`, for
    /// one), so the source is compiled here as the fast path compiles it. Needs libnvrtc, not a
    /// GPU: `cargo test --features cuda --lib nvrtc` on a machine with the CUDA toolkit.
    #[test]
    fn the_kernels_compile_under_nvrtc() {
        let options = CompileOptions {
            fmad: Some(false),
            ..Default::default()
        };
        if let Err(e) = compile_ptx_with_opts(SOURCE, options) {
            panic!("{}", compile_error(&e));
        }
    }
}
