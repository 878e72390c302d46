//! Summing gradients across GPUs with NCCL (cargo feature `nccl`): one communicator per rank,
//! made from the unique id rank 0 hands out at the rendezvous, and a stream of its own so
//! that a layer's sums run while the backward pass goes on to the layers below it.
//!
//! The backward pass calls `layer` as each layer's gradients are written (FC8 first, conv1
//! last): an event recorded on the compute stream makes the NCCL stream wait for exactly
//! those kernels, and the all-reduce of the weight and bias gradients is queued behind it, in
//! place. `finish` makes the compute stream wait for the last sum before the update reads
//! the gradients. Nothing here waits on the host. NCCL's ring all-reduce gives every rank
//! the same bits, so the ranks' updates stay identical.

use crate::dist::{Control, DistError, World};
use crate::kernels::{GradientSum, KernelResult, LayerGradients};
use dfdx::tensor::Cuda;

#[cfg(feature = "nccl")]
pub use with_nccl::{unique_id, NcclSum};

#[cfg(not(feature = "nccl"))]
pub use without_nccl::{unique_id, NcclSum};

#[cfg(feature = "nccl")]
mod with_nccl {
    use std::ffi::{c_char, CStr};
    use std::sync::Arc;

    use cudarc::driver::{
        result as driver, sys as cu, CudaDevice, CudaStream, DevicePtr, DeviceSlice,
    };
    use cudarc::nccl::{result, sys};
    use dfdx::tensor::Storage;

    use super::*;
    use crate::kernels::cuda::check;
    use crate::kernels::Buf;

    /// Bytes of NCCL's unique id.
    const ID_BYTES: usize = 128;

