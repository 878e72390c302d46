//! The fast path's kernels on an NVIDIA GPU: cuDNN for the three convolution passes, small
//! NVRTC-compiled kernels (`cuda_kernels.cu`) for everything else.
//!
//! Everything runs on dfdx's own `CudaDevice` — the one behind every dfdx buffer — and on its
//! stream, so this work and dfdx's are ordered without any extra synchronisation and the
//! buffers cross between the two without copies.
//!
//! Reproducibility: only deterministic cuDNN algorithms are accepted and the reductions written
//! here use a fixed order (no atomics), so the same algorithms on the same inputs give the
//! same bits on every run.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Arc;

use cudarc::driver::{
    CudaDevice, CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice,
    LaunchAsync, LaunchConfig, ValidAsZeroBits,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use dfdx::prelude::Storage;
use dfdx::tensor::Cuda;

use super::kernels::{Buf, ConvShape, InputBatch, Kernels, LrnParams, Planes, PoolShape, SgdStep};
use super::{FastDevice, FastError};
use crate::config::{Algorithms, ComputeConfig, Precision};

const MODULE: &str = "alexnet_fast";
const SOURCE: &str = include_str!("cuda_kernels.cu");
/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;
/// Must equal `RELU_BIAS_THREADS` in the CUDA source: the kernel's shared-memory tree is
/// sized by it.
const RELU_BIAS_THREADS: u32 = 512;

/// cuDNN's legacy convolution API, declared here instead of being called through cudarc's
/// `cudnn::sys`. Those bindings were generated from cuDNN 8 and type `cudnnStatus_t` — the
/// return value of every call and a field of the algorithm-perf structs — as a Rust enum with
/// cuDNN 8's values (0 to 14). cuDNN 9 renumbered its errors (`CUDNN_STATUS_BAD_PARAM` is
/// 2000, `CUDNN_STATUS_NOT_SUPPORTED` 3000, ...), and a value outside a Rust enum's variants
/// is undefined behaviour the moment it is received, so every failure would be. Statuses and
/// everything read back from cuDNN (algorithm, determinism, math type) are plain integers here.
///
/// cudarc still supplies the opaque handle and descriptor types, the argument enums whose
/// values cuDNN 9 kept (data type, tensor format, convolution mode, math type — checked
/// against `cudnn_graph.h`), and the `-lcudnn` link line (its `cudnn` feature). Every
/// signature below is cuDNN 9's (`cudnn_graph.h`, `cudnn_ops.h`, `cudnn_cnn.h`); all of them
/// are exported by `libcudnn.so.9`.
mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    pub use cudarc::cudnn::sys::{
        cudaStream_t, cudnnConvolutionDescriptor_t, cudnnConvolutionMode_t, cudnnDataType_t,
        cudnnFilterDescriptor_t, cudnnHandle_t, cudnnMathType_t, cudnnTensorDescriptor_t,
        cudnnTensorFormat_t,
    };

    /// `cudnnStatus_t` (`cudnn_graph.h`).
    pub type Status = u32;
    pub const STATUS_SUCCESS: Status = 0;
    /// `cudnnDeterminism_t::CUDNN_DETERMINISTIC` (`cudnn_ops.h`).
    pub const DETERMINISTIC: u32 = 1;
    /// `cudnnMathType_t` values as read back in perf results (`cudnn_graph.h`).
    pub const MATH_DEFAULT: u32 = 0;
    pub const MATH_TENSOR_OP: u32 = 1;
    pub const MATH_TENSOR_OP_ALLOW_CONVERSION: u32 = 2;
    pub const MATH_FMA: u32 = 3;

    /// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t` (`cudnn_cnn.h`): the three share
    /// this layout — algorithm enum, status, time (ms), workspace bytes, determinism, math
    /// type, `int reserved[3]`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct AlgoPerf {
        pub algo: u32,
        pub status: Status,
        pub time: f32,
        pub memory: usize,
        pub determinism: u32,
        pub math_type: u32,
        pub reserved: [c_int; 3],
    }

    #[allow(non_snake_case)]
    extern "C" {
        // cudnn_graph.h
        pub fn cudnnGetErrorString(status: Status) -> *const c_char;
        pub fn cudnnGetLastErrorString(message: *mut c_char, max_size: usize);
        pub fn cudnnCreate(handle: *mut cudnnHandle_t) -> Status;
        pub fn cudnnDestroy(handle: cudnnHandle_t) -> Status;
        pub fn cudnnSetStream(handle: cudnnHandle_t, stream: cudaStream_t) -> Status;

        // cudnn_ops.h
        pub fn cudnnCreateTensorDescriptor(desc: *mut cudnnTensorDescriptor_t) -> Status;
        pub fn cudnnSetTensor4dDescriptor(
            desc: cudnnTensorDescriptor_t,
            format: cudnnTensorFormat_t,
            data_type: cudnnDataType_t,
            n: c_int,
            c: c_int,
            h: c_int,
            w: c_int,
        ) -> Status;
        pub fn cudnnDestroyTensorDescriptor(desc: cudnnTensorDescriptor_t) -> Status;
        pub fn cudnnCreateFilterDescriptor(desc: *mut cudnnFilterDescriptor_t) -> Status;
        pub fn cudnnSetFilter4dDescriptor(
            desc: cudnnFilterDescriptor_t,
            data_type: cudnnDataType_t,
            format: cudnnTensorFormat_t,
            k: c_int,
            c: c_int,
            h: c_int,
            w: c_int,
        ) -> Status;
        pub fn cudnnDestroyFilterDescriptor(desc: cudnnFilterDescriptor_t) -> Status;

        // cudnn_cnn.h
        pub fn cudnnCreateConvolutionDescriptor(desc: *mut cudnnConvolutionDescriptor_t) -> Status;
        pub fn cudnnDestroyConvolutionDescriptor(desc: cudnnConvolutionDescriptor_t) -> Status;
        pub fn cudnnSetConvolutionMathType(
            desc: cudnnConvolutionDescriptor_t,
            math_type: cudnnMathType_t,
        ) -> Status;
        pub fn cudnnSetConvolution2dDescriptor(
            desc: cudnnConvolutionDescriptor_t,
            pad_h: c_int,
            pad_w: c_int,
            u: c_int,
            v: c_int,
            dilation_h: c_int,
            dilation_w: c_int,
            mode: cudnnConvolutionMode_t,
            compute_type: cudnnDataType_t,
        ) -> Status;
        pub fn cudnnGetConvolution2dForwardOutputDim(
            conv: cudnnConvolutionDescriptor_t,
            input: cudnnTensorDescriptor_t,
            filter: cudnnFilterDescriptor_t,
            n: *mut c_int,
            c: *mut c_int,
            h: *mut c_int,
            w: *mut c_int,
        ) -> Status;

        pub fn cudnnGetConvolutionForwardAlgorithmMaxCount(
            handle: cudnnHandle_t,
            count: *mut c_int,
        ) -> Status;
        pub fn cudnnFindConvolutionForwardAlgorithm(
            handle: cudnnHandle_t,
            x: cudnnTensorDescriptor_t,
            w: cudnnFilterDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            y: cudnnTensorDescriptor_t,
            requested: c_int,
            returned: *mut c_int,
            results: *mut AlgoPerf,
        ) -> Status;
        pub fn cudnnGetConvolutionForwardAlgorithm_v7(
            handle: cudnnHandle_t,
            x: cudnnTensorDescriptor_t,
            w: cudnnFilterDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            y: cudnnTensorDescriptor_t,
            requested: c_int,
            returned: *mut c_int,
            results: *mut AlgoPerf,
        ) -> Status;
        pub fn cudnnGetConvolutionForwardWorkspaceSize(
            handle: cudnnHandle_t,
            x: cudnnTensorDescriptor_t,
            w: cudnnFilterDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            y: cudnnTensorDescriptor_t,
            algo: u32,
            bytes: *mut usize,
        ) -> Status;
        pub fn cudnnConvolutionForward(
            handle: cudnnHandle_t,
            alpha: *const c_void,
            x_desc: cudnnTensorDescriptor_t,
            x: *const c_void,
            w_desc: cudnnFilterDescriptor_t,
            w: *const c_void,
            conv: cudnnConvolutionDescriptor_t,
            algo: u32,
            workspace: *mut c_void,
            workspace_bytes: usize,
            beta: *const c_void,
            y_desc: cudnnTensorDescriptor_t,
            y: *mut c_void,
        ) -> Status;

        pub fn cudnnGetConvolutionBackwardDataAlgorithmMaxCount(
            handle: cudnnHandle_t,
            count: *mut c_int,
        ) -> Status;
        pub fn cudnnFindConvolutionBackwardDataAlgorithm(
            handle: cudnnHandle_t,
            w: cudnnFilterDescriptor_t,
            dy: cudnnTensorDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            dx: cudnnTensorDescriptor_t,
            requested: c_int,
            returned: *mut c_int,
            results: *mut AlgoPerf,
        ) -> Status;
        pub fn cudnnGetConvolutionBackwardDataAlgorithm_v7(
            handle: cudnnHandle_t,
            w: cudnnFilterDescriptor_t,
            dy: cudnnTensorDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            dx: cudnnTensorDescriptor_t,
            requested: c_int,
            returned: *mut c_int,
            results: *mut AlgoPerf,
        ) -> Status;
        pub fn cudnnGetConvolutionBackwardDataWorkspaceSize(
            handle: cudnnHandle_t,
            w: cudnnFilterDescriptor_t,
            dy: cudnnTensorDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            dx: cudnnTensorDescriptor_t,
            algo: u32,
            bytes: *mut usize,
        ) -> Status;
        pub fn cudnnConvolutionBackwardData(
            handle: cudnnHandle_t,
            alpha: *const c_void,
            w_desc: cudnnFilterDescriptor_t,
            w: *const c_void,
            dy_desc: cudnnTensorDescriptor_t,
            dy: *const c_void,
            conv: cudnnConvolutionDescriptor_t,
            algo: u32,
            workspace: *mut c_void,
            workspace_bytes: usize,
            beta: *const c_void,
            dx_desc: cudnnTensorDescriptor_t,
            dx: *mut c_void,
        ) -> Status;

        pub fn cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(
            handle: cudnnHandle_t,
            count: *mut c_int,
        ) -> Status;
        pub fn cudnnFindConvolutionBackwardFilterAlgorithm(
            handle: cudnnHandle_t,
            x: cudnnTensorDescriptor_t,
            dy: cudnnTensorDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            dw: cudnnFilterDescriptor_t,
            requested: c_int,
            returned: *mut c_int,
            results: *mut AlgoPerf,
        ) -> Status;
        pub fn cudnnGetConvolutionBackwardFilterAlgorithm_v7(
            handle: cudnnHandle_t,
            x: cudnnTensorDescriptor_t,
            dy: cudnnTensorDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            dw: cudnnFilterDescriptor_t,
            requested: c_int,
            returned: *mut c_int,
            results: *mut AlgoPerf,
        ) -> Status;
        pub fn cudnnGetConvolutionBackwardFilterWorkspaceSize(
            handle: cudnnHandle_t,
            x: cudnnTensorDescriptor_t,
            dy: cudnnTensorDescriptor_t,
            conv: cudnnConvolutionDescriptor_t,
            dw: cudnnFilterDescriptor_t,
            algo: u32,
            bytes: *mut usize,
        ) -> Status;
        pub fn cudnnConvolutionBackwardFilter(
            handle: cudnnHandle_t,
            alpha: *const c_void,
            x_desc: cudnnTensorDescriptor_t,
            x: *const c_void,
            dy_desc: cudnnTensorDescriptor_t,
            dy: *const c_void,
            conv: cudnnConvolutionDescriptor_t,
            algo: u32,
            workspace: *mut c_void,
            workspace_bytes: usize,
            beta: *const c_void,
            dw_desc: cudnnFilterDescriptor_t,
            dw: *mut c_void,
        ) -> Status;
    }
}

