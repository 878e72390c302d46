//! The fast path's kernels on an NVIDIA GPU: cuDNN for the three convolution passes, cuBLAS
//! for the fully connected layers' matrix products, small NVRTC-compiled kernels
//! (`kernels.cu`) for everything else.
//!
//! Everything runs on dfdx's own `CudaDevice` — the one behind every dfdx buffer — and on its
//! stream, so this work and dfdx's are ordered without any extra synchronisation and the
//! buffers cross between the two without copies.
//!
//! Reproducibility: only deterministic cuDNN algorithms are accepted and the reductions written
//! here use a fixed order (no atomics), so the same algorithms on the same inputs give the
//! same bits on every run.
//!
//! Failures: no method panics; every call into CUDA, cuDNN or NVRTC is checked and a failure
//! is returned as a `KernelError` naming the call (`check` says how).
//!
//! - `ffi`: cuDNN 9's convolution API, declared here (cudarc's bindings are cuDNN 8's).
//! - `check`: statuses and driver errors into `KernelError`s; free memory.
//! - `cudnn`: the cuDNN handle and descriptors, destroyed when dropped.
//! - `cublas`: the cuBLAS handle and the matrix product.
//! - `passes`: the three convolution passes as one table of cuDNN functions.
//! - `algorithms`: choosing each pass's algorithm; the per-shape plans.
//! - `nvrtc`: compiling and loading the kernels of `kernels.cu`; launch configurations.
//! - `launches`: each of those kernels' checks, parameters and launch.
//! - `buffers`: device pointers, length and shape checks, uploads.
//! - `upload`: each batch's inputs on a copy stream of their own, overlapping the compute.
//! - `graphs`: a pass recorded as a CUDA graph on a stream of its own, and its launch
//!   (`compute.graphs`; the bookkeeping is `kernels::replay`).
//!
//! Layouts: activations NCHW or NHWC (`compute.layout`); the NHWC kernels are their own, and
//! cuDNN is told the layout, so that its tensor-core kernels (which compute in NHWC) need no
//! conversions. Filters stay OIHW; NHWC convolutions transpose them to OHWI around each call.
//!
//! bf16 (`Precision::Bf16`): activation buffers hold two bf16 values per f32 slot (`Form`);
//! every kernel over activations has a bf16 instantiation, cuDNN convolves bf16 tensors with
//! f32 accumulation (the f32 filters converted to bf16 around each call, with the OHWI
//! transposition in NHWC), and cuBLAS feeds its tensor cores bf16 from the f32 FC buffers.

mod algorithms;
mod buffers;
mod check;
mod cublas;
mod cudnn;
mod ffi;
mod graphs;
mod launches;
pub mod nccl;
mod nvrtc;
mod passes;
mod upload;

use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice};
use dfdx::prelude::Storage;
use dfdx::tensor::{Cuda, CudaError};

use algorithms::{Chosen, ConvPlan};
use buffers::{at_least, device_ptr, device_ptr_mut, DeviceMeanTable, Form};
use ffi::cudnnMathType_t;
use nvrtc::Functions;
use passes::{Descriptors, Operands, Pass, Workspace};
use upload::Uploads;

use super::replay::{self, ReplayKey, ReplayStats, Replays, Work};

use super::{
    bf16, Buf, ConvShape, DropoutMask, InputBatch, KernelError, KernelResult, Kernels, Layout,
    LrnParams, MatMul, Memory, Planes, PoolShape, SgdStep, SgdTensor,
};
use crate::config::{Algorithms, ComputeConfig, Precision};

/// What to try when cuDNN cannot start.
const CUDNN_REMEDY: &str = "the fast path needs cuDNN 9 (libcudnn.so.9 and its sub-libraries \
                            libcudnn_ops, libcudnn_cnn and libcudnn_engines_*) on the library \
                            path, built for this CUDA version; install it, or run with \
                            --engine dfdx";

