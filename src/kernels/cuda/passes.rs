//! The three convolution passes (forward, backward-data, backward-filter) as one table of
//! cuDNN entry points.
//!
//! cuDNN gives every pass its own family of functions — maximum algorithm count, measuring
//! search, heuristic search, workspace size, the convolution itself — with the same shape of
//! arguments: the pass's two inputs, the convolution descriptor and its output, in the pass's
//! own order (forward: x, w → y; backward-data: w, dy → dx; backward-filter: x, dy → dw).
//! `PassApi` holds those functions behind uniform signatures that take all descriptors
//! (`Descriptors`) and pick their operands, so that choosing (`algorithms`) and running
//! (`CudaKernels::convolve`) are written once for the three.

use std::ffi::{c_int, c_void};

use super::ffi;
use crate::kernels::ConvShape;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Forward = 0,
    BackwardData = 1,
    BackwardFilter = 2,
}

impl Pass {
    pub(super) fn api(self) -> &'static PassApi {
        &PASSES[self as usize]
    }
}

/// Which of the convolution's three tensors an operand is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operand {
    /// `x` or `dx`, `shape.input_len()` values.
    Input,
    /// `w` or `dw`, `shape.filter_len()` values.
    Filter,
    /// `y` or `dy`, `shape.output_len()` values.
    Output,
}

impl Operand {
    pub(super) fn len(self, shape: &ConvShape) -> usize {
        match self {
            Operand::Input => shape.input_len(),
            Operand::Filter => shape.filter_len(),
            Operand::Output => shape.output_len(),
        }
    }
}

/// The raw descriptors of one pass of one shape (copied out of the plan so that the plan and
/// the workspace can be borrowed apart). Passes read the ones they need, in their order.
#[derive(Clone, Copy)]
pub(super) struct Descriptors {
    pub(super) x: ffi::cudnnTensorDescriptor_t,
    pub(super) w: ffi::cudnnFilterDescriptor_t,
    pub(super) y: ffi::cudnnTensorDescriptor_t,
    pub(super) conv: ffi::cudnnConvolutionDescriptor_t,
}

/// Device pointers of one convolution call, in the pass's argument order.
pub(super) struct Operands {
    pub(super) a: *const c_void,
    pub(super) b: *const c_void,
    pub(super) out: *mut c_void,
}

/// The scratch memory passed to a convolution: null and 0 when its algorithm needs none.
pub(super) struct Workspace {
    pub(super) ptr: *mut c_void,
    pub(super) bytes: usize,
}

/// A cuDNN function and its name, which errors report.
pub(super) struct Call<F> {
    pub(super) name: &'static str,
    pub(super) f: F,
}

type MaxCountFn = unsafe extern "C" fn(ffi::cudnnHandle_t, *mut c_int) -> ffi::Status;
/// `(handle, descriptors, requested, returned, results)`.
pub(super) type SearchFn = unsafe fn(
    ffi::cudnnHandle_t,
    &Descriptors,
    c_int,
    *mut c_int,
    *mut ffi::AlgoPerf,
) -> ffi::Status;
/// `(handle, descriptors, algorithm, bytes)`.
type WorkspaceFn = unsafe fn(ffi::cudnnHandle_t, &Descriptors, u32, *mut usize) -> ffi::Status;
/// `(handle, descriptors, algorithm, workspace, operands)`: `out = 1 · pass(a, b) + 0 · out`.
type RunFn = unsafe fn(ffi::cudnnHandle_t, &Descriptors, u32, Workspace, Operands) -> ffi::Status;