use ffi::{
    cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION, cudnnDataType_t::CUDNN_DATA_FLOAT,
    cudnnMathType_t, cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
};

/// cuDNN's name for `status` and, when it left one, its last error message (which names the
/// failing check, far more useful than the status alone).
fn cudnn_error(status: ffi::Status) -> String {
    // SAFETY: cudnnGetErrorString returns a static string (or null, guarded).
    let name = unsafe {
        let ptr = ffi::cudnnGetErrorString(status);
        if ptr.is_null() {
            String::from("unknown status")
        } else {
            CStr::from_ptr(ptr).to_string_lossy().into_owned()
        }
    };
    let mut detail = [0u8; 512];
    // SAFETY: writes at most `max_size` bytes into the buffer.
    unsafe { ffi::cudnnGetLastErrorString(detail.as_mut_ptr() as *mut c_char, detail.len()) };
    let detail = CStr::from_bytes_until_nul(&detail)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if detail.is_empty() {
        format!("{name} ({status})")
    } else {
        format!("{name} ({status}): {detail}")
    }
}

fn check(status: ffi::Status, call: &str) -> Result<(), String> {
    if status == ffi::STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{call}: {}", cudnn_error(status)))
    }
}

fn c_dim(value: usize) -> Result<c_int, String> {
    c_int::try_from(value).map_err(|_| format!("dimension {value} does not fit cuDNN's int"))
}