/// The fast path's kernels on dfdx's CUDA device.
pub struct CudaKernels {
    // Field order is drop order: graphs, cuDNN and cuBLAS objects go before the device they
    // were made on.
    replays: Replays<graphs::Graph>,
    /// The stream passes are recorded from, made on first use.
    recording: Option<Rc<CudaStream>>,
    convs: HashMap<ConvShape, ConvPlan>,
    cudnn: cudnn::Handle,
    cublas: cublas::Handle,
    precision: Precision,
    layout: Layout,
    /// Choose convolution algorithms by timing them (else by cuDNN's heuristics).
    measure: bool,
    functions: Functions,
    /// In the NHWC layout or in bf16, one layer's filters (or filter gradient) as the
    /// convolution reads (writes) them — OHWI, bf16 — grown on demand: the parameters stay
    /// f32 OIHW, and a converted copy costs little next to the convolution.
    filters: Option<Buf<Cuda>>,
    /// Shared by every convolution (they run one at a time on one stream), grown on demand.
    workspace: Option<CudaSlice<u8>>,
    /// `relu_bias_backward`'s per-chunk sums, grown on demand.
    partials: Option<CudaSlice<f32>>,
    /// `softmax_cross_entropy`'s labels, grown on demand.
    labels: Option<CudaSlice<u32>>,
    /// `sgd_all`'s table of the model's buffers.
    sgd_table: launches::SgdTable,
    mean_table: Option<DeviceMeanTable>,
    uploads: Uploads,
    /// dfdx's device, for buffers of dfdx's own type (`alloc`, `upload`).
    dfdx: Cuda,
    /// The driver device behind dfdx's buffers: same context, same stream.
    dev: Arc<CudaDevice>,
}

// SAFETY: the members that are not `Send` are the cuDNN handle and descriptors and the
// cuBLAS handle (raw pointers), and the recording stream with the `Rc`s that share it. cuDNN
// and cuBLAS allow a handle to move between host threads as long as it is not used by two at
// once, which `&mut self` on every method guarantees; every cuDNN and cuBLAS call binds the
// device's context to the calling thread first. Every `Rc` of the recording stream is owned
// by this value (`recording`, `functions`) and never handed out, so all of them move
// together.
unsafe impl Send for CudaKernels {}

