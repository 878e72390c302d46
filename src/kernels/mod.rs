//! The kernel interface of the fast path: every operation the convolutional part needs, on
//! buffers of the dfdx device's own type (`<D as Storage<f32>>::Vec`: a `Vec<f32>` on the
//! CPU, a `CudaSlice<f32>` on CUDA), so features and their gradient cross into dfdx without
//! conversion.
//!
//! Layouts: activations in the kernels' `Layout` — NCHW `(B, C, S, S)`, each channel a plane,
//! or NHWC `(B, S, S, C)`, each pixel's channels together (what cuDNN's tensor-core
//! convolutions read) — and filters always OIHW `(O, C, K, K)`, the layout of PyTorch's
//! checkpoints. A `Planes` or shape names the dimensions, the layout their order. The flattened
//! features FC6 reads are channels-last, `(B, S·S·C)`, as in the dfdx path, in both layouts.
//!
//! Element types: in `Precision::Bf16` the *activation buffers* — the convolutional part's
//! activations and their gradients, from the normalised input to pool5's output — hold
//! bfloat16 values (`alloc_activation`; on a GPU two to each f32 slot of the device's buffer
//! type, on the CPU f32 values rounded to bf16), and the kernels read and write them as such;
//! every other buffer (parameters, their gradients and momentum, LRN's denominators, pooling's
//! choices, the flattened features and everything in the fully connected part) is f32 in every
//! precision. Each method below names its activation buffers.
//!
//! Every output buffer is overwritten, never added to. `host::HostKernels` is the plain
//! reference; `cuda::CudaKernels` the GPU one.

pub mod bf16;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
pub mod loops;
pub mod replay;

pub use crate::config::{Layout, Precision};
use crate::dist::Control;
use dfdx::prelude::Storage;

/// One convolution of a batch: square input and kernel, no dilation, no groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Side of the input.
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn out_size(&self) -> usize {
        (self.size + 2 * self.pad - self.kernel) / self.stride + 1
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.size * self.size
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_size() * self.out_size()
    }

    pub fn filter_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel * self.kernel
    }

    /// The input as planes.
    pub fn input_planes(&self) -> Planes {
        Planes {
            batch: self.batch,
            channels: self.in_channels,
            pixels: self.size * self.size,
        }
    }

    /// The output as a plane shape (for bias, ReLU and LRN).
    pub fn output_planes(&self) -> Planes {
        Planes {
            batch: self.batch,
            channels: self.out_channels,
            pixels: self.out_size() * self.out_size(),
        }
    }
}

/// An activation of `batch` images of `channels` channels of `pixels` values each (stored in
/// the kernels' `Layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Planes {
    pub batch: usize,
    pub channels: usize,
    pub pixels: usize,
}

impl Planes {
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.pixels
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Max pooling over square windows without padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolShape {
    pub batch: usize,
    pub channels: usize,
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl PoolShape {
    pub fn out_size(&self) -> usize {
        (self.size - self.kernel) / self.stride + 1
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.size * self.size
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.channels * self.out_size() * self.out_size()
    }

    pub fn input_planes(&self) -> Planes {
        Planes {
            batch: self.batch,
            channels: self.channels,
            pixels: self.size * self.size,
        }
    }

    pub fn output_planes(&self) -> Planes {
        Planes {
            batch: self.batch,
            channels: self.channels,
            pixels: self.out_size() * self.out_size(),
        }
    }
}

/// The most values a pooled plane may hold: pooling's arg-max indices are kept in f32
/// buffers, exact up to 2^24.
pub const MAX_POOL_PLANE: usize = 1 << 24;

/// Local response normalisation across channels, the paper's (and the dfdx path's) formula:
/// `b_c = a_c / d_c^β` with `d_c = k + α Σ_{|c'−c| ≤ size/2} a_c'²` (α not divided by size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrnParams {
    pub size: usize,
    pub k: f32,
    pub alpha: f32,
    pub beta: f32,
}

/// A u8 batch to normalise: crops `(B, crop, crop, 3)` as the loader packs them (HWC), the
/// row of the mean-row table each crop row subtracts, each image's lighting offset and the
/// per-channel scale. See `engine::input` for the table.
#[derive(Debug, Clone, Copy)]
pub struct InputBatch<'a> {
    pub pixels: &'a [u8],
    /// `B × crop` rows into the table.
    pub mean_rows: &'a [u32],
    /// `B × 3` per-image offsets, added after the mean is subtracted.
    pub lighting: &'a [f32],
    /// Multiplies the result per channel (ones for mean-image normalisation).
    pub scale: [f32; 3],
    pub batch: usize,
    pub crop: usize,
}