/// A cuDNN handle on dfdx's stream.
struct Handle {
    raw: ffi::cudnnHandle_t,
    /// Keeps the context alive (and current for the destroy) until the handle is gone.
    dev: Arc<CudaDevice>,
}

impl Handle {
    fn new(dev: &Arc<CudaDevice>) -> Result<Self, String> {
        dev.bind_to_thread()
            .map_err(|e| format!("binding the CUDA context: {e:?}"))?;
        let mut raw: ffi::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; a context is current.
        check(unsafe { ffi::cudnnCreate(&mut raw) }, "cudnnCreate")?;
        let handle = Self {
            raw,
            dev: dev.clone(),
        };
        // The device's stream (the legacy default stream, as dfdx uses it): cuDNN's work then
        // queues behind dfdx's kernels and in front of the next ones with no events.
        let stream = *dev.cu_stream() as ffi::cudaStream_t;
        // SAFETY: the handle is live and the stream belongs to its context.
        check(
            unsafe { ffi::cudnnSetStream(handle.raw, stream) },
            "cudnnSetStream",
        )?;
        Ok(handle)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Errors here have nowhere to go; the handle is unusable either way.
        let _ = self.dev.bind_to_thread();
        // SAFETY: created by cudnnCreate and destroyed once.
        unsafe { ffi::cudnnDestroy(self.raw) };
    }
}

struct TensorDesc(ffi::cudnnTensorDescriptor_t);

impl TensorDesc {
    /// A dense NCHW f32 tensor.
    fn nchw(n: usize, c: usize, h: usize, w: usize) -> Result<Self, String> {
        let mut raw: ffi::cudnnTensorDescriptor_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check(
            unsafe { ffi::cudnnCreateTensorDescriptor(&mut raw) },
            "cudnnCreateTensorDescriptor",
        )?;
        let desc = Self(raw);
        // SAFETY: `desc` is a live tensor descriptor.
        check(
            unsafe {
                ffi::cudnnSetTensor4dDescriptor(
                    desc.0,
                    CUDNN_TENSOR_NCHW,
                    CUDNN_DATA_FLOAT,
                    c_dim(n)?,
                    c_dim(c)?,
                    c_dim(h)?,
                    c_dim(w)?,
                )
            },
            "cudnnSetTensor4dDescriptor",
        )?;
        Ok(desc)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe { ffi::cudnnDestroyTensorDescriptor(self.0) };
    }
}

struct FilterDesc(ffi::cudnnFilterDescriptor_t);

impl FilterDesc {
    /// OIHW f32 filters.
    fn oihw(o: usize, i: usize, h: usize, w: usize) -> Result<Self, String> {
        let mut raw: ffi::cudnnFilterDescriptor_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check(
            unsafe { ffi::cudnnCreateFilterDescriptor(&mut raw) },
            "cudnnCreateFilterDescriptor",
        )?;
        let desc = Self(raw);
        // SAFETY: `desc` is a live filter descriptor. Note the argument order: data type
        // before format, unlike the tensor call.
        check(
            unsafe {
                ffi::cudnnSetFilter4dDescriptor(
                    desc.0,
                    CUDNN_DATA_FLOAT,
                    CUDNN_TENSOR_NCHW,
                    c_dim(o)?,
                    c_dim(i)?,
                    c_dim(h)?,
                    c_dim(w)?,
                )
            },
            "cudnnSetFilter4dDescriptor",
        )?;
        Ok(desc)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe { ffi::cudnnDestroyFilterDescriptor(self.0) };
    }
}