/// One pass's cuDNN entry points and what its operands are.
pub(super) struct PassApi {
    /// For messages: "forward", "backward-data", "backward-filter".
    pub(super) name: &'static str,
    /// The `Kernels` method running the pass; it names the host-side checks' errors.
    pub(super) method: &'static str,
    /// The call named when the workspace for this pass cannot be allocated.
    pub(super) workspace_call: &'static str,
    /// Names and kinds of `a`, `b` and `out`, in cuDNN's argument order.
    pub(super) operands: [(&'static str, Operand); 3],
    pub(super) max_count: Call<MaxCountFn>,
    /// Times every algorithm on buffers it allocates itself (host-blocking).
    pub(super) find: Call<SearchFn>,
    /// Ranks the algorithms by cuDNN's heuristics; depends on the shape alone.
    pub(super) heuristic: Call<SearchFn>,
    pub(super) workspace_size: Call<WorkspaceFn>,
    pub(super) run: Call<RunFn>,
    /// The pass's algorithms by number (`cudnn_ops.h`): name, and whether it computes the
    /// convolution's own products and sums (`false` for FFT and Winograd, which transform the
    /// operands first and round differently; strict fp32 leaves them out).
    pub(super) algorithms: &'static [(&'static str, bool)],
}

impl PassApi {
    /// The name of algorithm `algo` of this pass.
    pub(super) fn algorithm_name(&self, algo: u32) -> &'static str {
        self.algorithms
            .get(algo as usize)
            .map_or("unknown", |a| a.0)
    }

    /// Whether algorithm `algo` computes in the convolution's own arithmetic.
    pub(super) fn is_direct(&self, algo: u32) -> bool {
        self.algorithms.get(algo as usize).is_some_and(|a| a.1)
    }
}

// The scaling factors of every call: host f32s, the scaling type of f32 convolutions.
const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

fn scale(value: &'static f32) -> *const c_void {
    value as *const f32 as *const c_void
}

