//! The fast path's own kernels (`kernels.cu`, everything but the convolutions): compiled by
//! NVRTC when the kernels start, loaded into dfdx's context, looked up once, and launched
//! with every launch checked.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaFunction, CudaStream, LaunchAsync, LaunchConfig};
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
macro_rules! kernel_table {
    ($($name:literal),* $(,)?) => {
        [$(($name, concat!("cuLaunchKernel(", $name, ")"))),*]
    };
}
const KERNELS: [(&str, &str); 40] = kernel_table![
    "normalize",
    "normalize_bf16",
    "bias_relu",
    "bias_relu_bf16",
    "relu_bias_partials",
    "relu_bias_partials_bf16",
    "relu_bias_partials_nhwc",
    "relu_bias_partials_nhwc_bf16",
    "lrn_forward",
    "lrn_forward_bf16",
    "lrn_backward",
    "lrn_backward_bf16",
    "lrn_forward_nhwc",
    "lrn_forward_nhwc_bf16",
    "lrn_backward_nhwc",
    "lrn_backward_nhwc_bf16",
    "pool_forward",
    "pool_forward_bf16",
    "pool_backward",
    "pool_backward_bf16",
    "pool_forward_nhwc",
    "pool_forward_nhwc_bf16",
    "pool_backward_nhwc",
    "pool_backward_nhwc_bf16",
    "copy",
    "copy_widen",
    "copy_narrow",
    "to_channels_last",
    "to_channels_last_widen",
    "to_channels_last_narrow",
    "from_channels_last",
    "from_channels_last_widen",
    "from_channels_last_narrow",
    "sgd",
    "sgd_all",
    "dropout_mask",
    "bias_add",
    "bias_backward",
    "multiply",
    "softmax_cross_entropy",
];

/// Where every kernel is launched: the device's stream, or while a pass is being recorded
/// (`graphs`) the recording stream. Shared by all the kernels of one `Functions` (and so
/// owned by one `CudaKernels`, whose every clone of it moves with it).
#[derive(Clone, Default)]
pub(super) struct LaunchStream(Rc<RefCell<Option<Rc<CudaStream>>>>);

impl LaunchStream {
    fn get(&self) -> Option<Rc<CudaStream>> {
        self.0.borrow().clone()
    }

    fn set(&self, stream: Option<Rc<CudaStream>>) {
        *self.0.borrow_mut() = stream;
    }
}

/// One loaded kernel.
pub(super) struct Kernel {
    function: CudaFunction,
    call: &'static str,
    stream: LaunchStream,
}

impl Kernel {
    /// Queues the kernel on the device's stream (or the recording stream). A failure to queue
    /// it is an error naming the kernel; a fault while it runs surfaces at the next call that
    /// waits (see `check`).
    ///
    /// # Safety
    /// `params` must match the kernel's parameters in `kernels.cu`, and every buffer must be
    /// as long as the kernel indexes for `cfg` and those parameters.
    pub(super) unsafe fn launch<P>(&self, cfg: LaunchConfig, params: P) -> KernelResult
    where
        CudaFunction: LaunchAsync<P>,
    {
        let function = self.function.clone();
        match self.stream.get() {
            Some(stream) => function.launch_on_stream(&stream, cfg, params),
            None => function.launch(cfg, params),
        }
        .map_err(|e| check::driver(self.call, e))
    }
}

/// A kernel over activations, as instantiated for each of their element types.
pub(super) struct Typed {
    f32: Kernel,
    bf16: Kernel,
}

impl Typed {
    /// The instantiation for bf16 activations, or for f32 ones.
    pub(super) fn of(&self, bf16: bool) -> &Kernel {
        if bf16 {
            &self.bf16
        } else {
            &self.f32
        }
    }
}

/// A layout or type conversion: f32 → f32, bf16 → f32 (`widen`) and f32 → bf16 (`narrow`).
pub(super) struct Converting {
    pub(super) same: Kernel,
    pub(super) widen: Kernel,
    pub(super) narrow: Kernel,
}