struct ConvDesc(ffi::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    fn new(shape: &ConvShape, math: cudnnMathType_t) -> Result<Self, String> {
        let mut raw: ffi::cudnnConvolutionDescriptor_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check(
            unsafe { ffi::cudnnCreateConvolutionDescriptor(&mut raw) },
            "cudnnCreateConvolutionDescriptor",
        )?;
        let desc = Self(raw);
        let (pad, stride) = (c_dim(shape.pad)?, c_dim(shape.stride)?);
        // SAFETY: `desc` is a live convolution descriptor.
        check(
            unsafe {
                ffi::cudnnSetConvolution2dDescriptor(
                    desc.0,
                    pad,
                    pad,
                    stride,
                    stride,
                    1,
                    1,
                    CUDNN_CROSS_CORRELATION,
                    CUDNN_DATA_FLOAT,
                )
            },
            "cudnnSetConvolution2dDescriptor",
        )?;
        desc.set_math(math)?;
        Ok(desc)
    }

    fn set_math(&self, math: cudnnMathType_t) -> Result<(), String> {
        // SAFETY: `self` is a live convolution descriptor.
        check(
            unsafe { ffi::cudnnSetConvolutionMathType(self.0, math) },
            "cudnnSetConvolutionMathType",
        )
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe { ffi::cudnnDestroyConvolutionDescriptor(self.0) };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::BackwardData => "backward-data",
            Pass::BackwardFilter => "backward-filter",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Chosen {
    algo: u32,
    workspace: usize,
}

/// One pass of one shape. Each pass has its own convolution descriptor because in Tf32 mode
/// the descriptor's math type is set to that of the algorithm chosen for the pass, and the
/// three passes may choose differently.
struct Direction {
    conv: ConvDesc,
    chosen: Option<Chosen>,
}

/// Descriptors and chosen algorithms of one convolution shape.
struct ConvPlan {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    forward: Direction,
    backward_data: Direction,
    backward_filter: Direction,
}

impl ConvPlan {
    fn new(shape: &ConvShape, math: cudnnMathType_t) -> Result<Self, String> {
        let out = shape.out_size();
        let x = TensorDesc::nchw(shape.batch, shape.in_channels, shape.size, shape.size)?;
        let w = FilterDesc::oihw(
            shape.out_channels,
            shape.in_channels,
            shape.kernel,
            shape.kernel,
        )?;
        let y = TensorDesc::nchw(shape.batch, shape.out_channels, out, out)?;
        let direction = || {
            Ok::<_, String>(Direction {
                conv: ConvDesc::new(shape, math)?,
                chosen: None,
            })
        };
        let plan = Self {
            x,
            w,
            y,
            forward: direction()?,
            backward_data: direction()?,
            backward_filter: direction()?,
        };
        // The output descriptor is built from `ConvShape::out_size`; a disagreement with
        // cuDNN's arithmetic would otherwise surface only as a bad-parameter error later.
        let mut dims: [c_int; 4] = [0; 4];
        // SAFETY: live descriptors, four valid out-pointers.
        check(
            unsafe {
                let [n, c, h, w] = &mut dims;
                ffi::cudnnGetConvolution2dForwardOutputDim(
                    plan.forward.conv.0,
                    plan.x.0,
                    plan.w.0,
                    n,
                    c,
                    h,
                    w,
                )
            },
            "cudnnGetConvolution2dForwardOutputDim",
        )?;
        let expected = [
            c_dim(shape.batch)?,
            c_dim(shape.out_channels)?,
            c_dim(out)?,
            c_dim(out)?,
        ];
        if dims != expected {
            return Err(format!(
                "cuDNN computes output {dims:?}, the shape says {expected:?}"
            ));
        }
        Ok(plan)
    }

    fn direction(&mut self, pass: Pass) -> &mut Direction {
        match pass {
            Pass::Forward => &mut self.forward,
            Pass::BackwardData => &mut self.backward_data,
            Pass::BackwardFilter => &mut self.backward_filter,
        }
    }
}

/// The raw pieces a convolution call needs, copied out of the plan so that the workspace can
/// be borrowed at the same time.
struct Prepared {
    x: ffi::cudnnTensorDescriptor_t,
    w: ffi::cudnnFilterDescriptor_t,
    y: ffi::cudnnTensorDescriptor_t,
    conv: ffi::cudnnConvolutionDescriptor_t,
    algo: u32,
    workspace: usize,
}

fn math_type(value: u32) -> Option<cudnnMathType_t> {
    match value {
        ffi::MATH_DEFAULT => Some(cudnnMathType_t::CUDNN_DEFAULT_MATH),
        ffi::MATH_TENSOR_OP => Some(cudnnMathType_t::CUDNN_TENSOR_OP_MATH),
        ffi::MATH_TENSOR_OP_ALLOW_CONVERSION => {
            Some(cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
        }
        ffi::MATH_FMA => Some(cudnnMathType_t::CUDNN_FMA_MATH),
        _ => None,
    }
}

/// The first usable result, in cuDNN's order (fastest first when measured, best first by its
/// heuristics otherwise). It must have succeeded and be deterministic, so that a resumed run
/// reproduces an uninterrupted one. Tensor-core math that converts fp32 down to fp16/bf16 is
/// never wanted (cuDNN should not offer it for fp32 without being asked; this makes sure);
/// Strict also refuses plain tensor-op math (TF32), which its FMA math type already asks for.
fn accept(results: &[ffi::AlgoPerf], precision: Precision) -> Option<ffi::AlgoPerf> {
    results.iter().copied().find(|r| {
        let math_ok = match r.math_type {
            ffi::MATH_TENSOR_OP_ALLOW_CONVERSION => false,
            ffi::MATH_TENSOR_OP => precision == Precision::Tf32,
            _ => true,
        };
        r.status == ffi::STATUS_SUCCESS && r.determinism == ffi::DETERMINISTIC && math_ok
    })
}

/// Picks the algorithm of one pass, by measurement like PyTorch's benchmark mode, falling back
/// to cuDNN's heuristics when measuring fails, and sets the descriptor up to run it.
///
/// The choice is made once per process. Measured, timing noise can rank two close algorithms
/// the other way in another process, and a different algorithm rounds differently, so a
/// resumed run is bit-identical to an uninterrupted one only with the heuristics (the
/// default, `compute.algorithms = "heuristic"`), whose choice depends on the shape alone.
///
/// # Safety
/// The handle and descriptors must be live and describe `pass` of one convolution.
unsafe fn choose(
    handle: ffi::cudnnHandle_t,
    plan: &Prepared,
    conv: &ConvDesc,
    pass: Pass,
    precision: Precision,
    measure: bool,
) -> Result<Chosen, String> {
    let (x, w, y, c) = (plan.x, plan.w, plan.y, conv.0);
    let mut count: c_int = 0;
    check(
        match pass {
            Pass::Forward => ffi::cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &mut count),
            Pass::BackwardData => {
                ffi::cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &mut count)
            }
            Pass::BackwardFilter => {
                ffi::cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(handle, &mut count)
            }
        },
        "cudnnGetConvolution*AlgorithmMaxCount",
    )?;
    let count = count.max(1);
    let mut results = vec![ffi::AlgoPerf::default(); count as usize];
    let mut returned: c_int = 0;
    // Measures every algorithm on buffers it allocates itself (host-blocking, once per shape).
    let measured = if !measure {
        ffi::STATUS_SUCCESS
    } else {
        match pass {
            Pass::Forward => ffi::cudnnFindConvolutionForwardAlgorithm(
                handle,
                x,
                w,
                c,
                y,
                count,
                &mut returned,
                results.as_mut_ptr(),
            ),
            Pass::BackwardData => ffi::cudnnFindConvolutionBackwardDataAlgorithm(
                handle,
                w,
                y,
                c,
                x,
                count,
                &mut returned,
                results.as_mut_ptr(),
            ),
            Pass::BackwardFilter => ffi::cudnnFindConvolutionBackwardFilterAlgorithm(
                handle,
                x,
                y,
                c,
                w,
                count,
                &mut returned,
                results.as_mut_ptr(),
            ),
        }
    };
    let capacity = results.len();
    let returned_len = |n: c_int| (n.max(0) as usize).min(capacity);
    let mut pick = None;
    if measure && measured == ffi::STATUS_SUCCESS {
        pick = accept(&results[..returned_len(returned)], precision);
    }
    let mut why = if !measure {
        String::from("measuring is off (compute.algorithms = \"heuristic\")")
    } else if measured == ffi::STATUS_SUCCESS {
        String::from("no measured algorithm was deterministic and successful")
    } else {
        format!("measuring failed: {}", cudnn_error(measured))
    };
    if pick.is_none() {
        results.fill(ffi::AlgoPerf::default());
        returned = 0;
        let heuristic = match pass {
            Pass::Forward => ffi::cudnnGetConvolutionForwardAlgorithm_v7(
                handle,
                x,
                w,
                c,
                y,
                count,
                &mut returned,
                results.as_mut_ptr(),
            ),
            Pass::BackwardData => ffi::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                handle,
                w,
                y,
                c,
                x,
                count,
                &mut returned,
                results.as_mut_ptr(),
            ),
            Pass::BackwardFilter => ffi::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                handle,
                x,
                y,
                c,
                w,
                count,
                &mut returned,
                results.as_mut_ptr(),
            ),
        };
        if heuristic == ffi::STATUS_SUCCESS {
            pick = accept(&results[..returned_len(returned)], precision);
            if pick.is_none() {
                why.push_str("; no heuristic candidate was either");
            }
        } else {
            why.push_str(&format!("; heuristics failed: {}", cudnn_error(heuristic)));
        }
    }
    let Some(pick) = pick else {
        return Err(format!("no usable {} algorithm ({why})", pass.name()));
    };
    // Run exactly what was measured: with the default math type cuDNN may have timed a
    // tensor-core (TF32) variant, which the descriptor must then ask for (as PyTorch does).
    // Strict keeps FMA math whatever was reported.
    if precision == Precision::Tf32 {
        if let Some(math) = math_type(pick.math_type) {
            conv.set_math(math)?;
        }
    }
    let mut bytes = 0usize;
    check(
        match pass {
            Pass::Forward => ffi::cudnnGetConvolutionForwardWorkspaceSize(
                handle, x, w, c, y, pick.algo, &mut bytes,
            ),
            Pass::BackwardData => ffi::cudnnGetConvolutionBackwardDataWorkspaceSize(
                handle, w, y, c, x, pick.algo, &mut bytes,
            ),
            Pass::BackwardFilter => ffi::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                handle, x, y, c, w, pick.algo, &mut bytes,
            ),
        },
        "cudnnGetConvolution*WorkspaceSize",
    )?;
    Ok(Chosen {
        algo: pick.algo,
        workspace: bytes.max(pick.memory),
    })
}

