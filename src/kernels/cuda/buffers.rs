//! Device buffers as the kernels see them: raw pointers for cuDNN, the host-side checks that
//! keep every kernel inside its buffers (lengths, 32-bit counts, shapes whose arithmetic
//! would divide by zero or wrap), and the mean-row table `normalize` reads (its per-batch
//! inputs go up through `upload`).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{
    CudaDevice, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice, ValidAsZeroBits,
};
use dfdx::tensor::Cuda;

use super::check;
use crate::kernels::{Buf, ConvShape, KernelResult, Layout, PoolShape, MAX_POOL_PLANE};

/// How activation buffers hold their values: in which layout, and whether as bf16 (two to
/// each f32 slot of dfdx's buffer type, the first in the low half) or as f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Form {
    pub(super) layout: Layout,
    pub(super) bf16: bool,
}

/// How many values `buf` holds as bf16 (two per slot) or as f32.
pub(super) fn values(buf: &Buf<Cuda>, bf16: bool) -> usize {
    if bf16 {
        buf.len() * 2
    } else {
        buf.len()
    }
}

impl Form {
    /// How many activation values `buf` holds.
    pub(super) fn values(&self, buf: &Buf<Cuda>) -> usize {
        values(buf, self.bf16)
    }

    /// The f32 slots `len` activation values take.
    pub(super) fn slots(&self, len: usize) -> usize {
        if self.bf16 {
            len.div_ceil(2)
        } else {
            len
        }
    }
}

pub(super) fn device_ptr(buf: &Buf<Cuda>) -> *const c_void {
    *buf.device_ptr() as *const c_void
}

pub(super) fn device_ptr_mut(buf: &mut Buf<Cuda>) -> *mut c_void {
    *buf.device_ptr_mut() as *mut c_void
}

/// `n` as the 32-bit element count the NVRTC kernels index with, or `Failed` naming the
/// kernel: an index that wrapped around would address the wrong element.
pub(super) fn count32(call: &'static str, what: &str, n: usize) -> KernelResult<u32> {
    u32::try_from(n).map_err(|_| {
        check::failed(
            call,
            format!("{what}: {n} values exceed the kernels' 32-bit indexing"),
        )
    })
}

/// Fails unless buffer `what` holds at least `needed` values: the kernels index by shape, and
/// a short buffer would be read or written out of bounds on the GPU.
pub(super) fn at_least(call: &'static str, what: &str, len: usize, needed: usize) -> KernelResult {
    if len >= needed {
        Ok(())
    } else {
        Err(check::failed(
            call,
            format!("buffer {what} holds {len} values, the shape needs {needed}"),
        ))
    }
}

/// Fails unless `what` holds exactly `expected` values.
pub(super) fn exactly(call: &'static str, what: &str, len: usize, expected: usize) -> KernelResult {
    if len == expected {
        Ok(())
    } else {
        Err(check::failed(
            call,
            format!("{what} holds {len} values, expected {expected}"),
        ))
    }
}

/// Fails for a convolution whose output size cannot be computed (zero stride, or a kernel
/// larger than the padded input), before `ConvShape::out_size` divides by zero or wraps.
pub(super) fn conv_geometry(call: &'static str, shape: &ConvShape) -> KernelResult {
    let padded = shape
        .pad
        .checked_mul(2)
        .and_then(|p| p.checked_add(shape.size));
    if shape.stride == 0 || padded.is_none_or(|padded| padded < shape.kernel) {
        return Err(check::failed(
            call,
            format!("no output size for {shape:?} (zero stride or kernel wider than the input)"),
        ));
    }
    Ok(())
}

/// As `conv_geometry`, for pooling (no padding).
pub(super) fn pool_geometry(call: &'static str, shape: &PoolShape) -> KernelResult {
    if shape.stride == 0 || shape.size < shape.kernel {
        return Err(check::failed(
            call,
            format!("no output size for {shape:?} (zero stride or window wider than the input)"),
        ));
    }
    Ok(())
}

/// Fails for pooled planes whose arg-max indices an f32 cannot hold exactly: the backward
/// pass would route gradients to the wrong inputs.
pub(super) fn pool_plane(call: &'static str, shape: &PoolShape) -> KernelResult {
    if shape
        .size
        .checked_mul(shape.size)
        .is_none_or(|n| n > MAX_POOL_PLANE)
    {
        return Err(check::failed(
            call,
            format!(
                "{0}×{0} planes: f32 arg-max indices are exact only for planes of up to \
                 {MAX_POOL_PLANE} values",
                shape.size
            ),
        ));
    }
    Ok(())
}

/// The calls an upload into a device buffer is made of, named for what it uploads.
pub(super) struct Upload {
    pub(super) alloc: &'static str,
    pub(super) copy: &'static str,
}

/// Copies `host` into the front of `slot`, reallocating only when it is too small (at least
/// one value: the driver refuses empty allocations).
pub(super) fn upload_into<T: DeviceRepr + ValidAsZeroBits>(
    dev: &Arc<CudaDevice>,
    slot: &mut Option<CudaSlice<T>>,
    host: &[T],
    calls: &Upload,
) -> KernelResult {
    if slot.as_ref().is_none_or(|b| b.len() < host.len()) {
        // Dropping the old one first frees it (in stream order) before the larger one is made.
        *slot = None;
        let len = host.len().max(1);
        let buf = dev
            .alloc_zeros::<T>(len)
            .map_err(|e| check::allocation(dev, calls.alloc, len * std::mem::size_of::<T>(), e))?;
        *slot = Some(buf);
    }
    let Some(buf) = slot.as_mut() else {
        return Err(check::failed(
            calls.alloc,
            "no buffer after allocating".into(),
        ));
    };
    if host.is_empty() {
        return Ok(());
    }
    // `try_slice_mut` cannot fail here (the buffer holds at least `host.len()` values), and
    // the copy then gets a destination of exactly the source's length, which it asserts.
    let Some(mut front) = buf.try_slice_mut(0..host.len()) else {
        return Err(check::failed(
            calls.copy,
            format!(
                "buffer of {} values too short for {}",
                buf.len(),
                host.len()
            ),
        ));
    };
    dev.htod_sync_copy_into(host, &mut front)
        .map_err(|e| check::driver(calls.copy, e))
}

/// The mean-row table `normalize` reads, resident for the run.
pub(super) struct DeviceMeanTable {
    pub(super) data: CudaSlice<f32>,
    pub(super) row_len: usize,
    pub(super) rows: usize,
}

const MEAN_TABLE: Upload = Upload {
    alloc: "cuMemAlloc (set_mean_table)",
    copy: "cuMemcpyHtoD (set_mean_table)",
};

impl DeviceMeanTable {
    /// Uploads `table`, rows of `row_len` values.
    pub(super) fn upload(
        dev: &Arc<CudaDevice>,
        table: &[f32],
        row_len: usize,
    ) -> KernelResult<Self> {
        const CALL: &str = "set_mean_table";
        if row_len == 0 || !table.len().is_multiple_of(row_len) {
            return Err(check::failed(
                CALL,
                format!(
                    "mean table of {} values is not made of rows of {row_len}",
                    table.len()
                ),
            ));
        }
        count32(CALL, "mean table", table.len())?;
        let mut slot = None;
        upload_into(dev, &mut slot, table, &MEAN_TABLE)?;
        let Some(data) = slot else {
            return Err(check::failed(CALL, "no buffer after uploading".into()));
        };
        Ok(Self {
            data,
            row_len,
            rows: table.len() / row_len,
        })
    }
}