impl CudaKernels {
    /// Opens cuDNN and cuBLAS on dfdx's stream and compiles the kernels. Failures that mean the
    /// fast path cannot run here at all are `KernelError::Setup`, saying what to do.
    pub fn new(dfdx: &Cuda, compute: &ComputeConfig) -> KernelResult<Self> {
        let precision = compute.precision;
        let measure = compute.algorithms == Algorithms::Measure;
        // dfdx keeps its `CudaDevice` private, but every buffer it hands out carries it.
        let probe: Buf<Cuda> = dfdx.try_alloc_len(1).map_err(|e| {
            KernelError::Setup(format!(
                "allocating a first buffer on the GPU failed: {}",
                dfdx_error(&e)
            ))
        })?;
        let dev = probe.device();
        drop(probe);
        let setup = |e: KernelError| KernelError::Setup(format!("{e}; {CUDNN_REMEDY}"));
        let cudnn = cudnn::Handle::new(&dev).map_err(setup)?;
        // Loads the sub-libraries now, so that a missing one is a setup error and not the
        // first convolution's.
        // SAFETY: plain queries without arguments.
        check::cudnn("cudnnOpsVersionCheck", unsafe {
            ffi::cudnnOpsVersionCheck()
        })
        .map_err(setup)?;
        // SAFETY: as above.
        check::cudnn("cudnnCnnVersionCheck", unsafe {
            ffi::cudnnCnnVersionCheck()
        })
        .map_err(setup)?;
        let cublas = cublas::Handle::new(&dev, precision).map_err(|e| {
            KernelError::Setup(format!(
                "{e}; the fast path needs cuBLAS (libcublas) from a CUDA toolkit no newer than \
                 the driver; fix the installation, or run with --engine dfdx"
            ))
        })?;
        let functions = Functions::load(&dev)?;
        Ok(Self {
            replays: Replays::new(compute.graphs.is_on()),
            recording: None,
            convs: HashMap::new(),
            cudnn,
            cublas,
            precision,
            layout: compute.layout,
            measure,
            functions,
            filters: None,
            workspace: None,
            partials: None,
            labels: None,
            sgd_table: launches::SgdTable::default(),
            mean_table: None,
            uploads: Uploads::new(&dev)?,
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
            // Tensor cores for bf16 operands (they are bf16 already: no down-conversion).
            Precision::Bf16 => cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        }
    }

    /// How activation buffers hold their values.
    fn form(&self) -> Form {
        Form {
            layout: self.layout,
            bf16: self.precision.bf16_activations(),
        }
    }

    /// Makes the device's context current on this thread (cuDNN calls need it; cudarc's own
    /// calls bind it themselves).
    fn bind(&self) -> KernelResult {
        self.dev
            .bind_to_thread()
            .map_err(|e| check::driver("cuCtxSetCurrent", e))
    }

    /// The descriptors of `shape` with `pass`'s algorithm chosen and the workspace large
    /// enough for it.
    fn prepare(&mut self, shape: &ConvShape, pass: Pass) -> KernelResult<(Descriptors, Chosen)> {
        let (math, form) = (self.base_math(), self.form());
        let plan = match self.convs.entry(*shape) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(ConvPlan::new(shape, math, form)?)
            }
        };
        let (descriptors, chosen) = plan.pass(pass);
        let chosen = match chosen {
            Some(chosen) => chosen,
            // SAFETY: the handle is live and the context current (`bind` came first).
            None => unsafe { plan.choose(self.cudnn.raw, pass, self.precision, self.measure) }
                .map_err(|e| match (e, form.bf16, self.layout) {
                    // cuDNN's bf16 tensor-core convolutions are mostly NHWC ones.
                    (KernelError::Failed { call, status }, true, _) => KernelError::Failed {
                        call,
                        status: format!(
                            "{status}; with bf16 activations in {}: try compute.layout = \
                             \"{}\" (--layout), or compute.precision = \"tf32\" (--precision tf32)",
                            format!("{:?}", self.layout).to_lowercase(),
                            match self.layout {
                                Layout::Nchw => "nhwc",
                                Layout::Nhwc => "nchw",
                            }
                        ),
                    },
                    // cuDNN offers fewer algorithms for NHWC, none at all for some precisions.
                    (KernelError::Failed { call, status }, false, Layout::Nhwc) => {
                        KernelError::Failed {
                            call,
                            status: format!(
                                "{status}; with channels-last activations: set compute.layout = \
                                 \"nchw\" (--layout nchw)"
                            ),
                        }
                    }
                    (e, ..) => e,
                })?,
        };
        let have = self.workspace.as_ref().map_or(0, |w| w.len());
        if chosen.workspace > have {
            // Dropping the old one frees it in stream order, after the work that used it.
            self.workspace = None;
            let grown = self.dev.alloc_zeros::<u8>(chosen.workspace).map_err(|e| {
                check::allocation(&self.dev, pass.api().workspace_call, chosen.workspace, e)
            })?;
            self.workspace = Some(grown);
        }
        Ok((descriptors, chosen))
    }

    /// The workspace to pass cuDNN: null and 0 when the algorithm needs none.
    fn workspace(&mut self, needed: usize) -> Workspace {
        match self.workspace.as_mut() {
            Some(ws) if needed > 0 => Workspace {
                ptr: *ws.device_ptr_mut() as *mut c_void,
                bytes: ws.len(),
            },
            _ => Workspace {
                ptr: std::ptr::null_mut(),
                bytes: 0,
            },
        }
    }

    /// `out = pass(a, b)`, the operands in cuDNN's order for the pass (see `algorithms`), all
    /// three (filters too) in the form's layout and element type.
    fn convolve(
        &mut self,
        pass: Pass,
        shape: &ConvShape,
        a: &Buf<Cuda>,
        b: &Buf<Cuda>,
        out: &mut Buf<Cuda>,
    ) -> KernelResult {
        let api = pass.api();
        buffers::conv_geometry(api.method, shape)?;
        let [(a_name, a_kind), (b_name, b_kind), (out_name, out_kind)] = api.operands;
        let form = self.form();
        at_least(api.method, a_name, form.values(a), a_kind.len(shape))?;
        at_least(api.method, b_name, form.values(b), b_kind.len(shape))?;
        at_least(api.method, out_name, form.values(out), out_kind.len(shape))?;
        self.bind()?;
        let (descriptors, chosen) = self.prepare(shape, pass)?;
        let workspace = self.workspace(chosen.workspace);
        let operands = Operands {
            a: device_ptr(a),
            b: device_ptr(b),
            out: device_ptr_mut(out),
        };
        // SAFETY: the descriptors describe `shape` and the buffers are at least that large
        // (checked above); the workspace is at least what the algorithm asked for.
        let status = unsafe {
            (api.run.f)(
                self.cudnn.raw,
                &descriptors,
                chosen.algo,
                workspace,
                operands,
            )
        };
        check::cudnn(api.run.name, status).map_err(|e| match e {
            KernelError::Failed { call, status } => KernelError::Failed {
                call,
                status: format!("{status} (convolution {} of {shape:?})", api.name),
            },
            other => other,
        })
    }
}