/// The NVRTC kernels, looked up once.
struct Functions {
    normalize: CudaFunction,
    bias_relu: CudaFunction,
    relu_bias_backward: CudaFunction,
    lrn_forward: CudaFunction,
    lrn_backward: CudaFunction,
    pool_forward: CudaFunction,
    pool_backward: CudaFunction,
    to_channels_last: CudaFunction,
    from_channels_last: CudaFunction,
    sgd: CudaFunction,
}

const FUNCTION_NAMES: [&str; 10] = [
    "normalize",
    "bias_relu",
    "relu_bias_backward",
    "lrn_forward",
    "lrn_backward",
    "pool_forward",
    "pool_backward",
    "to_channels_last",
    "from_channels_last",
    "sgd",
];

impl Functions {
    fn load(dev: &Arc<CudaDevice>) -> Result<Self, String> {
        // No contraction into fused multiply-adds: the elementwise kernels then round exactly
        // like the host reference's separate multiplies and adds.
        let options = CompileOptions {
            fmad: Some(false),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(SOURCE, options)
            .map_err(|e| format!("compiling the fast-path kernels with NVRTC: {e}"))?;
        dev.load_ptx(ptx, MODULE, &FUNCTION_NAMES)
            .map_err(|e| format!("loading the fast-path kernels: {e:?}"))?;
        let get = |name: &str| {
            dev.get_func(MODULE, name)
                .ok_or_else(|| format!("kernel {name} missing after loading"))
        };
        Ok(Self {
            normalize: get("normalize")?,
            bias_relu: get("bias_relu")?,
            relu_bias_backward: get("relu_bias_backward")?,
            lrn_forward: get("lrn_forward")?,
            lrn_backward: get("lrn_backward")?,
            pool_forward: get("pool_forward")?,
            pool_backward: get("pool_backward")?,
            to_channels_last: get("to_channels_last")?,
            from_channels_last: get("from_channels_last")?,
            sgd: get("sgd")?,
        })
    }
}

/// The mean-row table `normalize` reads, resident for the run.
struct MeanTable {
    data: CudaSlice<f32>,
    row_len: usize,
    rows: usize,
}

/// The fast path's kernels on dfdx's CUDA device.
pub struct CudaKernels {
    // Field order is drop order: cuDNN objects go before the device they were made on.
    convs: HashMap<ConvShape, ConvPlan>,
    cudnn: Handle,
    precision: Precision,
    /// Choose convolution algorithms by timing them (else by cuDNN's heuristics).
    measure: bool,
    functions: Functions,
    /// Shared by every convolution (they run one at a time on one stream), grown on demand.
    workspace: Option<CudaSlice<u8>>,
    mean_table: Option<MeanTable>,
    /// Per-batch inputs of `normalize`, kept and reused while they are large enough.
    pixels: Option<CudaSlice<u8>>,
    mean_rows: Option<CudaSlice<u32>>,
    lighting: Option<CudaSlice<f32>>,
    /// dfdx's device, for buffers of dfdx's own type (`alloc`, `upload`).
    dfdx: Cuda,
    /// The driver device behind dfdx's buffers: same context, same stream.
    dev: Arc<CudaDevice>,
}

// SAFETY: the only members that are not `Send` are the cuDNN handle and descriptors (raw
// pointers). cuDNN allows a handle to move between host threads as long as it is not used
// by two at once, which `&mut self` on every method guarantees; every cuDNN call binds the
// device's context to the calling thread first.
unsafe impl Send for CudaKernels {}

impl CudaKernels {
    pub fn new(dev: &Cuda, compute: &ComputeConfig) -> Result<Self, FastError> {
        Self::build(dev, compute).map_err(FastError::Cuda)
    }

    fn build(dfdx: &Cuda, compute: &ComputeConfig) -> Result<Self, String> {
        let precision = compute.precision;
        let measure = compute.algorithms == Algorithms::Measure;
        // dfdx keeps its `CudaDevice` private, but every buffer it hands out carries it.
        let probe: Buf<Cuda> = dfdx
            .try_alloc_len(1)
            .map_err(|e| format!("allocating on the GPU: {e:?}"))?;
        let dev = probe.device();
        drop(probe);
        let cudnn = Handle::new(&dev)?;
        let functions = Functions::load(&dev)?;
        Ok(Self {
            convs: HashMap::new(),
            cudnn,
            precision,
            measure,
            functions,
            workspace: None,
            mean_table: None,
            pixels: None,
            mean_rows: None,
            lighting: None,
            dfdx: dfdx.clone(),
            dev,
        })
    }

    fn base_math(&self) -> cudnnMathType_t {
        match self.precision {
            // FMA math rules out tensor-core (TF32) kernels for fp32: full-precision products.
            Precision::Strict => cudnnMathType_t::CUDNN_FMA_MATH,
            // Default math lets cuDNN use TF32 tensor cores for fp32 on Ampere and later.
            Precision::Tf32 => cudnnMathType_t::CUDNN_DEFAULT_MATH,
        }
    }

    fn bind(&self, what: &str) {
        self.dev
            .bind_to_thread()
            .unwrap_or_else(|e| panic!("{what}: binding the CUDA context: {e:?}"));
    }

