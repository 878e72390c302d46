//! Every CUDA driver, cuDNN, cuBLAS and NVRTC call is checked, and a failure becomes a
//! `KernelError` that names the call (the idea of llm.c's `cudaCheck`/`cudnnCheck`, but
//! returned instead of exiting, so that a run can stop cleanly and keep its last good
//! checkpoint):
//!
//! - `Failed { call, status }`: `call` is the API function, with what it was for where the
//!   name alone would not say (`cudnnConvolutionForward`, `cuMemcpyHtoD (upload)`,
//!   `cuLaunchKernel(normalize)`, ...) or, for a check made here before anything reaches
//!   the GPU, the `Kernels` method (`sgd`, `conv_forward`); `status` is the library's name and
//!   number for the error (`CUDNN_STATUS_BAD_PARAM (2000)`, `CUDA_ERROR_ILLEGAL_ADDRESS
//!   (700)`) followed by its description and any context.
//! - `OutOfMemory { device: "the GPU", call, bytes, memory }` for an allocation the driver
//!   refused with `CUDA_ERROR_OUT_OF_MEMORY`, with the free and total memory right after.
//! - `Setup(..)` (built in `mod.rs` and `nvrtc.rs`) when the kernels cannot start at all.
//!
//! Kernel launches are asynchronous: a launch is checked when it is queued (bad
//! configuration, missing function), while a fault during the kernel's run surfaces at the
//! next call that waits for the stream (`synchronize`, `download`, an upload) under that
//! call's name.

use std::ffi::{c_char, CStr};

use cudarc::cublas::sys::{self as cublas_sys, cublasStatus_t};
use cudarc::driver::{result::DriverError, sys::CUresult, CudaDevice};

use super::ffi;
use crate::kernels::{KernelError, KernelResult, Memory};

/// What out-of-memory errors call the device.
pub(super) const DEVICE: &str = "the GPU";

/// cuDNN's name and number for `status` and, when it left one, its last error message (which
/// names the failing check, far more useful than the status alone).
pub(super) fn cudnn_status(status: ffi::Status) -> String {
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
    // SAFETY: writes at most `max_size` bytes, NUL included, into the buffer.
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

/// A cuDNN call's status: `Ok` on success, else `Failed` naming `call`.
pub(super) fn cudnn(call: &'static str, status: ffi::Status) -> KernelResult {
    if status == ffi::STATUS_SUCCESS {
        Ok(())
    } else {
        Err(KernelError::Failed {
            call,
            status: cudnn_status(status),
        })
    }
}

/// cuBLAS's name, number and description of `status`.
pub(super) fn cublas_status(status: cublasStatus_t) -> String {
    let text = |ptr: *const c_char| {
        if ptr.is_null() {
            String::from("unknown status")
        } else {
            // SAFETY: non-null results of cuBLAS's status queries are static C strings.
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        }
    };
    // SAFETY: plain queries of static strings for a status cuBLAS returned.
    let (name, description) = unsafe {
        (
            text(cublas_sys::cublasGetStatusName(status)),
            text(cublas_sys::cublasGetStatusString(status)),
        )
    };
    format!("{name} ({}): {description}", status as u32)
}

/// A cuBLAS call's status: `Ok` on success, else `Failed` naming `call`. (cudarc's
/// `cublasStatus_t` is a Rust enum; it holds every status cuBLAS 13 defines.)
pub(super) fn cublas(call: &'static str, status: cublasStatus_t) -> KernelResult {
    if status == cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(KernelError::Failed {
            call,
            status: cublas_status(status),
        })
    }
}

/// The driver's name, number and description of `error`. Not `DriverError`'s own `Debug` or
/// `Display`: both unwrap `cuGetErrorString`, which fails (so they would panic) for a code
/// the driver does not know.
pub(super) fn driver_status(error: &DriverError) -> String {
    let (name, code) = (format!("{:?}", error.0), error.0 as u32);
    match error.error_string() {
        Ok(text) => format!("{name} ({code}): {}", text.to_string_lossy()),
        Err(_) => format!("{name} ({code})"),
    }
}

/// A failed driver call that allocates nothing.
pub(super) fn driver(call: &'static str, error: DriverError) -> KernelError {
    KernelError::Failed {
        call,
        status: driver_status(&error),
    }
}

/// A failed driver call that allocated `bytes`: out of memory when the driver says so.
pub(super) fn allocation(
    dev: &CudaDevice,
    call: &'static str,
    bytes: usize,
    error: DriverError,
) -> KernelError {
    if error.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        KernelError::OutOfMemory {
            device: DEVICE,
            call,
            bytes,
            memory: memory(dev),
        }
    } else {
        driver(call, error)
    }
}

/// A check made on the host before anything is queued, e.g. a buffer too short for its shape
/// (which the GPU would read or write out of bounds).
pub(super) fn failed(call: &'static str, status: String) -> KernelError {
    KernelError::Failed { call, status }
}

/// Free and total memory of `dev`'s context (`cuMemGetInfo`), or `None` if the driver cannot
/// say (then the error reporting it must not fail in turn).
pub(super) fn memory(dev: &CudaDevice) -> Option<Memory> {
    dev.bind_to_thread().ok()?;
    let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
    Some(Memory { free, total })
}

/// `value` as cuDNN's `int`, or `Failed` naming the cuDNN call it was meant for.
pub(super) fn c_int(call: &'static str, value: usize) -> KernelResult<std::ffi::c_int> {
    std::ffi::c_int::try_from(value)
        .map_err(|_| failed(call, format!("dimension {value} does not fit cuDNN's int")))
}
