//! Owners of cuDNN objects: the handle (bound to dfdx's stream) and the tensor, filter and
//! convolution descriptors. Each is destroyed exactly once when dropped; every creating or
//! setting call is checked and a failure names it (see `check`).

use std::ffi::c_int;
use std::sync::Arc;

use cudarc::driver::{sys::CUstream, CudaDevice};

use super::buffers::Form;
use super::check;
use super::ffi::{
    self, cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION, cudnnDataType_t,
    cudnnDataType_t::CUDNN_DATA_FLOAT, cudnnMathType_t, cudnnTensorFormat_t,
};
use crate::kernels::{ConvShape, KernelResult, Layout};

/// cuDNN's name for a form's layout: of activations, and of filters (NHWC filters are OHWI).
fn format(form: Form) -> cudnnTensorFormat_t {
    match form.layout {
        Layout::Nchw => cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        Layout::Nhwc => cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
    }
}

/// cuDNN's name for a form's element type (filters and activations alike: a bf16
/// convolution reads bf16 filters).
fn data_type(form: Form) -> cudnnDataType_t {
    if form.bf16 {
        cudnnDataType_t::CUDNN_DATA_BFLOAT16
    } else {
        CUDNN_DATA_FLOAT
    }
}

/// A cuDNN handle on dfdx's stream.
pub(super) struct Handle {
    pub(super) raw: ffi::cudnnHandle_t,
    /// Keeps the context alive (and current for the destroy) until the handle is gone.
    dev: Arc<CudaDevice>,
}

impl Handle {
    pub(super) fn new(dev: &Arc<CudaDevice>) -> KernelResult<Self> {
        dev.bind_to_thread()
            .map_err(|e| check::driver("cuCtxSetCurrent", e))?;
        let mut raw: ffi::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; a context is current.
        check::cudnn("cudnnCreate", unsafe { ffi::cudnnCreate(&mut raw) })?;
        let handle = Self {
            raw,
            dev: dev.clone(),
        };
        // The device's stream (the legacy default stream, as dfdx uses it): cuDNN's work then
        // queues behind dfdx's kernels and in front of the next ones with no events.
        handle.set_stream(*dev.cu_stream())?;
        Ok(handle)
    }

    /// Queues cuDNN's work on `stream` (of the handle's context) from now on.
    pub(super) fn set_stream(&self, stream: CUstream) -> KernelResult {
        // SAFETY: the handle is live and the stream belongs to its context.
        check::cudnn("cudnnSetStream", unsafe {
            ffi::cudnnSetStream(self.raw, stream as ffi::cudaStream_t)
        })
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

pub(super) struct TensorDesc(pub(super) ffi::cudnnTensorDescriptor_t);

impl TensorDesc {
    /// A dense tensor of `n × c × h × w` values in `form`.
    pub(super) fn new(form: Form, n: usize, c: usize, h: usize, w: usize) -> KernelResult<Self> {
        const SET: &str = "cudnnSetTensor4dDescriptor";
        let dims = [
            check::c_int(SET, n)?,
            check::c_int(SET, c)?,
            check::c_int(SET, h)?,
            check::c_int(SET, w)?,
        ];
        let mut raw: ffi::cudnnTensorDescriptor_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check::cudnn("cudnnCreateTensorDescriptor", unsafe {
            ffi::cudnnCreateTensorDescriptor(&mut raw)
        })?;
        let desc = Self(raw);
        let [n, c, h, w] = dims;
        // SAFETY: `desc` is a live tensor descriptor.
        check::cudnn(SET, unsafe {
            ffi::cudnnSetTensor4dDescriptor(desc.0, format(form), data_type(form), n, c, h, w)
        })?;
        Ok(desc)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe { ffi::cudnnDestroyTensorDescriptor(self.0) };
    }
}

pub(super) struct FilterDesc(pub(super) ffi::cudnnFilterDescriptor_t);

impl FilterDesc {
    /// Filters of `o × i × h × w` values in `form`'s element type, OIHW in the NCHW layout and
    /// OHWI in NHWC.
    pub(super) fn new(form: Form, o: usize, i: usize, h: usize, w: usize) -> KernelResult<Self> {
        const SET: &str = "cudnnSetFilter4dDescriptor";
        let dims = [
            check::c_int(SET, o)?,
            check::c_int(SET, i)?,
            check::c_int(SET, h)?,
            check::c_int(SET, w)?,
        ];
        let mut raw: ffi::cudnnFilterDescriptor_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check::cudnn("cudnnCreateFilterDescriptor", unsafe {
            ffi::cudnnCreateFilterDescriptor(&mut raw)
        })?;
        let desc = Self(raw);
        let [o, i, h, w] = dims;
        // SAFETY: `desc` is a live filter descriptor. Note the argument order: data type
        // before format, unlike the tensor call.
        check::cudnn(SET, unsafe {
            ffi::cudnnSetFilter4dDescriptor(desc.0, data_type(form), format(form), o, i, h, w)
        })?;
        Ok(desc)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe { ffi::cudnnDestroyFilterDescriptor(self.0) };
    }
}

pub(super) struct ConvDesc(pub(super) ffi::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    /// Cross-correlation (what deep learning calls convolution) with `shape`'s padding and
    /// stride, no dilation, f32 accumulation, and `math`.
    pub(super) fn new(shape: &ConvShape, math: cudnnMathType_t) -> KernelResult<Self> {
        const SET: &str = "cudnnSetConvolution2dDescriptor";
        let (pad, stride) = (
            check::c_int(SET, shape.pad)?,
            check::c_int(SET, shape.stride)?,
        );
        let mut raw: ffi::cudnnConvolutionDescriptor_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check::cudnn("cudnnCreateConvolutionDescriptor", unsafe {
            ffi::cudnnCreateConvolutionDescriptor(&mut raw)
        })?;
        let desc = Self(raw);
        let dilation: c_int = 1;
        // SAFETY: `desc` is a live convolution descriptor.
        check::cudnn(SET, unsafe {
            ffi::cudnnSetConvolution2dDescriptor(
                desc.0,
                pad,
                pad,
                stride,
                stride,
                dilation,
                dilation,
                CUDNN_CROSS_CORRELATION,
                CUDNN_DATA_FLOAT,
            )
        })?;
        desc.set_math(math)?;
        Ok(desc)
    }

    pub(super) fn set_math(&self, math: cudnnMathType_t) -> KernelResult {
        // SAFETY: `self` is a live convolution descriptor.
        check::cudnn("cudnnSetConvolutionMathType", unsafe {
            ffi::cudnnSetConvolutionMathType(self.0, math)
        })
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe { ffi::cudnnDestroyConvolutionDescriptor(self.0) };
    }
}