/// A row-major matrix product `c (m × n) = op(a) · op(b)` (the fully connected layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatMul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `a` is stored `(k, m)` and used transposed; else it is stored `(m, k)`.
    pub a_transposed: bool,
    /// `b` is stored `(n, k)` and used transposed; else it is stored `(k, n)`.
    pub b_transposed: bool,
}

impl MatMul {
    /// A fully connected layer's forward product over `rows` rows:
    /// `y (rows, outputs) = x (rows, inputs) · W (inputs, outputs)`.
    pub fn dense_forward(rows: usize, inputs: usize, outputs: usize) -> Self {
        Self {
            m: rows,
            n: outputs,
            k: inputs,
            a_transposed: false,
            b_transposed: false,
        }
    }

    /// Its weight gradient: `dW (inputs, outputs) = xᵀ · dy`.
    pub fn dense_weight_gradient(rows: usize, inputs: usize, outputs: usize) -> Self {
        Self {
            m: inputs,
            n: outputs,
            k: rows,
            a_transposed: true,
            b_transposed: false,
        }
    }

    /// Its input gradient: `dx (rows, inputs) = dy · Wᵀ`.
    pub fn dense_input_gradient(rows: usize, inputs: usize, outputs: usize) -> Self {
        Self {
            m: rows,
            n: inputs,
            k: outputs,
            a_transposed: false,
            b_transposed: true,
        }
    }

    pub fn a_len(&self) -> usize {
        self.m * self.k
    }

    pub fn b_len(&self) -> usize {
        self.k * self.n
    }

    pub fn c_len(&self) -> usize {
        self.m * self.n
    }
}

/// Momentum SGD with weight decay, PyTorch's formulation (see `engine::sgd`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    pub learning_rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// One tensor of an SGD update: the weights, their momentum and their gradient.
pub struct SgdTensor<'a, D: Storage<f32>> {
    pub w: &'a mut Buf<D>,
    pub v: &'a mut Buf<D>,
    pub g: &'a Buf<D>,
}

/// One dropout mask, `images × units` values: 0 where a unit is dropped (rate `rate`), else
/// `keep`, drawn as `seed::dropout_mask` draws them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    pub key: u64,
    /// The first image's row in the whole batch (a rank's slice starts further in), so that
    /// an image's mask is the same however the batch is cut.
    pub first_image: u64,
    pub rate: f64,
    pub keep: f32,
    pub images: usize,
    pub units: usize,
}

impl DropoutMask {
    pub fn len(&self) -> usize {
        self.images * self.units
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Buffers of device `D`.
pub type Buf<D> = <D as Storage<f32>>::Vec;

/// A kernel call that failed. Kernels return these instead of panicking, so that a run can
/// stop cleanly (keeping its last good checkpoint) and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "{device} is out of memory: {call} asked for {} ({})",
        size_text(*.bytes), memory_text(*.memory)
    )]
    OutOfMemory {
        device: &'static str,
        call: &'static str,
        bytes: usize,
        memory: Option<Memory>,
    },
    #[error("{call} failed: {status}")]
    Failed { call: &'static str, status: String },
    #[error("cannot start the fast path's kernels: {0}")]
    Setup(String),
    /// Summing gradients with the other ranks of a data-parallel job failed.
    #[error(transparent)]
    Dist(Box<crate::dist::DistError>),
}

impl From<crate::dist::DistError> for KernelError {
    fn from(e: crate::dist::DistError) -> Self {
        Self::Dist(Box::new(e))
    }
}