impl CudaKernels {
    /// The filter scratch buffer, taken out of `self` (put it back with
    /// `self.filters = Some(..)`) and large enough for `shape`'s filters in the form.
    fn take_filters(&mut self, shape: &ConvShape) -> KernelResult<Buf<Cuda>> {
        let slots = self.form().slots(shape.filter_len());
        match self.filters.take() {
            Some(buf) if buf.len() >= slots => Ok(buf),
            // Dropping a shorter one frees it in stream order, after the work that used it.
            _ => self.alloc(slots),
        }
    }

    /// `pass` with the filters converted from the parameters' f32 OIHW into the form (OHWI in
    /// NHWC, bf16 in bf16) for the two passes that read them, and the filter gradient written
    /// in the form and converted back to f32 OIHW.
    fn convolve_converted(
        &mut self,
        pass: Pass,
        shape: &ConvShape,
        a: &Buf<Cuda>,
        b: &Buf<Cuda>,
        out: &mut Buf<Cuda>,
    ) -> KernelResult {
        // Filters as `(O, I, K²)` planes: OIHW ↔ OHWI is NCHW ↔ NHWC with a filter per image.
        let filters = Planes {
            batch: shape.out_channels,
            channels: shape.in_channels,
            pixels: shape.kernel * shape.kernel,
        };
        let form = self.form();
        let mut converted = self.take_filters(shape)?;
        let functions = &self.functions;
        let result = match pass {
            Pass::Forward => launches::filters_in(functions, form, &filters, b, &mut converted)
                .and_then(|()| self.convolve(pass, shape, a, &converted, out)),
            Pass::BackwardData => {
                launches::filters_in(functions, form, &filters, a, &mut converted)
                    .and_then(|()| self.convolve(pass, shape, &converted, b, out))
            }
            Pass::BackwardFilter => {
                self.convolve(pass, shape, a, b, &mut converted)
                    .and_then(|()| {
                        launches::filters_out(&self.functions, form, &filters, &converted, out)
                    })
            }
        };
        self.filters = Some(converted);
        result
    }

    /// `pass` in the kernels' form (operands as `convolve` takes them).
    fn convolve_in_form(
        &mut self,
        pass: Pass,
        shape: &ConvShape,
        a: &Buf<Cuda>,
        b: &Buf<Cuda>,
        out: &mut Buf<Cuda>,
    ) -> KernelResult {
        let form = self.form();
        if form.layout == Layout::Nchw && !form.bf16 {
            self.convolve(pass, shape, a, b, out)
        } else {
            self.convolve_converted(pass, shape, a, b, out)
        }
    }
}

/// A dfdx allocation error, without formatting a `DriverError` through its panicking
/// `Debug` (see `check::driver_status`).
fn dfdx_error(error: &CudaError) -> String {
    match error {
        CudaError::Driver(e) => check::driver_status(e),
        other => format!("{other:?}"),
    }
}