    fn nccl_text(e: &result::NcclError) -> String {
        // SAFETY: NCCL returns a static string for every result code.
        let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(e.0)) };
        text.to_string_lossy().into_owned()
    }

    /// Rank 0's NCCL unique id, for the rendezvous to hand to every rank.
    pub fn unique_id() -> Result<Vec<u8>, DistError> {
        let id = result::get_uniqueid().map_err(|e| {
            DistError::Collective(format!(
                "ncclGetUniqueId failed: {} (is libnccl.so.2 on the library path?)",
                nccl_text(&e)
            ))
        })?;
        Ok(id.internal.iter().map(|&c| c as u8).collect())
    }

    /// A CUDA event without timing, destroyed when dropped.
    struct Event(cu::CUevent);

    impl Event {
        fn new() -> Result<Self, DistError> {
            driver::event::create(cu::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map(Self)
                .map_err(|e| DistError::Collective(format!("cuEventCreate (gradients): {e:?}")))
        }
    }

    impl Drop for Event {
        fn drop(&mut self) {
            // SAFETY: created by cuEventCreate, destroyed once.
            let _ = unsafe { driver::event::destroy(self.0) };
        }
    }

    /// This rank's NCCL communicator and the stream its sums run on.
    pub struct NcclSum {
        // Field order is drop order: the communicator before its stream and device.
        comm: Comm,
        /// Recorded on the compute stream when a layer's gradients are queued.
        written: Event,
        /// Recorded on the sums' stream after the last sum.
        summed: Event,
        /// Whether sums were queued since the last `finish`.
        pending: bool,
        stream: CudaStream,
        dev: Arc<CudaDevice>,
    }

    struct Comm(sys::ncclComm_t);

    impl Drop for Comm {
        fn drop(&mut self) {
            // Abort, not destroy: destroying waits for the other ranks, which may be gone.
            // SAFETY: a communicator made by ncclCommInitRank, released once.
            let _ = unsafe { result::comm_abort(self.0) };
        }
    }

    // SAFETY: the communicator, events and stream are used by one thread at a time (`&mut
    // self`), and NCCL and the driver allow that from any thread of the context.
    unsafe impl Send for NcclSum {}

    impl NcclSum {
        /// Joins rank `world.rank`'s GPU (the one dfdx's device `dfdx` opened) to the
        /// communicator of rank 0's unique id `id`. Blocks until every rank has joined.
        pub fn new(dfdx: &Cuda, world: World, id: &[u8]) -> Result<Self, DistError> {
            let probe: Buf<Cuda> = dfdx
                .try_alloc_len(1)
                .map_err(|e| DistError::Collective(format!("allocating on the GPU: {e:?}")))?;
            let dev = probe.device();
            drop(probe);
            let internal: [c_char; ID_BYTES] = <[u8; ID_BYTES]>::try_from(id)
                .map_err(|_| {
                    DistError::Mismatch(format!(
                        "rank 0 sent an NCCL id of {} bytes, not {ID_BYTES} (built without \
                         NCCL, or with another version?)",
                        id.len()
                    ))
                })?
                .map(|b| b as c_char);
            dev.bind_to_thread()
                .map_err(|e| DistError::Collective(format!("cuCtxSetCurrent: {e:?}")))?;
            let mut comm: sys::ncclComm_t = std::ptr::null_mut();
            // SAFETY: `comm` receives the new communicator; the id came from rank 0's
            // ncclGetUniqueId; the device's context is current.
            unsafe {
                result::comm_init_rank(
                    &mut comm,
                    world.size as i32,
                    sys::ncclUniqueId { internal },
                    world.rank as i32,
                )
            }
            .map_err(|e| {
                DistError::Collective(format!(
                    "ncclCommInitRank (rank {} of {}) failed: {}; set NCCL_DEBUG=WARN for \
                     NCCL's own account",
                    world.rank,
                    world.size,
                    nccl_text(&e)
                ))
            })?;
            let comm = Comm(comm);
            let stream = dev
                .fork_default_stream()
                .map_err(|e| DistError::Collective(format!("cuStreamCreate (gradients): {e:?}")))?;
            Ok(Self {
                comm,
                written: Event::new()?,
                summed: Event::new()?,
                pending: false,
                stream,
                dev,
            })
        }
    }

    impl GradientSum<Cuda> for NcclSum {
        fn layer(&mut self, _: &mut Control, grads: LayerGradients<'_, Cuda>) -> KernelResult {
            let compute = *self.dev.cu_stream();
            let sums = self.stream.stream;
            // SAFETY: live events and streams of this context; each all-reduce reads and
            // writes its own buffer in place (NCCL allows send == receive), which nothing on
            // the compute stream touches until `finish` has made it wait for the sums.
            unsafe {
                driver::event::record(self.written.0, compute)
                    .map_err(|e| check::driver("cuEventRecord (gradients written)", e))?;
                driver::stream::wait_event(
                    sums,
                    self.written.0,
                    cu::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
                .map_err(|e| check::driver("cuStreamWaitEvent (gradients written)", e))?;
                result::group_start().map_err(|e| nccl_failed("ncclGroupStart", &e))?;
                for (g, len) in grads {
                    if len > g.len() {
                        return Err(check::failed(
                            "ncclAllReduce (gradients)",
                            format!("{len} values asked of a buffer of {}", g.len()),
                        ));
                    }
                    let ptr = *g.device_ptr() as *mut std::ffi::c_void;
                    result::all_reduce(
                        ptr,
                        ptr,
                        len,
                        sys::ncclDataType_t::ncclFloat32,
                        sys::ncclRedOp_t::ncclSum,
                        self.comm.0,
                        sums as sys::cudaStream_t,
                    )
                    .map_err(|e| nccl_failed("ncclAllReduce (gradients)", &e))?;
                }
                result::group_end().map_err(|e| nccl_failed("ncclGroupEnd", &e))?;
            }
            self.pending = true;
            Ok(())
        }

        fn finish(&mut self) -> KernelResult {
            if !std::mem::replace(&mut self.pending, false) {
                return Ok(());
            }
            let compute = *self.dev.cu_stream();
            // SAFETY: live events and streams of this context.
            unsafe {
                driver::event::record(self.summed.0, self.stream.stream)
                    .map_err(|e| check::driver("cuEventRecord (gradients summed)", e))?;
                driver::stream::wait_event(
                    compute,
                    self.summed.0,
                    cu::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
                .map_err(|e| check::driver("cuStreamWaitEvent (gradients summed)", e))?;
            }
            Ok(())
        }
    }

    fn nccl_failed(call: &'static str, e: &result::NcclError) -> crate::kernels::KernelError {
        check::failed(call, nccl_text(e))
    }
}

#[cfg(not(feature = "nccl"))]
mod without_nccl {
    use super::*;

    const NO_NCCL: &str = "this binary was built without NCCL, which training on several \
                           GPUs needs: build it with `cargo build --release --features nccl` \
                           (NCCL's libnccl.so, e.g. from the nvidia-nccl-cu13 wheel, on the \
                           library path)";

    pub fn unique_id() -> Result<Vec<u8>, DistError> {
        Err(DistError::Launch(NO_NCCL.into()))
    }

    /// Never made: `new` says how to build with NCCL.
    pub enum NcclSum {}

    impl NcclSum {
        pub fn new(_: &Cuda, _: World, _: &[u8]) -> Result<Self, DistError> {
            Err(DistError::Launch(NO_NCCL.into()))
        }
    }

    impl GradientSum<Cuda> for NcclSum {
        fn layer(&mut self, _: &mut Control, _: LayerGradients<'_, Cuda>) -> KernelResult {
            match *self {}
        }

        fn finish(&mut self) -> KernelResult {
            match *self {}
        }
    }
}