impl KernelError {
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::OutOfMemory { .. })
    }
}

/// A device's memory at one moment, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub free: usize,
    pub total: usize,
}

/// A byte count for people: `812 B`, `36.1 KiB`, `45.0 MiB`, `1.2 GiB`.
pub fn size_text(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn memory_text(memory: Option<Memory>) -> String {
    match memory {
        Some(m) => format!("{} free of {}", size_text(m.free), size_text(m.total)),
        None => "free memory unknown".into(),
    }
}

pub type KernelResult<T = ()> = Result<T, KernelError>;

/// A layer's weight and bias gradients, each with its number of values (a device's buffer may
/// be longer; the ranks must sum exactly the same counts).
pub type LayerGradients<'a, D> = [(&'a mut Buf<D>, usize); 2];

/// Sums one layer's gradients at a time across the ranks of a data-parallel job, in place, so
/// that every rank updates its weights with the whole batch's gradient (see `dist`).
pub trait GradientSum<D: Storage<f32>> {
    /// Starts summing `grads` (a layer's weight and bias gradients, just written by the
    /// backward pass). It may return before the sums are done: on the GPU they run beside the
    /// rest of the backward pass.
    fn layer(&mut self, control: &mut Control, grads: LayerGradients<'_, D>) -> KernelResult;
    /// Returns once every sum started is done, as far as the update's reads are concerned.
    fn finish(&mut self) -> KernelResult;
}

/// What the fast path runs. Each method writes only its output buffer(s); shapes are
/// trusted (the caller allocates from the same shapes). Every call returns an error instead
/// of panicking; a GPU implementation may report an asynchronous failure at a later call
/// (at the latest at `synchronize` or `download`).
pub trait Kernels<D: Storage<f32>> {
    /// How these kernels lay out activations (chosen when they are made).
    fn layout(&self) -> Layout;
    /// Their arithmetic, and with it the activation buffers' element type.
    fn precision(&self) -> Precision;
    /// `len` f32 values, contents unspecified.
    fn alloc(&mut self, len: usize) -> KernelResult<Buf<D>>;
    fn upload(&mut self, host: &[f32]) -> KernelResult<Buf<D>>;
    fn download(&mut self, buf: &Buf<D>) -> KernelResult<Vec<f32>>;
    /// The first `len` values of `buf` on the host: a device's allocator may hand out longer
    /// buffers than asked for.
    fn download_prefix(&mut self, buf: &Buf<D>, len: usize) -> KernelResult<Vec<f32>> {
        let mut host = self.download(buf)?;
        host.truncate(len);
        Ok(host)
    }
    /// An activation buffer of `len` values in the precision's element type, contents
    /// unspecified.
    fn alloc_activation(&mut self, len: usize) -> KernelResult<Buf<D>>;
    /// `host` as an activation buffer (rounded to bf16 in `Precision::Bf16`).
    fn upload_activation(&mut self, host: &[f32]) -> KernelResult<Buf<D>>;
    /// The first `len` values of activation buffer `buf`, as f32.
    fn download_activation(&mut self, buf: &Buf<D>, len: usize) -> KernelResult<Vec<f32>>;
    /// Waits for queued work (for timing, and to surface asynchronous failures).
    fn synchronize(&mut self) -> KernelResult;
    /// The device's free and total memory, where it can be known.
    fn memory(&mut self) -> Option<Memory>;
    /// The convolution algorithms chosen so far, one line per shape (for the check's report).
    fn algorithms(&self) -> Vec<String> {
        Vec::new()
    }

    /// The mean-row table `(rows, crop · 3)` that `normalize` cuts crops' means from; kept by
    /// the kernels (uploaded once per run).
    fn set_mean_table(&mut self, table: &[f32], row_len: usize) -> KernelResult;
    /// `x[b, c, y, x] = pixels::normalize(pixel[b, y, x, c], mean[row(b, y)][x·3 + c],
    /// lighting[b, c], scale[c])`, `x` (an activation buffer) in the kernels' layout.
    fn normalize(&mut self, input: &InputBatch, x: &mut Buf<D>) -> KernelResult;

