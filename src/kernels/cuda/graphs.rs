//! A pass recorded as a CUDA graph (`kernels::replay`): captured from a stream of its own —
//! the device's legacy default stream, which dfdx and the rest of the fast path use, cannot be
//! captured — instantiated once, and launched on the device's stream in its place, where it
//! runs in order with everything else.
//!
//! The capture is thread-local: a call from this thread that cannot be recorded (an
//! allocation that synchronises, a copy to or from the host) fails instead of running, and
//! the pass then runs directly (`replay::run`).

use std::sync::Arc;

use cudarc::driver::sys::{self, CUgraph, CUgraphExec, CUresult, CUstream, CUstreamCaptureMode};
use cudarc::driver::{result::DriverError, CudaDevice};

use super::check;
use crate::kernels::{KernelError, KernelResult};

/// An instantiated graph, destroyed when dropped (a launch still running finishes first:
/// the driver frees it then).
pub struct Graph {
    exec: CUgraphExec,
    /// Keeps the context alive (and current for the destroy) until the graph is gone.
    dev: Arc<CudaDevice>,
}

// SAFETY: an executable graph is a driver handle usable from any thread of its context; the
// kernels use it from one thread at a time (`&mut self`).
unsafe impl Send for Graph {}
unsafe impl Sync for Graph {}

impl Drop for Graph {
    fn drop(&mut self) {
        // Errors here have nowhere to go.
        let _ = self.dev.bind_to_thread();
        // SAFETY: instantiated once, destroyed once.
        unsafe { sys::cuGraphExecDestroy(self.exec) };
    }
}

fn checked(call: &'static str, status: CUresult) -> KernelResult {
    match status {
        CUresult::CUDA_SUCCESS => Ok(()),
        status => Err(check::driver(call, DriverError(status))),
    }
}

/// Starts capturing the work queued on `stream`.
pub(super) fn begin(stream: CUstream) -> KernelResult {
    // SAFETY: a live stream of the current context, not the legacy default stream.
    checked("cuStreamBeginCapture", unsafe {
        sys::cuStreamBeginCapture_v2(
            stream,
            CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
    })
}

/// Ends the capture `begin` started on `stream` — also when the work queued meanwhile failed
/// (the capture is then discarded) — and instantiates what was captured.
pub(super) fn end(dev: &Arc<CudaDevice>, stream: CUstream) -> KernelResult<Graph> {
    let mut graph: CUgraph = std::ptr::null_mut();
    // SAFETY: `stream` is capturing (begun by `begin`); `graph` a valid out-pointer.
    let ended = checked("cuStreamEndCapture", unsafe {
        sys::cuStreamEndCapture(stream, &mut graph)
    });
    if graph.is_null() {
        ended?;
        return Err(check::failed(
            "cuStreamEndCapture",
            "the capture returned no graph".into(),
        ));
    }
    let mut exec: CUgraphExec = std::ptr::null_mut();
    let instantiated = ended.and_then(|()| {
        // SAFETY: `graph` is the live graph just captured; `exec` a valid out-pointer.
        checked("cuGraphInstantiate", unsafe {
            sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0)
        })
    });
    // The executable graph is independent of the captured one.
    // SAFETY: captured above, destroyed once.
    unsafe { sys::cuGraphDestroy(graph) };
    instantiated?;
    Ok(Graph {
        exec,
        dev: dev.clone(),
    })
}

/// Queues `graph` on `stream`. A failure names the setting that runs without graphs.
pub(super) fn launch(graph: &Graph, stream: CUstream) -> KernelResult {
    // SAFETY: a live executable graph and a stream of its context.
    let launched = checked("cuGraphLaunch", unsafe {
        sys::cuGraphLaunch(graph.exec, stream)
    });
    launched.map_err(|e| match e {
        KernelError::Failed { call, status } => KernelError::Failed {
            call,
            status: format!(
                "{status}; compute.graphs = \"off\" (--graphs off) runs the passes without \
                 CUDA graphs"
            ),
        },
        other => other,
    })
}