    /// The plan of `shape` with `pass`'s algorithm chosen and the workspace large enough for it.
    fn prepare(&mut self, shape: &ConvShape, pass: Pass) -> Result<Prepared, String> {
        if !self.convs.contains_key(shape) {
            let plan = ConvPlan::new(shape, self.base_math())?;
            self.convs.insert(*shape, plan);
        }
        let handle = self.cudnn.raw;
        let (precision, measure) = (self.precision, self.measure);
        let plan = self.convs.get_mut(shape).expect("inserted above");
        let (x, w, y) = (plan.x.0, plan.w.0, plan.y.0);
        let direction = plan.direction(pass);
        let mut prepared = Prepared {
            x,
            w,
            y,
            conv: direction.conv.0,
            algo: 0,
            workspace: 0,
        };
        let chosen = match direction.chosen {
            Some(chosen) => chosen,
            None => {
                // SAFETY: the handle and the plan's descriptors are live and describe `shape`.
                let chosen = unsafe {
                    choose(handle, &prepared, &direction.conv, pass, precision, measure)
                }?;
                direction.chosen = Some(chosen);
                chosen
            }
        };
        prepared.algo = chosen.algo;
        prepared.workspace = chosen.workspace;
        let have = self.workspace.as_ref().map_or(0, |w| w.len());
        if chosen.workspace > have {
            // Dropping the old one frees it in stream order, after the work that used it.
            self.workspace = None;
            let grown = self.dev.alloc_zeros::<u8>(chosen.workspace).map_err(|e| {
                format!("allocating {} bytes of workspace: {e:?}", chosen.workspace)
            })?;
            self.workspace = Some(grown);
        }
        Ok(prepared)
    }

    /// The workspace pointer and size to pass cuDNN: null and 0 when the algorithm needs none.
    fn workspace(&mut self, needed: usize) -> (*mut c_void, usize) {
        match self.workspace.as_mut() {
            Some(ws) if needed > 0 => (*ws.device_ptr_mut() as *mut c_void, ws.len()),
            _ => (std::ptr::null_mut(), 0),
        }
    }