    /// `y = x ⋆ w` (no bias). `x`, `y`: activations; `w` f32 (fed to the convolution in bf16
    /// in `Precision::Bf16`).
    fn conv_forward(
        &mut self,
        shape: &ConvShape,
        x: &Buf<D>,
        w: &Buf<D>,
        y: &mut Buf<D>,
    ) -> KernelResult;
    /// `dx = ∂(x ⋆ w)/∂x · dy`. `dy`, `dx`: activations.
    fn conv_backward_data(
        &mut self,
        shape: &ConvShape,
        dy: &Buf<D>,
        w: &Buf<D>,
        dx: &mut Buf<D>,
    ) -> KernelResult;
    /// `dw = ∂(x ⋆ w)/∂w · dy`. `x`, `dy`: activations; `dw` f32 (in `Precision::Bf16`
    /// computed in bf16, as cuDNN's bf16 convolutions write it, then widened).
    fn conv_backward_filter(
        &mut self,
        shape: &ConvShape,
        x: &Buf<D>,
        dy: &Buf<D>,
        dw: &mut Buf<D>,
    ) -> KernelResult;

    /// `y ← max(y + bias[c], 0)`, in place (`y` an activation).
    fn bias_relu(&mut self, planes: &Planes, y: &mut Buf<D>, bias: &Buf<D>) -> KernelResult;
    /// Given the ReLU's output `y`: `dy ← dy · [y > 0]` in place, and `db[c] = Σ_{b,p} dy`
    /// (`y`, `dy` activations, `db` f32).
    fn relu_bias_backward(
        &mut self,
        planes: &Planes,
        y: &Buf<D>,
        dy: &mut Buf<D>,
        db: &mut Buf<D>,
    ) -> KernelResult;

    /// `y = x / d^β`, keeping `d` (same shape, f32) for the backward pass; `x`, `y`
    /// activations.
    fn lrn_forward(
        &mut self,
        planes: &Planes,
        lrn: &LrnParams,
        x: &Buf<D>,
        y: &mut Buf<D>,
        d: &mut Buf<D>,
    ) -> KernelResult;
    /// `dx` from `x`, the kept `d` and `dy` (all but `d` activations).
    #[allow(clippy::too_many_arguments)]
    fn lrn_backward(
        &mut self,
        planes: &Planes,
        lrn: &LrnParams,
        x: &Buf<D>,
        d: &Buf<D>,
        dy: &Buf<D>,
        dx: &mut Buf<D>,
    ) -> KernelResult;

    /// Window maxima `y`, and in `argmax` (`y`'s shape and layout) each window's choice for
    /// the backward pass: the index within its input plane (`iy · size + ix`, in either layout)
    /// of the window's first maximum in row-major order, replaced only by a strictly greater
    /// value (so a NaN is chosen only as a window's first value). Stored as f32, exact since a
    /// plane holds at most 2^24 values (`MAX_POOL_PLANE`; larger planes are refused). `x`,
    /// `y`: activations.
    fn pool_forward(
        &mut self,
        shape: &PoolShape,
        x: &Buf<D>,
        y: &mut Buf<D>,
        argmax: &mut Buf<D>,
    ) -> KernelResult;
    /// Each input gets the sum of `dy` over the windows whose `argmax` (from `pool_forward`)
    /// chose it, added in window order (rows, then columns); inputs that no window chose get 0.
    /// `dy`, `dx`: activations.
    fn pool_backward(
        &mut self,
        shape: &PoolShape,
        argmax: &Buf<D>,
        dy: &Buf<D>,
        dx: &mut Buf<D>,
    ) -> KernelResult;

    /// Activations in the kernels' layout → `(B, pixels · C)` channels-last f32 (what FC6
    /// reads; a copy in NHWC).
    fn flatten_channels_last(
        &mut self,
        planes: &Planes,
        x: &Buf<D>,
        y: &mut Buf<D>,
    ) -> KernelResult;
    /// The inverse of `flatten_channels_last` (f32 into activations).
    fn unflatten_channels_last(
        &mut self,
        planes: &Planes,
        y: &Buf<D>,
        x: &mut Buf<D>,
    ) -> KernelResult;