/// The NVRTC kernels, looked up once.
pub(super) struct Functions {
    pub(super) normalize: Typed,
    pub(super) bias_relu: Typed,
    pub(super) relu_bias_partials: Typed,
    pub(super) relu_bias_partials_nhwc: Typed,
    pub(super) lrn_forward: Typed,
    pub(super) lrn_backward: Typed,
    pub(super) lrn_forward_nhwc: Typed,
    pub(super) lrn_backward_nhwc: Typed,
    pub(super) pool_forward: Typed,
    pub(super) pool_backward: Typed,
    pub(super) pool_forward_nhwc: Typed,
    pub(super) pool_backward_nhwc: Typed,
    pub(super) copy: Converting,
    pub(super) to_channels_last: Converting,
    pub(super) from_channels_last: Converting,
    pub(super) sgd: Kernel,
    pub(super) sgd_all: Kernel,
    pub(super) dropout_mask: Kernel,
    pub(super) bias_add: Kernel,
    pub(super) bias_backward: Kernel,
    pub(super) multiply: Kernel,
    pub(super) softmax_cross_entropy: Kernel,
    stream: LaunchStream,
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
        let stream = LaunchStream::default();
        let get = |name: &str| -> KernelResult<Kernel> {
            let found = KERNELS.iter().find(|(n, _)| *n == name);
            let function = found.and_then(|(n, _)| dev.get_func(MODULE, n));
            match (found, function) {
                (Some(&(_, call)), Some(function)) => Ok(Kernel {
                    function,
                    call,
                    stream: stream.clone(),
                }),
                _ => Err(KernelError::Setup(format!(
                    "kernel {name} is missing from the loaded module: kernels.cu and the \
                     table in src/kernels/cuda/nvrtc.rs disagree (a bug in this build)"
                ))),
            }
        };
        let typed = |name: &str| -> KernelResult<Typed> {
            Ok(Typed {
                f32: get(name)?,
                bf16: get(&format!("{name}_bf16"))?,
            })
        };
        let converting = |name: &str| -> KernelResult<Converting> {
            Ok(Converting {
                same: get(name)?,
                widen: get(&format!("{name}_widen"))?,
                narrow: get(&format!("{name}_narrow"))?,
            })
        };
        Ok(Self {
            normalize: typed("normalize")?,
            bias_relu: typed("bias_relu")?,
            relu_bias_partials: typed("relu_bias_partials")?,
            relu_bias_partials_nhwc: typed("relu_bias_partials_nhwc")?,
            lrn_forward: typed("lrn_forward")?,
            lrn_backward: typed("lrn_backward")?,
            lrn_forward_nhwc: typed("lrn_forward_nhwc")?,
            lrn_backward_nhwc: typed("lrn_backward_nhwc")?,
            pool_forward: typed("pool_forward")?,
            pool_backward: typed("pool_backward")?,
            pool_forward_nhwc: typed("pool_forward_nhwc")?,
            pool_backward_nhwc: typed("pool_backward_nhwc")?,
            copy: converting("copy")?,
            to_channels_last: converting("to_channels_last")?,
            from_channels_last: converting("from_channels_last")?,
            sgd: get("sgd")?,
            sgd_all: get("sgd_all")?,
            dropout_mask: get("dropout_mask")?,
            bias_add: get("bias_add")?,
            bias_backward: get("bias_backward")?,
            multiply: get("multiply")?,
            softmax_cross_entropy: get("softmax_cross_entropy")?,
            stream,
        })
    }

    /// Launches every kernel on `stream` from now on (`None`: the device's stream).
    pub(super) fn launch_on(&self, stream: Option<Rc<CudaStream>>) {
        self.stream.set(stream);
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
        let ptx = match compile_ptx_with_opts(SOURCE, options) {
            Ok(ptx) => ptx.to_src(),
            Err(e) => panic!("{}", compile_error(&e)),
        };
        // Every kernel the table names is an entry point of the module, and nothing more.
        let entries: Vec<&str> = ptx
            .lines()
            .filter_map(|l| l.strip_prefix(".visible .entry "))
            .map(|l| l.split('(').next().unwrap_or(l))
            .collect();
        let mut names: Vec<&str> = KERNELS.iter().map(|(name, _)| *name).collect();
        let mut found = entries;
        names.sort_unstable();
        found.sort_unstable();
        assert_eq!(names, found);
    }
}