    fn conv_pass(&mut self, shape: &ConvShape, pass: Pass) -> (Prepared, *mut c_void, usize) {
        let what = format!("cuDNN convolution {} for {shape:?}", pass.name());
        self.bind(&what);
        let prepared = self
            .prepare(shape, pass)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (ws, ws_len) = self.workspace(prepared.workspace);
        (prepared, ws, ws_len)
    }
}

fn device_ptr(buf: &Buf<Cuda>) -> *const c_void {
    *buf.device_ptr() as *const c_void
}

fn device_ptr_mut(buf: &mut Buf<Cuda>) -> *mut c_void {
    *buf.device_ptr_mut() as *mut c_void
}

fn assert_len(buf: &Buf<Cuda>, len: usize, what: &str) {
    // The kernels index by shape; a short buffer would be written out of bounds on the GPU.
    assert!(
        buf.len() >= len,
        "{what}: buffer of {} values, shape needs {len}",
        buf.len()
    );
}

fn count(n: usize, what: &str) -> u32 {
    u32::try_from(n)
        .unwrap_or_else(|_| panic!("{what}: {n} values exceed the kernels' 32-bit indexing"))
}

/// One thread per item, `THREADS` per block.
fn grid(n: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launched(result: Result<(), cudarc::driver::DriverError>, what: &str) {
    if let Err(e) = result {
        panic!("launching {what}: {e:?}");
    }
}

/// Copies `host` into the front of `slot`, reallocating only when it is too small.
fn upload_into<T: DeviceRepr + ValidAsZeroBits>(
    dev: &Arc<CudaDevice>,
    slot: &mut Option<CudaSlice<T>>,
    host: &[T],
    what: &str,
) {
    if slot.as_ref().is_none_or(|b| b.len() < host.len()) {
        *slot = None;
        let buf = dev
            .alloc_zeros::<T>(host.len().max(1))
            .unwrap_or_else(|e| panic!("allocating {what} ({} values): {e:?}", host.len()));
        *slot = Some(buf);
    }
    let buf = slot.as_mut().expect("allocated above");
    if !host.is_empty() {
        dev.htod_sync_copy_into(host, &mut buf.slice_mut(0..host.len()))
            .unwrap_or_else(|e| panic!("uploading {what}: {e:?}"));
    }
}

/// Launches one of the two layout kernels, `(B, C, P)` ↔ `(B, P·C)`, which share their
/// parameters: source, destination, batch, channels, pixels.
fn permute(
    function: CudaFunction,
    name: &str,
    planes: &Planes,
    src: &Buf<Cuda>,
    dst: &mut Buf<Cuda>,
) {
    assert_len(src, planes.len(), name);
    assert_len(dst, planes.len(), name);
    let n = count(planes.len(), name);
    if n == 0 {
        return;
    }
    let params = (
        src,
        &mut *dst,
        planes.batch as u32,
        planes.channels as u32,
        planes.pixels as u32,
    );
    // SAFETY: both kernels take exactly these parameters; lengths checked above.
    let result = unsafe { function.launch(grid(n), params) };
    launched(result, name);
}

impl Kernels<Cuda> for CudaKernels {
    fn alloc(&mut self, len: usize) -> Buf<Cuda> {
        self.dfdx
            .try_alloc_len(len)
            .unwrap_or_else(|e| panic!("allocating {len} values on the GPU: {e:?}"))
    }

    fn upload(&mut self, host: &[f32]) -> Buf<Cuda> {
        let mut buf = self.alloc(host.len());
        if host.is_empty() {
            return buf;
        }
        self.dev
            .htod_sync_copy_into(host, &mut buf)
            .unwrap_or_else(|e| panic!("uploading {} values: {e:?}", host.len()));
        buf
    }

    fn download(&mut self, buf: &Buf<Cuda>) -> Vec<f32> {
        if buf.len() == 0 {
            return Vec::new();
        }
        self.dev
            .dtoh_sync_copy(buf)
            .unwrap_or_else(|e| panic!("downloading {} values: {e:?}", buf.len()))
    }

    fn synchronize(&mut self) {
        self.dev
            .synchronize()
            .unwrap_or_else(|e| panic!("synchronizing the GPU: {e:?}"));
    }

    fn set_mean_table(&mut self, table: &[f32], row_len: usize) {
        assert!(
            row_len > 0 && table.len().is_multiple_of(row_len),
            "mean table of {} values is not made of rows of {row_len}",
            table.len()
        );
        count(table.len(), "mean table");
        self.mean_table = None;
        let data = self
            .dev
            .htod_sync_copy(table)
            .unwrap_or_else(|e| panic!("uploading the mean table ({} values): {e:?}", table.len()));
        self.mean_table = Some(MeanTable {
            data,
            row_len,
            rows: table.len() / row_len,
        });
    }

    fn normalize(&mut self, input: &InputBatch, x: &mut Buf<Cuda>) {
        let (batch, crop) = (input.batch, input.crop);
        let table = self
            .mean_table
            .as_ref()
            .expect("normalize needs set_mean_table first");
        let n = batch * 3 * crop * crop;
        assert_eq!(
            input.pixels.len(),
            n,
            "normalize: pixels of {batch} crops of {crop}"
        );
        assert_eq!(input.mean_rows.len(), batch * crop, "normalize: mean rows");
        assert_eq!(input.lighting.len(), batch * 3, "normalize: lighting");
        assert!(
            crop * 3 <= table.row_len,
            "normalize: crop {crop} wider than the mean rows"
        );
        // A row past the table would be read out of bounds on the GPU: check on the host.
        if let Some(&bad) = input.mean_rows.iter().find(|&&r| r as usize >= table.rows) {
            panic!(
                "normalize: mean row {bad} outside the table's {} rows",
                table.rows
            );
        }
        assert_len(x, n, "normalize");
        let n = count(n, "normalize");
        if n == 0 {
            return;
        }
        upload_into(&self.dev, &mut self.pixels, input.pixels, "crop pixels");
        upload_into(&self.dev, &mut self.mean_rows, input.mean_rows, "mean rows");
        upload_into(&self.dev, &mut self.lighting, input.lighting, "lighting");
        let params = (
            &mut *x,
            self.pixels.as_ref().expect("uploaded"),
            &table.data,
            self.mean_rows.as_ref().expect("uploaded"),
            self.lighting.as_ref().expect("uploaded"),
            input.scale[0],
            input.scale[1],
            input.scale[2],
            batch as u32,
            crop as u32,
            count(table.row_len, "mean row length"),
        );
        // SAFETY: the parameters match `normalize` in the CUDA source; lengths checked above.
        let result = unsafe { self.functions.normalize.clone().launch(grid(n), params) };
        launched(result, "normalize");
    }

    fn conv_forward(&mut self, shape: &ConvShape, x: &Buf<Cuda>, w: &Buf<Cuda>, y: &mut Buf<Cuda>) {
        assert_len(x, shape.input_len(), "conv forward input");
        assert_len(w, shape.filter_len(), "conv forward filters");
        assert_len(y, shape.output_len(), "conv forward output");
        let (p, ws, ws_len) = self.conv_pass(shape, Pass::Forward);
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: descriptors describe `shape`, buffers are at least that large, alpha and
        // beta are host f32s (the scaling type of f32 convolutions).
        let status = unsafe {
            ffi::cudnnConvolutionForward(
                self.cudnn.raw,
                &alpha as *const f32 as *const c_void,
                p.x,
                device_ptr(x),
                p.w,
                device_ptr(w),
                p.conv,
                p.algo,
                ws,
                ws_len,
                &beta as *const f32 as *const c_void,
                p.y,
                device_ptr_mut(y),
            )
        };
        check(status, "cudnnConvolutionForward")
            .unwrap_or_else(|e| panic!("convolution forward for {shape:?}: {e}"));
    }

    fn conv_backward_data(
        &mut self,
        shape: &ConvShape,
        dy: &Buf<Cuda>,
        w: &Buf<Cuda>,
        dx: &mut Buf<Cuda>,
    ) {
        assert_len(dy, shape.output_len(), "conv backward-data output gradient");
        assert_len(w, shape.filter_len(), "conv backward-data filters");
        assert_len(dx, shape.input_len(), "conv backward-data input gradient");
        let (p, ws, ws_len) = self.conv_pass(shape, Pass::BackwardData);
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: as in conv_forward; dy has the output's descriptor, dx the input's.
        let status = unsafe {
            ffi::cudnnConvolutionBackwardData(
                self.cudnn.raw,
                &alpha as *const f32 as *const c_void,
                p.w,
                device_ptr(w),
                p.y,
                device_ptr(dy),
                p.conv,
                p.algo,
                ws,
                ws_len,
                &beta as *const f32 as *const c_void,
                p.x,
                device_ptr_mut(dx),
            )
        };
        check(status, "cudnnConvolutionBackwardData")
            .unwrap_or_else(|e| panic!("convolution backward-data for {shape:?}: {e}"));
    }

    fn conv_backward_filter(
        &mut self,
        shape: &ConvShape,
        x: &Buf<Cuda>,
        dy: &Buf<Cuda>,
        dw: &mut Buf<Cuda>,
    ) {
        assert_len(x, shape.input_len(), "conv backward-filter input");
        assert_len(
            dy,
            shape.output_len(),
            "conv backward-filter output gradient",
        );
        assert_len(
            dw,
            shape.filter_len(),
            "conv backward-filter filter gradient",
        );
        let (p, ws, ws_len) = self.conv_pass(shape, Pass::BackwardFilter);
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: as in conv_forward; dw has the filter descriptor.
        let status = unsafe {
            ffi::cudnnConvolutionBackwardFilter(
                self.cudnn.raw,
                &alpha as *const f32 as *const c_void,
                p.x,
                device_ptr(x),
                p.y,
                device_ptr(dy),
                p.conv,
                p.algo,
                ws,
                ws_len,
                &beta as *const f32 as *const c_void,
                p.w,
                device_ptr_mut(dw),
            )
        };
        check(status, "cudnnConvolutionBackwardFilter")
            .unwrap_or_else(|e| panic!("convolution backward-filter for {shape:?}: {e}"));
    }

    fn bias_relu(&mut self, planes: &Planes, y: &mut Buf<Cuda>, bias: &Buf<Cuda>) {
        assert_len(y, planes.len(), "bias + ReLU");
        assert_len(bias, planes.channels, "bias + ReLU bias");
        let n = count(planes.len(), "bias + ReLU");
        if n == 0 {
            return;
        }
        let params = (
            &mut *y,
            bias,
            n,
            planes.channels as u32,
            planes.pixels as u32,
        );
        // SAFETY: matches `bias_relu`; lengths checked.
        let result = unsafe { self.functions.bias_relu.clone().launch(grid(n), params) };
        launched(result, "bias_relu");
    }

    fn relu_bias_backward(
        &mut self,
        planes: &Planes,
        y: &Buf<Cuda>,
        dy: &mut Buf<Cuda>,
        db: &mut Buf<Cuda>,
    ) {
        assert_len(y, planes.len(), "ReLU + bias backward");
        assert_len(dy, planes.len(), "ReLU + bias backward gradient");
        assert_len(db, planes.channels, "ReLU + bias backward bias gradient");
        count(planes.len(), "ReLU + bias backward");
        if planes.channels == 0 {
            return;
        }
        // One block per channel (its own fixed reduction tree): deterministic without atomics.
        let cfg = LaunchConfig {
            grid_dim: (
                count(planes.channels, "ReLU + bias backward channels"),
                1,
                1,
            ),
            block_dim: (RELU_BIAS_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let params = (
            &mut *dy,
            y,
            &mut *db,
            planes.batch as u32,
            planes.channels as u32,
            planes.pixels as u32,
        );
        // SAFETY: matches `relu_bias_backward`, launched with RELU_BIAS_THREADS threads.
        let result = unsafe {
            self.functions
                .relu_bias_backward
                .clone()
                .launch(cfg, params)
        };
        launched(result, "relu_bias_backward");
    }

    fn lrn_forward(
        &mut self,
        planes: &Planes,
        lrn: &LrnParams,
        x: &Buf<Cuda>,
        y: &mut Buf<Cuda>,
        d: &mut Buf<Cuda>,
    ) {
        assert_len(x, planes.len(), "LRN forward input");
        assert_len(y, planes.len(), "LRN forward output");
        assert_len(d, planes.len(), "LRN forward denominators");
        count(planes.len(), "LRN forward");
        let n = count(planes.batch * planes.pixels, "LRN forward");
        if n == 0 {
            return;
        }
        let params = (
            x,
            &mut *y,
            &mut *d,
            planes.batch as u32,
            planes.channels as u32,
            planes.pixels as u32,
            (lrn.size / 2) as i32,
            lrn.k,
            lrn.alpha,
            lrn.beta,
        );
        // SAFETY: matches `lrn_forward`; lengths checked.
        let result = unsafe { self.functions.lrn_forward.clone().launch(grid(n), params) };
        launched(result, "lrn_forward");
    }

    fn lrn_backward(
        &mut self,
        planes: &Planes,
        lrn: &LrnParams,
        x: &Buf<Cuda>,
        d: &Buf<Cuda>,
        dy: &Buf<Cuda>,
        dx: &mut Buf<Cuda>,
    ) {
        assert_len(x, planes.len(), "LRN backward input");
        assert_len(d, planes.len(), "LRN backward denominators");
        assert_len(dy, planes.len(), "LRN backward output gradient");
        assert_len(dx, planes.len(), "LRN backward input gradient");
        count(planes.len(), "LRN backward");
        let n = count(planes.batch * planes.pixels, "LRN backward");
        if n == 0 {
            return;
        }
        let params = (
            x,
            d,
            dy,
            &mut *dx,
            planes.batch as u32,
            planes.channels as u32,
            planes.pixels as u32,
            (lrn.size / 2) as i32,
            lrn.alpha,
            lrn.beta,
        );
        // SAFETY: matches `lrn_backward`; lengths checked.
        let result = unsafe { self.functions.lrn_backward.clone().launch(grid(n), params) };
        launched(result, "lrn_backward");
    }

    fn pool_forward(&mut self, shape: &PoolShape, x: &Buf<Cuda>, y: &mut Buf<Cuda>) {
        assert_len(x, shape.input_len(), "pool forward input");
        assert_len(y, shape.output_len(), "pool forward output");
        count(shape.input_len(), "pool forward");
        let n = count(shape.output_len(), "pool forward");
        if n == 0 {
            return;
        }
        let params = (
            x,
            &mut *y,
            (shape.batch * shape.channels) as u32,
            shape.size as u32,
            shape.kernel as u32,
            shape.stride as u32,
            shape.out_size() as u32,
        );
        // SAFETY: matches `pool_forward`; lengths checked.
        let result = unsafe { self.functions.pool_forward.clone().launch(grid(n), params) };
        launched(result, "pool_forward");
    }

    /// Re-derives each window's choice from `x` with the forward's own rule rather than
    /// matching values against `y`, so the routing is the forward's by construction; `y` is
    /// not needed.
    fn pool_backward(
        &mut self,
        shape: &PoolShape,
        x: &Buf<Cuda>,
        _y: &Buf<Cuda>,
        dy: &Buf<Cuda>,
        dx: &mut Buf<Cuda>,
    ) {
        assert_len(x, shape.input_len(), "pool backward input");
        assert_len(dy, shape.output_len(), "pool backward output gradient");
        assert_len(dx, shape.input_len(), "pool backward input gradient");
        let n = count(shape.input_len(), "pool backward");
        if n == 0 {
            return;
        }
        let params = (
            x,
            dy,
            &mut *dx,
            (shape.batch * shape.channels) as u32,
            shape.size as u32,
            shape.kernel as u32,
            shape.stride as u32,
            shape.out_size() as u32,
        );
        // SAFETY: matches `pool_backward`; lengths checked.
        let result = unsafe { self.functions.pool_backward.clone().launch(grid(n), params) };
        launched(result, "pool_backward");
    }

    fn flatten_channels_last(&mut self, planes: &Planes, x: &Buf<Cuda>, y: &mut Buf<Cuda>) {
        let function = self.functions.to_channels_last.clone();
        permute(function, "to_channels_last", planes, x, y);
    }

    fn unflatten_channels_last(&mut self, planes: &Planes, y: &Buf<Cuda>, x: &mut Buf<Cuda>) {
        let function = self.functions.from_channels_last.clone();
        permute(function, "from_channels_last", planes, y, x);
    }

    fn sgd(&mut self, step: &SgdStep, w: &mut Buf<Cuda>, v: &mut Buf<Cuda>, g: &Buf<Cuda>) {
        let len = w.len();
        assert!(
            v.len() == len && g.len() == len,
            "sgd: weights {len}, momentum {}, gradient {}",
            v.len(),
            g.len()
        );
        let n = count(len, "sgd");
        if n == 0 {
            return;
        }
        let params = (
            &mut *w,
            &mut *v,
            g,
            n,
            step.learning_rate,
            step.momentum,
            step.weight_decay,
        );
        // SAFETY: matches `sgd`; lengths checked.
        let result = unsafe { self.functions.sgd.clone().launch(grid(n), params) };
        launched(result, "sgd");
    }
}

impl FastDevice for Cuda {
    const GPU: bool = true;
    type Kernels = CudaKernels;

    fn fast_kernels(&self, compute: &ComputeConfig) -> Result<CudaKernels, FastError> {
        CudaKernels::new(self, compute)
    }
}
