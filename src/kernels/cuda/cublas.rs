//! The fully connected layers' matrix products on cuBLAS: a handle on dfdx's stream in the
//! pipeline's precision, and the row-major product expressed in cuBLAS's column-major terms.
//! In bf16 the operands stay f32 buffers and cuBLAS rounds them to bf16 on the way into its
//! tensor cores (`CUBLAS_COMPUTE_32F_FAST_16BF`), summing in f32: autocast's bf16 GEMM with
//! f32 output, without a conversion pass or a second copy of FC6's 151 MB of weights.
//!
//! The handle is made here rather than with cudarc's `CudaBlas`, which unwraps the context
//! binding when it is made and the destroy when it is dropped: a panic where the kernels
//! return errors.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use cudarc::cublas::sys::{
    self, cublasComputeType_t, cublasMath_t, cublasOperation_t, cudaDataType,
};
use cudarc::driver::{sys::CUstream, CudaDevice, CudaSlice, DevicePtrMut, DeviceSlice};
use dfdx::tensor::Cuda;

use super::buffers::{at_least, device_ptr, device_ptr_mut};
use super::check;
use crate::config::Precision;
use crate::kernels::{Buf, KernelResult, MatMul};

/// cuBLAS's workspace: what its documentation recommends for Hopper (32 MiB), the largest
/// of its recommendations.
const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLAS handle on dfdx's stream.
pub(super) struct Handle {
    raw: sys::cublasHandle_t,
    precision: Precision,
    /// Given to cuBLAS explicitly, so that its products read and write the same scratch
    /// memory on any stream (a recorded pass bakes its address in) and never allocate.
    workspace: CudaSlice<u8>,
    /// Whether the handle's stream is recording (`CudaKernels`'s recorder).
    recording: bool,
    /// Keeps the context alive (and current for the destroy) until the handle is gone.
    dev: Arc<CudaDevice>,
}

impl Handle {
    pub(super) fn new(dev: &Arc<CudaDevice>, precision: Precision) -> KernelResult<Self> {
        dev.bind_to_thread()
            .map_err(|e| check::driver("cuCtxSetCurrent", e))?;
        let mut raw: sys::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; a context is current.
        check::cublas("cublasCreate", unsafe { sys::cublasCreate_v2(&mut raw) })?;
        let workspace = dev.alloc_zeros::<u8>(WORKSPACE_BYTES);
        let mut handle = Self {
            raw,
            precision,
            // Dropped (destroying the handle) if the workspace could not be had.
            workspace: match workspace {
                Ok(w) => w,
                Err(e) => {
                    // SAFETY: created above and destroyed once.
                    unsafe { sys::cublasDestroy_v2(raw) };
                    return Err(check::allocation(
                        dev,
                        "cuMemAlloc (cuBLAS workspace)",
                        WORKSPACE_BYTES,
                        e,
                    ));
                }
            },
            recording: false,
            dev: dev.clone(),
        };
        // The device's stream, as for cuDNN: the products queue behind dfdx's work and our
        // kernels and in front of what follows them, with no events.
        handle.set_stream(*dev.cu_stream(), false)?;
        let math = match precision {
            // fp32 products and sums throughout, as cuDNN's FMA math for the convolutions.
            Precision::Strict => cublasMath_t::CUBLAS_DEFAULT_MATH,
            // TF32 tensor cores for fp32 inputs on Ampere and later.
            Precision::Tf32 => cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
            // The products' compute type asks for bf16 (see `matmul`).
            Precision::Bf16 => cublasMath_t::CUBLAS_DEFAULT_MATH,
        };
        // SAFETY: the handle is live.
        check::cublas("cublasSetMathMode", unsafe {
            sys::cublasSetMathMode(handle.raw, math)
        })?;
        Ok(handle)
    }
}

impl Handle {
    /// Queues the products on `stream` (of the handle's context) from now on, `recording`
    /// or not, with the handle's own workspace (setting the stream resets it).
    pub(super) fn set_stream(&mut self, stream: CUstream, recording: bool) -> KernelResult {
        // SAFETY: the handle is live and the stream belongs to its context.
        check::cublas("cublasSetStream", unsafe {
            sys::cublasSetStream_v2(self.raw, stream as sys::cudaStream_t)
        })?;
        let bytes = self.workspace.len();
        let ptr = *self.workspace.device_ptr_mut() as *mut c_void;
        // SAFETY: a live buffer of `bytes` bytes of the handle's context, kept as long as the
        // handle.
        check::cublas("cublasSetWorkspace", unsafe {
            sys::cublasSetWorkspace_v2(self.raw, ptr, bytes)
        })?;
        self.recording = recording;
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Errors here have nowhere to go; the handle is unusable either way.
        let _ = self.dev.bind_to_thread();
        // SAFETY: created by cublasCreate and destroyed once.
        unsafe { sys::cublasDestroy_v2(self.raw) };
    }
}