impl Kernels<Cuda> for CudaKernels {
    fn layout(&self) -> Layout {
        self.layout
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn algorithms(&self) -> Vec<String> {
        let mut shapes: Vec<&ConvShape> = self.convs.keys().collect();
        shapes.sort_by_key(|s| (s.batch, s.in_channels, s.size, s.out_channels, s.kernel));
        shapes
            .into_iter()
            .map(|s| {
                format!(
                    "{}×{}×{}² → {} ({}×{}, stride {}, pad {}): {}",
                    s.batch,
                    s.in_channels,
                    s.size,
                    s.out_channels,
                    s.kernel,
                    s.kernel,
                    s.stride,
                    s.pad,
                    self.convs[s].describe()
                )
            })
            .collect()
    }

    fn alloc(&mut self, len: usize) -> KernelResult<Buf<Cuda>> {
        const CALL: &str = "cuMemAlloc (alloc)";
        let bytes = len.saturating_mul(std::mem::size_of::<f32>());
        if bytes == usize::MAX {
            // cudarc would overflow computing the size.
            return Err(KernelError::OutOfMemory {
                device: check::DEVICE,
                call: CALL,
                bytes,
                memory: self.memory(),
            });
        }
        self.dfdx.try_alloc_len(len).map_err(|e| match e {
            CudaError::Driver(e) => check::allocation(&self.dev, CALL, bytes, e),
            other => check::failed(CALL, dfdx_error(&other)),
        })
    }

    fn upload(&mut self, host: &[f32]) -> KernelResult<Buf<Cuda>> {
        let mut buf = self.alloc(host.len())?;
        if host.is_empty() {
            return Ok(buf);
        }
        buffers::exactly("upload", "the new buffer", buf.len(), host.len())?;
        self.dev
            .htod_sync_copy_into(host, &mut buf)
            .map_err(|e| check::driver("cuMemcpyHtoD (upload)", e))?;
        Ok(buf)
    }

    fn download(&mut self, buf: &Buf<Cuda>) -> KernelResult<Vec<f32>> {
        if buf.len() == 0 {
            return Ok(Vec::new());
        }
        self.dev
            .dtoh_sync_copy(buf)
            .map_err(|e| check::driver("cuMemcpyDtoH (download)", e))
    }

    fn alloc_activation(&mut self, len: usize) -> KernelResult<Buf<Cuda>> {
        self.alloc(self.form().slots(len))
    }

    fn upload_activation(&mut self, host: &[f32]) -> KernelResult<Buf<Cuda>> {
        if !self.form().bf16 {
            return self.upload(host);
        }
        self.upload(&bf16::pack(host))
    }

    fn download_activation(&mut self, buf: &Buf<Cuda>, len: usize) -> KernelResult<Vec<f32>> {
        if !self.form().bf16 {
            return self.download_prefix(buf, len);
        }
        at_least(
            "download_activation",
            "buffer",
            self.form().values(buf),
            len,
        )?;
        let slots = self.download_prefix(buf, len.div_ceil(2))?;
        Ok(bf16::unpack(&slots, len))
    }

    fn synchronize(&mut self) -> KernelResult {
        self.dev
            .synchronize()
            .map_err(|e| check::driver("cuStreamSynchronize (synchronize)", e))
    }

    fn memory(&mut self) -> Option<Memory> {
        check::memory(&self.dev)
    }

    fn set_mean_table(&mut self, table: &[f32], row_len: usize) -> KernelResult {
        // Freed before the new one is allocated, so that the two never take GPU memory together.
        self.mean_table = None;
        self.mean_table = Some(DeviceMeanTable::upload(&self.dev, table, row_len)?);
        Ok(())
    }

    fn normalize(&mut self, input: &InputBatch, x: &mut Buf<Cuda>) -> KernelResult {
        launches::normalize(
            &self.functions,
            self.form(),
            &mut self.uploads,
            self.mean_table.as_ref(),
            input,
            x,
        )
    }

    fn conv_forward(
        &mut self,
        shape: &ConvShape,
        x: &Buf<Cuda>,
        w: &Buf<Cuda>,
        y: &mut Buf<Cuda>,
    ) -> KernelResult {
        self.convolve_in_form(Pass::Forward, shape, x, w, y)
    }

    fn conv_backward_data(
        &mut self,
        shape: &ConvShape,
        dy: &Buf<Cuda>,
        w: &Buf<Cuda>,
        dx: &mut Buf<Cuda>,
    ) -> KernelResult {
        // cuDNN's order: filters first, then the output gradient.
        self.convolve_in_form(Pass::BackwardData, shape, w, dy, dx)
    }

    fn conv_backward_filter(
        &mut self,
        shape: &ConvShape,
        x: &Buf<Cuda>,
        dy: &Buf<Cuda>,
        dw: &mut Buf<Cuda>,
    ) -> KernelResult {
        self.convolve_in_form(Pass::BackwardFilter, shape, x, dy, dw)
    }

    fn bias_relu(&mut self, planes: &Planes, y: &mut Buf<Cuda>, bias: &Buf<Cuda>) -> KernelResult {
        launches::bias_relu(&self.functions, self.form(), planes, y, bias)
    }

    fn relu_bias_backward(
        &mut self,
        planes: &Planes,
        y: &Buf<Cuda>,
        dy: &mut Buf<Cuda>,
        db: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::relu_bias_backward(
            &self.functions,
            self.form(),
            &self.dev,
            &mut self.partials,
            planes,
            y,
            dy,
            db,
        )
    }

    fn lrn_forward(
        &mut self,
        planes: &Planes,
        lrn: &LrnParams,
        x: &Buf<Cuda>,
        y: &mut Buf<Cuda>,
        d: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::lrn_forward(&self.functions, self.form(), planes, lrn, x, y, d)
    }

    fn lrn_backward(
        &mut self,
        planes: &Planes,
        lrn: &LrnParams,
        x: &Buf<Cuda>,
        d: &Buf<Cuda>,
        dy: &Buf<Cuda>,
        dx: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::lrn_backward(&self.functions, self.form(), planes, lrn, x, d, dy, dx)
    }

    fn pool_forward(
        &mut self,
        shape: &PoolShape,
        x: &Buf<Cuda>,
        y: &mut Buf<Cuda>,
        argmax: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::pool_forward(&self.functions, self.form(), shape, x, y, argmax)
    }

    fn pool_backward(
        &mut self,
        shape: &PoolShape,
        argmax: &Buf<Cuda>,
        dy: &Buf<Cuda>,
        dx: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::pool_backward(&self.functions, self.form(), shape, argmax, dy, dx)
    }

    fn flatten_channels_last(
        &mut self,
        planes: &Planes,
        x: &Buf<Cuda>,
        y: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::flatten_channels_last(&self.functions, self.form(), planes, x, y)
    }

    fn unflatten_channels_last(
        &mut self,
        planes: &Planes,
        y: &Buf<Cuda>,
        x: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::unflatten_channels_last(&self.functions, self.form(), planes, y, x)
    }

    fn matmul(
        &mut self,
        mm: &MatMul,
        a: &Buf<Cuda>,
        b: &Buf<Cuda>,
        c: &mut Buf<Cuda>,
    ) -> KernelResult {
        self.bind()?;
        cublas::matmul(&self.cublas, mm, a, b, c)
    }

    fn bias_add(
        &mut self,
        rows: usize,
        columns: usize,
        y: &mut Buf<Cuda>,
        bias: &Buf<Cuda>,
    ) -> KernelResult {
        launches::bias_add(&self.functions, rows, columns, y, bias)
    }

    fn bias_backward(
        &mut self,
        rows: usize,
        columns: usize,
        dy: &Buf<Cuda>,
        db: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::bias_backward(&self.functions, rows, columns, dy, db)
    }

    fn multiply(
        &mut self,
        len: usize,
        x: &Buf<Cuda>,
        m: &Buf<Cuda>,
        y: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::multiply(&self.functions, len, x, m, y)
    }

    fn softmax_cross_entropy(
        &mut self,
        rows: usize,
        mean_over: usize,
        classes: usize,
        logits: &Buf<Cuda>,
        labels: &[u32],
        row_stats: &mut Buf<Cuda>,
        dlogits: &mut Buf<Cuda>,
    ) -> KernelResult {
        launches::softmax_cross_entropy(
            &self.functions,
            &self.dev,
            &mut self.labels,
            rows,
            mean_over,
            classes,
            logits,
            labels,
            row_stats,
            dlogits,
        )
    }

    fn dropout_mask(&mut self, mask: &DropoutMask, out: &mut Buf<Cuda>) -> KernelResult {
        launches::dropout_mask(&self.functions, mask, out)
    }

    fn sgd(
        &mut self,
        step: &SgdStep,
        w: &mut Buf<Cuda>,
        v: &mut Buf<Cuda>,
        g: &Buf<Cuda>,
    ) -> KernelResult {
        launches::sgd(&self.functions, step, w, v, g)
    }

    fn sgd_all(&mut self, step: &SgdStep, tensors: &mut [SgdTensor<'_, Cuda>]) -> KernelResult {
        let table = &mut self.sgd_table;
        launches::sgd_all(&self.functions, &self.dev, table, step, tensors)
    }

    fn replayable(&mut self, key: ReplayKey, work: Work<'_, Self>) -> KernelResult {
        replay::run(self, key, work)
    }

    fn replay_stats(&self) -> Option<ReplayStats> {
        self.replays.stats()
    }
}

impl CudaKernels {
    /// Sends cuDNN's, cuBLAS's and the NVRTC kernels' work to `stream` (`None`: the device's):
    /// all three are set even when one fails (the first failure is returned).
    fn route(&mut self, stream: Option<&Rc<CudaStream>>) -> KernelResult {
        let raw = stream.map_or(*self.dev.cu_stream(), |s| s.stream);
        self.functions.launch_on(stream.cloned());
        let cudnn = self.cudnn.set_stream(raw);
        let cublas = self.cublas.set_stream(raw, stream.is_some());
        cudnn.and(cublas)
    }
}

/// Passes recorded as CUDA graphs. The convolution workspace, the converted filters and the
/// bias gradient's partial sums are the scratch buffers a pass uses without its caller
/// knowing; cuBLAS's workspace is fixed (`cublas::Handle`).
impl replay::Recorder for CudaKernels {
    type Recording = graphs::Graph;
    const RECORDING_RUNS_WORK: bool = false;

    fn replays(&mut self) -> &mut Replays<graphs::Graph> {
        &mut self.replays
    }

    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        self.workspace
            .as_ref()
            .map(|b| (*b.device_ptr(), b.len()))
            .hash(&mut hash);
        self.filters
            .as_ref()
            .map(|b| (*b.device_ptr(), b.len()))
            .hash(&mut hash);
        self.partials
            .as_ref()
            .map(|b| (*b.device_ptr(), b.len()))
            .hash(&mut hash);
        hash.finish()
    }

    fn begin(&mut self) -> KernelResult {
        self.bind()?;
        let stream = match &self.recording {
            Some(stream) => stream.clone(),
            None => {
                let stream = self
                    .dev
                    .fork_default_stream()
                    .map_err(|e| check::driver("cuStreamCreate (recording)", e))?;
                self.recording.insert(Rc::new(stream)).clone()
            }
        };
        let begun = self
            .route(Some(&stream))
            .and_then(|()| graphs::begin(stream.stream));
        begun.inspect_err(|_| {
            // Back to the device's stream; the error at hand is the one to report.
            let _ = self.route(None);
        })
    }

    fn end(&mut self) -> KernelResult<graphs::Graph> {
        let Some(stream) = self.recording.clone() else {
            return Err(check::failed(
                "cuStreamEndCapture",
                "nothing is recording".into(),
            ));
        };
        let graph = graphs::end(&self.dev, stream.stream);
        self.route(None)?;
        graph
    }

    fn replay(&mut self, graph: &graphs::Graph, _: Work<'_, Self>) -> KernelResult {
        self.bind()?;
        graphs::launch(graph, *self.dev.cu_stream())
    }
}