    /// `c = op(a) · op(b)` (see `MatMul`), in the pipeline's precision (TF32 products where
    /// it is `tf32` and the device has them; in `bf16` the operands rounded to bf16 and the
    /// products summed in f32). All three f32.
    fn matmul(&mut self, mm: &MatMul, a: &Buf<D>, b: &Buf<D>, c: &mut Buf<D>) -> KernelResult;
    /// `y[r, c] += bias[c]` over `rows × columns` (a layer without ReLU; `bias_relu` with one
    /// pixel per channel is the one with).
    fn bias_add(
        &mut self,
        rows: usize,
        columns: usize,
        y: &mut Buf<D>,
        bias: &Buf<D>,
    ) -> KernelResult;
    /// `db[c] = Σ_r dy[r, c]`, rows added in order.
    fn bias_backward(
        &mut self,
        rows: usize,
        columns: usize,
        dy: &Buf<D>,
        db: &mut Buf<D>,
    ) -> KernelResult;
    /// `y = x ⊙ m` over the first `len` values (dropout, forward and backward).
    fn multiply(&mut self, len: usize, x: &Buf<D>, m: &Buf<D>, y: &mut Buf<D>) -> KernelResult;
    /// Softmax cross-entropy of `rows × classes` logits against `labels` (each below
    /// `classes`, else an error): into `row_stats` (`2 × rows` values) each row's loss
    /// `logsumexp(z) − z[label]`, then each row's count of the other classes that score at
    /// least as high as its label (`loops::classes_above`: top-1 when 0, top-5 below 5; ∞ for
    /// a NaN label score), so that a step downloads only these; and into `dlogits` the gradient
    /// of the mean loss over `mean_over` rows,
    /// `(softmax(z) − onehot(label)) / mean_over` — `rows` on one process; the whole batch's
    /// rows when these are one rank's slice of it, so that the ranks' gradients add up to it.
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy(
        &mut self,
        rows: usize,
        mean_over: usize,
        classes: usize,
        logits: &Buf<D>,
        labels: &[u32],
        row_stats: &mut Buf<D>,
        dlogits: &mut Buf<D>,
    ) -> KernelResult;

    /// `g' = g + λw; v ← μv + g'; w ← w − lr·v` for one parameter tensor.
    fn sgd(&mut self, step: &SgdStep, w: &mut Buf<D>, v: &mut Buf<D>, g: &Buf<D>) -> KernelResult;
    /// `sgd` of every tensor of the model at once (one launch on the GPU instead of one per
    /// tensor); each value computed exactly as `sgd` computes it.
    fn sgd_all(&mut self, step: &SgdStep, tensors: &mut [SgdTensor<'_, D>]) -> KernelResult {
        for t in tensors {
            self.sgd(step, t.w, t.v, t.g)?;
        }
        Ok(())
    }

    /// Writes dropout mask `mask` into `out` (drawn on the device, nothing uploaded).
    fn dropout_mask(&mut self, mask: &DropoutMask, out: &mut Buf<D>) -> KernelResult;

    /// Runs `work`: kernel launches only — the convolutions, the elementwise kernels,
    /// `matmul` — on buffers that stay put, the same launches whenever `key` is the same;
    /// nothing from the host (no upload or download, no `normalize`, `dropout_mask`,
    /// `softmax_cross_entropy` or SGD: their per-step values are written outside). With
    /// replaying on (`compute.graphs`), kernels that can record such a stretch replay it
    /// instead (see `replay`). `work` must not change host state: a replay does not call it.
    fn replayable(&mut self, key: replay::ReplayKey, work: replay::Work<'_, Self>) -> KernelResult
    where
        Self: Sized,
    {
        let _ = key;
        work(self)
    }
    /// How the stretches went; `None` when replaying is off.
    fn replay_stats(&self) -> Option<replay::ReplayStats> {
        None
    }
}