// Each closure below forwards to one cuDNN function with the descriptors in that function's
// order; the signatures are checked against `cudnn_cnn.h` in `ffi`.
static PASSES: [PassApi; 3] = [
    PassApi {
        name: "forward",
        method: "conv_forward",
        workspace_call: "cuMemAlloc (cuDNN workspace of conv_forward)",
        operands: [
            ("x", Operand::Input),
            ("w", Operand::Filter),
            ("y", Operand::Output),
        ],
        max_count: Call {
            name: "cudnnGetConvolutionForwardAlgorithmMaxCount",
            f: ffi::cudnnGetConvolutionForwardAlgorithmMaxCount,
        },
        find: Call {
            name: "cudnnFindConvolutionForwardAlgorithm",
            f: |h, d, n, r, p| unsafe {
                ffi::cudnnFindConvolutionForwardAlgorithm(h, d.x, d.w, d.conv, d.y, n, r, p)
            },
        },
        heuristic: Call {
            name: "cudnnGetConvolutionForwardAlgorithm_v7",
            f: |h, d, n, r, p| unsafe {
                ffi::cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, n, r, p)
            },
        },
        workspace_size: Call {
            name: "cudnnGetConvolutionForwardWorkspaceSize",
            f: |h, d, algo, bytes| unsafe {
                ffi::cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, algo, bytes)
            },
        },
        run: Call {
            name: "cudnnConvolutionForward",
            f: |h, d, algo, ws, o| unsafe {
                ffi::cudnnConvolutionForward(
                    h,
                    scale(&ONE),
                    d.x,
                    o.a,
                    d.w,
                    o.b,
                    d.conv,
                    algo,
                    ws.ptr,
                    ws.bytes,
                    scale(&ZERO),
                    d.y,
                    o.out,
                )
            },
        },
        algorithms: &[
            ("IMPLICIT_GEMM", true),
            ("IMPLICIT_PRECOMP_GEMM", true),
            ("GEMM", true),
            ("DIRECT", true),
            ("FFT", false),
            ("FFT_TILING", false),
            ("WINOGRAD", false),
            ("WINOGRAD_NONFUSED", false),
        ],
    },
    PassApi {
        name: "backward-data",
        method: "conv_backward_data",
        workspace_call: "cuMemAlloc (cuDNN workspace of conv_backward_data)",
        operands: [
            ("w", Operand::Filter),
            ("dy", Operand::Output),
            ("dx", Operand::Input),
        ],
        max_count: Call {
            name: "cudnnGetConvolutionBackwardDataAlgorithmMaxCount",
            f: ffi::cudnnGetConvolutionBackwardDataAlgorithmMaxCount,
        },
        find: Call {
            name: "cudnnFindConvolutionBackwardDataAlgorithm",
            f: |h, d, n, r, p| unsafe {
                ffi::cudnnFindConvolutionBackwardDataAlgorithm(h, d.w, d.y, d.conv, d.x, n, r, p)
            },
        },
        heuristic: Call {
            name: "cudnnGetConvolutionBackwardDataAlgorithm_v7",
            f: |h, d, n, r, p| unsafe {
                ffi::cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, n, r, p)
            },
        },
        workspace_size: Call {
            name: "cudnnGetConvolutionBackwardDataWorkspaceSize",
            f: |h, d, algo, bytes| unsafe {
                ffi::cudnnGetConvolutionBackwardDataWorkspaceSize(
                    h, d.w, d.y, d.conv, d.x, algo, bytes,
                )
            },
        },
        run: Call {
            name: "cudnnConvolutionBackwardData",
            f: |h, d, algo, ws, o| unsafe {
                ffi::cudnnConvolutionBackwardData(
                    h,
                    scale(&ONE),
                    d.w,
                    o.a,
                    d.y,
                    o.b,
                    d.conv,
                    algo,
                    ws.ptr,
                    ws.bytes,
                    scale(&ZERO),
                    d.x,
                    o.out,
                )
            },
        },
        algorithms: &[
            ("ALGO_0", true),
            ("ALGO_1", true),
            ("FFT", false),
            ("FFT_TILING", false),
            ("WINOGRAD", false),
            ("WINOGRAD_NONFUSED", false),
        ],
    },
    PassApi {
        name: "backward-filter",
        method: "conv_backward_filter",
        workspace_call: "cuMemAlloc (cuDNN workspace of conv_backward_filter)",
        operands: [
            ("x", Operand::Input),
            ("dy", Operand::Output),
            ("dw", Operand::Filter),
        ],
        max_count: Call {
            name: "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount",
            f: ffi::cudnnGetConvolutionBackwardFilterAlgorithmMaxCount,
        },
        find: Call {
            name: "cudnnFindConvolutionBackwardFilterAlgorithm",
            f: |h, d, n, r, p| unsafe {
                ffi::cudnnFindConvolutionBackwardFilterAlgorithm(h, d.x, d.y, d.conv, d.w, n, r, p)
            },
        },
        heuristic: Call {
            name: "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
            f: |h, d, n, r, p| unsafe {
                ffi::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                    h, d.x, d.y, d.conv, d.w, n, r, p,
                )
            },
        },
        workspace_size: Call {
            name: "cudnnGetConvolutionBackwardFilterWorkspaceSize",
            f: |h, d, algo, bytes| unsafe {
                ffi::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                    h, d.x, d.y, d.conv, d.w, algo, bytes,
                )
            },
        },
        run: Call {
            name: "cudnnConvolutionBackwardFilter",
            f: |h, d, algo, ws, o| unsafe {
                ffi::cudnnConvolutionBackwardFilter(
                    h,
                    scale(&ONE),
                    d.x,
                    o.a,
                    d.y,
                    o.b,
                    d.conv,
                    algo,
                    ws.ptr,
                    ws.bytes,
                    scale(&ZERO),
                    d.w,
                    o.out,
                )
            },
        },
        algorithms: &[
            ("ALGO_0", true),
            ("ALGO_1", true),
            ("FFT", false),
            ("ALGO_3", true),
            ("WINOGRAD", false),
            ("WINOGRAD_NONFUSED", false),
            ("FFT_TILING", false),
        ],
    },
];