const CALL: &str = "matmul";
const SGEMM: &str = "cublasSgemm (matmul)";
const GEMM_EX: &str = "cublasGemmEx (matmul, bf16 compute)";

/// `c = op(a) · op(b)`, all three row-major (see `MatMul`). A row-major matrix is its
/// transpose in column-major order, so cuBLAS computes `cᵀ = op(b)ᵀ · op(a)ᵀ`: `b` first, each
/// operand's transposition as given, dimensions `(n, m, k)`, and each leading dimension the
/// stored row length (`b`: `n`, or `k` when transposed; `a`: `k`, or `m` when transposed;
/// `c`: `n`). The caller has made the device's context current.
pub(super) fn matmul(
    handle: &Handle,
    mm: &MatMul,
    a: &Buf<Cuda>,
    b: &Buf<Cuda>,
    c: &mut Buf<Cuda>,
) -> KernelResult {
    // Checked before the lengths: three factors that fit an `int` cannot overflow a product.
    let [m, n, k] = [("m", mm.m), ("n", mm.n), ("k", mm.k)].map(|(what, value)| {
        c_int::try_from(value).map_err(|_| {
            check::failed(
                CALL,
                format!("{what} = {value} does not fit cuBLAS's int ({mm:?})"),
            )
        })
    });
    let (m, n, k) = (m?, n?, k?);
    at_least(CALL, "a", a.len(), mm.a_len())?;
    at_least(CALL, "b", b.len(), mm.b_len())?;
    at_least(CALL, "c", c.len(), mm.c_len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if handle.recording {
            // The memset below goes to the device's stream, not into the recording.
            return Err(check::failed(
                CALL,
                "a product over k = 0 cannot be recorded".into(),
            ));
        }
        // Every value is an empty sum. cuBLAS documents no result for k = 0, so the zeros are
        // written here.
        let Some(mut front) = c.try_slice_mut(0..mm.c_len()) else {
            return Err(check::failed(
                CALL,
                "c shorter than its checked length".into(),
            ));
        };
        return handle
            .dev
            .memset_zeros(&mut front)
            .map_err(|e| check::driver("cuMemsetD8 (matmul)", e));
    }
    let op = |transposed| {
        if transposed {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    let ld_b = if mm.b_transposed { k } else { n };
    let ld_a = if mm.a_transposed { m } else { k };
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (b_ptr, a_ptr, c_ptr) = (device_ptr(b), device_ptr(a), device_ptr_mut(c));
    let (op_b, op_a) = (op(mm.b_transposed), op(mm.a_transposed));
    if handle.precision == Precision::Bf16 {
        let f32_type = cudaDataType::CUDA_R_32F;
        // SAFETY: as for the Sgemm below: the same operands, dimensions and leading
        // dimensions, every matrix f32, and `alpha`/`beta` f32 as the compute type needs.
        return check::cublas(GEMM_EX, unsafe {
            sys::cublasGemmEx(
                handle.raw,
                op_b,
                op_a,
                n,
                m,
                k,
                &alpha as *const f32 as *const c_void,
                b_ptr,
                f32_type,
                ld_b,
                a_ptr,
                f32_type,
                ld_a,
                &beta as *const f32 as *const c_void,
                c_ptr,
                f32_type,
                n,
                cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        });
    }
    // SAFETY: the handle is live on the device's stream and its context current; with these
    // dimensions and leading dimensions cuBLAS reads `b`'s `k·n`, `a`'s `m·k` and writes `c`'s
    // `m·n` values, which the buffers hold (checked). `alpha` and `beta` are host values
    // (the handle's default pointer mode) that outlive the call.
    check::cublas(SGEMM, unsafe {
        sys::cublasSgemm_v2(
            handle.raw,
            op_b,
            op_a,
            n,
            m,
            k,
            &alpha,
            b_ptr as *const f32,
            ld_b,
            a_ptr as *const f32,
            ld_a,
            &beta,
            c_ptr as *mut f32,
            n,
        )
    })
}
