//! cuDNN's legacy convolution API, declared here instead of being called through cudarc's
//! `cudnn::sys`. Those bindings were generated from cuDNN 8 and type `cudnnStatus_t` — the
//! return value of every call and a field of the algorithm-perf structs — as a Rust enum with
//! cuDNN 8's values (0 to 14). cuDNN 9 renumbered its errors (`CUDNN_STATUS_BAD_PARAM` is
//! 2000, `CUDNN_STATUS_NOT_SUPPORTED` 3000, ...), and a value outside a Rust enum's variants
//! is undefined behaviour the moment it is received, so every failure would be. Statuses and
//! everything read back from cuDNN (algorithm, determinism, math type) are plain integers here.
//!
//! cudarc still supplies the opaque handle and descriptor types, the argument enums whose
//! values cuDNN 9 kept (data type, tensor format, convolution mode, math type — checked
//! against `cudnn_graph.h`), and the `-lcudnn` link line (its `cudnn` feature). Every
//! signature below is cuDNN 9's (`cudnn_graph.h`, `cudnn_ops.h`, `cudnn_cnn.h`); all of them
//! are exported by `libcudnn.so.9`.

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

    // Cross-library version checks. `libcudnn.so.9` is a shim that loads its sub-libraries
    // (`libcudnn_ops`, `libcudnn_cnn`, ...) on first use; these load them, so a missing or
    // mismatched one is reported when the kernels start instead of at the first convolution.
    pub fn cudnnOpsVersionCheck() -> Status; // cudnn_ops.h
    pub fn cudnnCnnVersionCheck() -> Status; // cudnn_cnn.h

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
