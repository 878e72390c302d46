//! The fast path's kernels as plain loops on the CPU: the reference the CUDA kernels are
//! tested against, and what lets the CPU tests run everything around the kernels (parameter
//! ownership, SGD, checkpoints, resume).
//!
//! Written for clarity first (the arithmetic is `loops`, shared with the check's f64 replay):
//! convolutions as im2col and one matrix product per image, fully connected layers as one
//! matrix product per batch. `loops` works on NCHW; in the NHWC layout the kernels that are
//! not elementwise transpose their operands to NCHW and their outputs back, so both layouts
//! compute exactly the same values (the reference the GPU's own NHWC kernels are held to).
//!
//! In `Precision::Bf16` they emulate a GPU's bf16 storage: every value a kernel writes into
//! an activation buffer is rounded to bf16 (`bf16::round`), and convolutions and matrix
//! products read their f32 operands (weights, the fully connected part's inputs) rounded as the
//! GPU's conversions round them; the arithmetic stays f32, as the GPU's accumulation does.
//! `tf32` computes as `strict` here.
//!
//! Faults can be injected (`ALEXNET_HOST_FAULT`, see `Faults`), so that the tests can show
//! what a run does when a GPU kernel fails or the GPU runs out of memory.
//!
//! Replaying (`compute.graphs = "on"`, see `replay`) cannot skip work on the CPU, so the host
//! kernels check it instead: a recording is the trace of a stretch's calls — each with its
//! shapes, parameters and buffers' addresses — and every replay runs the stretch again and
//! fails unless it makes exactly the recorded calls; a call that a GPU recording could not
//! hold (an upload, a download, `normalize`, a dropout mask, the loss, SGD) fails inside one.

use dfdx::prelude::{Cpu, Storage};
use rayon::prelude::*;

use std::borrow::Cow;

use super::loops::{self, to_nchw};
use super::replay::{self, ReplayKey, ReplayStats, Replays, Work};
use super::{
    bf16, Buf, ConvShape, DropoutMask, InputBatch, KernelError, KernelResult, Kernels,
    LayerGradients, Layout, LrnParams, MatMul, Memory, Planes, PoolShape, Precision, SgdStep,
    MAX_POOL_PLANE,
};
use crate::dist::Control;
use crate::pixels;

/// Fails unless there is one label per row, each below `classes` (an index past the logits
/// would be read out of bounds), and the mean is over at least the rows.
pub(crate) fn check_labels(
    rows: usize,
    mean_over: usize,
    classes: usize,
    labels: &[u32],
) -> KernelResult {
    let failed = |status: String| KernelError::Failed {
        call: "softmax_cross_entropy",
        status,
    };
    if labels.len() != rows {
        return Err(failed(format!("{} labels for {rows} rows", labels.len())));
    }
    if mean_over < rows {
        return Err(failed(format!("a mean over {mean_over} of {rows} rows")));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(failed(format!("label {bad} outside the {classes} classes")));
    }
    Ok(())
}

/// CPU ranks sum their gradients over the control plane, in rank order (deterministic, and
/// plenty for the CPU's speed).
pub struct HostSum;

impl super::GradientSum<Cpu> for HostSum {
    fn layer(&mut self, control: &mut Control, grads: LayerGradients<'_, Cpu>) -> KernelResult {
        for (g, len) in grads {
            control.sum_f32(&mut g[..len], "summing gradients")?;
        }
        Ok(())
    }

    fn finish(&mut self) -> KernelResult {
        Ok(())
    }
}

/// The environment variable that injects faults into the host kernels.
pub const FAULT_VARIABLE: &str = "ALEXNET_HOST_FAULT";

pub struct HostKernels {
    dev: Cpu,
    layout: Layout,
    precision: Precision,
    mean_table: Vec<f32>,
    row_len: usize,
    faults: Faults,
    replays: Replays<Vec<String>>,
    /// The calls of the stretch being recorded or replayed.
    trace: Option<Vec<String>>,
}

/// Injected faults, from `ALEXNET_HOST_FAULT`: comma-separated `CALL@N` (the `N`th call of
/// kernel `CALL`, e.g. `conv_backward_filter@3`, fails), `flip=sgd@N` (the `N`th SGD update
/// flips the lowest bit of its first weight and reports nothing, as faulty memory would) and
/// `memory=BYTES` (the kernels act as a device with that much free memory: `memory()` reports
/// it, and a larger allocation fails as out of memory).
#[derive(Debug, Default)]
struct Faults {
    fail: Vec<(String, u64)>,
    calls: std::collections::HashMap<&'static str, u64>,
    flip: Vec<u64>,
    sgd_calls: u64,
    memory: Option<usize>,
}

impl Faults {
    fn parse(text: &str) -> Result<Self, String> {
        let mut faults = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(n) = part.strip_prefix("flip=sgd@") {
                let n = n.parse().map_err(|_| format!("{part:?}: not flip=sgd@N"))?;
                faults.flip.push(n);
            } else if let Some(bytes) = part.strip_prefix("memory=") {
                let bytes = bytes
                    .parse()
                    .map_err(|_| format!("{part:?}: not a byte count"))?;
                faults.memory = Some(bytes);
            } else if let Some((call, n)) = part.split_once('@') {
                let n = n.parse().map_err(|_| format!("{part:?}: not CALL@N"))?;
                faults.fail.push((call.to_string(), n));
            } else {
                return Err(format!(
                    "{part:?}: expected CALL@N, flip=sgd@N or memory=BYTES"
                ));
            }
        }
        Ok(faults)
    }

    /// Counts a call of `call`, failing it when asked to.
    fn enter(&mut self, call: &'static str) -> KernelResult {
        if self.fail.is_empty() {
            return Ok(());
        }
        let n = self.calls.entry(call).or_default();
        *n += 1;
        if self.fail.iter().any(|(c, at)| c == call && at == n) {
            return Err(KernelError::Failed {
                call,
                status: format!("fault injected by {FAULT_VARIABLE} (call {n})"),
            });
        }
        Ok(())
    }

    /// Counts an SGD update; whether it is to flip a bit.
    fn flips(&mut self) -> bool {
        if self.flip.is_empty() {
            return false;
        }
        self.sgd_calls += 1;
        self.flip.contains(&self.sgd_calls)
    }

    fn allocate(&self, call: &'static str, len: usize) -> KernelResult {
        let bytes = len * std::mem::size_of::<f32>();
        match self.memory {
            Some(limit) if bytes > limit => Err(KernelError::OutOfMemory {
                device: "the CPU",
                call,
                bytes,
                memory: self.memory(),
            }),
            _ => Ok(()),
        }
    }

    fn memory(&self) -> Option<Memory> {
        self.memory.map(|limit| Memory {
            free: limit,
            total: limit,
        })
    }
}

impl HostKernels {
    pub fn new(dev: &Cpu, layout: Layout, precision: Precision) -> KernelResult<Self> {
        let faults = match std::env::var(FAULT_VARIABLE) {
            Ok(text) => Faults::parse(&text)
                .map_err(|e| KernelError::Setup(format!("{FAULT_VARIABLE}: {e}")))?,
            Err(_) => Faults::default(),
        };
        Ok(Self {
            dev: dev.clone(),
            layout,
            precision,
            mean_table: Vec::new(),
            row_len: 0,
            faults,
            replays: Replays::new(false),
            trace: None,
        })
    }

    /// With stretches recorded and their replays checked (`compute.graphs = "on"`).
    pub fn replaying(mut self, on: bool) -> Self {
        self.replays = Replays::new(on);
        self
    }

    /// Every kernel's first step: the injected faults, and inside a stretch being recorded or
    /// replayed the call's trace — `args`, its shapes, parameters and buffers — or, for a
    /// call no recording can hold (`args` none), an error.
    fn enter(&mut self, call: &'static str, args: Option<&dyn std::fmt::Debug>) -> KernelResult {
        self.faults.enter(call)?;
        match (&mut self.trace, args) {
            (None, _) => Ok(()),
            (Some(trace), Some(args)) => {
                trace.push(format!("{call}{args:?}"));
                Ok(())
            }
            (Some(_), None) => Err(KernelError::Failed {
                call,
                status: "called inside a stretch recorded for replay (compute.graphs): only \
                         launches on buffers that stay put belong there; per-step values, \
                         uploads and downloads go before or after it"
                    .into(),
            }),
        }
    }
}

/// A buffer's address, as a trace shows it.
fn at(buf: &Buf<Cpu>) -> *const f32 {
    buf.as_ptr()
}

impl replay::Recorder for HostKernels {
    type Recording = Vec<String>;
    const RECORDING_RUNS_WORK: bool = true;

    fn replays(&mut self) -> &mut Replays<Vec<String>> {
        &mut self.replays
    }

    fn fingerprint(&self) -> u64 {
        // No scratch buffers of their own.
        0
    }

    fn begin(&mut self) -> KernelResult {
        self.trace = Some(Vec::new());
        Ok(())
    }

    fn end(&mut self) -> KernelResult<Vec<String>> {
        Ok(self.trace.take().unwrap_or_default())
    }

    fn replay(&mut self, recording: &Vec<String>, work: Work<'_, Self>) -> KernelResult {
        self.trace = Some(Vec::new());
        let worked = work(self);
        let trace = self.trace.take().unwrap_or_default();
        worked?;
        let differs =
            (0..recording.len().max(trace.len())).find(|&i| recording.get(i) != trace.get(i));
        match differs {
            None => Ok(()),
            Some(i) => {
                let call =
                    |t: &Vec<String>| t.get(i).map_or("nothing".into(), |c| format!("`{c}`"));
                Err(KernelError::Failed {
                    call: "replay",
                    status: format!(
                        "call {i} of a replayed stretch was {} when recorded and is {} now: a \
                         value that changes from step to step is inside it, so a CUDA graph \
                         would replay a stale one (a bug; compute.graphs = \"off\", or \
                         --graphs off, runs without replaying)",
                        call(recording),
                        call(&trace)
                    ),
                })
            }
        }
    }
}

impl HostKernels {
    /// Values just written into an activation buffer, stored as the precision stores them.
    fn store(&self, activations: &mut [f32]) {
        if self.precision.bf16_activations() {
            bf16::round_all(activations);
        }
    }

    /// An f32 operand of a convolution or matrix product as the precision feeds it in.
    fn operand<'a>(&self, values: &'a [f32]) -> Cow<'a, [f32]> {
        if self.precision.bf16_activations() {
            Cow::Owned(values.iter().map(|&v| bf16::round(v)).collect())
        } else {
            Cow::Borrowed(values)
        }
    }
}

/// Total and available memory from `/proc/meminfo` (Linux), in bytes.
fn system_memory() -> Option<Memory> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<usize> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(Memory {
        free: field("MemAvailable:")?,
        total: field("MemTotal:")?,
    })
}

/// An NCHW result of `p` written into an NHWC buffer.
fn to_nhwc(p: &Planes, nchw: &[f32], nhwc: &mut [f32]) {
    loops::flatten_channels_last(p, nchw, nhwc);
}

/// `loops::relu_bias_backward` on NHWC values, each channel's sum added up in its order: per
/// image over the pixels, then the images' sums in order (so the two layouts agree exactly).
fn relu_bias_backward_nhwc(p: &Planes, y: &[f32], dy: &mut [f32], db: &mut [f32]) {
    for (g, &v) in dy[..p.len()].iter_mut().zip(y) {
        if v <= 0.0 {
            *g = 0.0;
        }
    }
    let channels = p.channels;
    db[..channels].fill(0.0);
    let mut image_sums = vec![0.0f32; channels];
    for image in dy[..p.len()].chunks((channels * p.pixels).max(1)) {
        image_sums.fill(0.0);
        for row in image.chunks(channels.max(1)) {
            for (sum, &g) in image_sums.iter_mut().zip(row) {
                *sum += g;
            }
        }
        for (d, &sum) in db.iter_mut().zip(&image_sums) {
            *d += sum;
        }
    }
}

impl Kernels<Cpu> for HostKernels {
    fn layout(&self) -> Layout {
        self.layout
    }

    fn replayable(&mut self, key: ReplayKey, work: Work<'_, Self>) -> KernelResult {
        replay::run(self, key, work)
    }

    fn replay_stats(&self) -> Option<ReplayStats> {
        self.replays.stats()
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn alloc(&mut self, len: usize) -> KernelResult<Buf<Cpu>> {
        self.enter("alloc", None)?;
        self.faults.allocate("alloc", len)?;
        self.dev
            .try_alloc_len(len)
            .map_err(|_| KernelError::OutOfMemory {
                device: "the CPU",
                call: "alloc",
                bytes: len * std::mem::size_of::<f32>(),
                memory: system_memory(),
            })
    }

    fn upload(&mut self, host: &[f32]) -> KernelResult<Buf<Cpu>> {
        self.enter("upload", None)?;
        let mut buf = self.alloc(host.len())?;
        buf.copy_from_slice(host);
        Ok(buf)
    }

    fn download(&mut self, buf: &Buf<Cpu>) -> KernelResult<Vec<f32>> {
        self.enter("download", None)?;
        Ok(buf.to_vec())
    }

    fn alloc_activation(&mut self, len: usize) -> KernelResult<Buf<Cpu>> {
        self.alloc(len)
    }

    fn upload_activation(&mut self, host: &[f32]) -> KernelResult<Buf<Cpu>> {
        let mut buf = self.upload(host)?;
        self.store(&mut buf);
        Ok(buf)
    }

    fn download_activation(&mut self, buf: &Buf<Cpu>, len: usize) -> KernelResult<Vec<f32>> {
        self.download_prefix(buf, len)
    }

    fn synchronize(&mut self) -> KernelResult {
        self.enter("synchronize", None)
    }

    fn memory(&mut self) -> Option<Memory> {
        self.faults.memory().or_else(system_memory)
    }

    fn set_mean_table(&mut self, table: &[f32], row_len: usize) -> KernelResult {
        self.enter("set_mean_table", None)?;
        self.mean_table = table.to_vec();
        self.row_len = row_len;
        Ok(())
    }

    fn normalize(&mut self, input: &InputBatch, x: &mut Buf<Cpu>) -> KernelResult {
        self.enter("normalize", None)?;
        let (crop, table, row_len) = (input.crop, &self.mean_table, self.row_len);
        let layout = self.layout;
        let plane = crop * crop;
        x.par_chunks_mut(3 * plane)
            .enumerate()
            .for_each(|(b, image)| {
                for y in 0..crop {
                    let row = input.mean_rows[b * crop + y] as usize * row_len;
                    for xx in 0..crop {
                        for c in 0..3 {
                            let pixel = input.pixels[((b * crop + y) * crop + xx) * 3 + c];
                            let at = match layout {
                                Layout::Nchw => c * plane + y * crop + xx,
                                Layout::Nhwc => (y * crop + xx) * 3 + c,
                            };
                            image[at] = pixels::normalize(
                                pixel,
                                table[row + xx * 3 + c],
                                input.lighting[b * 3 + c],
                                input.scale[c],
                            );
                        }
                    }
                }
            });
        self.store(&mut x[..input.batch * 3 * plane]);
        Ok(())
    }

    fn conv_forward(
        &mut self,
        s: &ConvShape,
        x: &Buf<Cpu>,
        w: &Buf<Cpu>,
        y: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("conv_forward", Some(&(s, at(x), at(w), at(y))))?;
        let w = self.operand(&w[..s.filter_len()]);
        match self.layout {
            Layout::Nchw => loops::conv_forward(s, x, &w, y),
            Layout::Nhwc => {
                let mut out = vec![0.0; s.output_len()];
                loops::conv_forward(s, &to_nchw(&s.input_planes(), x), &w, &mut out);
                to_nhwc(&s.output_planes(), &out, y);
            }
        }
        self.store(&mut y[..s.output_len()]);
        Ok(())
    }

    fn conv_backward_data(
        &mut self,
        s: &ConvShape,
        dy: &Buf<Cpu>,
        w: &Buf<Cpu>,
        dx: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("conv_backward_data", Some(&(s, at(dy), at(w), at(dx))))?;
        let w = self.operand(&w[..s.filter_len()]);
        match self.layout {
            Layout::Nchw => loops::conv_backward_data(s, dy, &w, dx),
            Layout::Nhwc => {
                let mut out = vec![0.0; s.input_len()];
                loops::conv_backward_data(s, &to_nchw(&s.output_planes(), dy), &w, &mut out);
                to_nhwc(&s.input_planes(), &out, dx);
            }
        }
        self.store(&mut dx[..s.input_len()]);
        Ok(())
    }

    fn conv_backward_filter(
        &mut self,
        s: &ConvShape,
        x: &Buf<Cpu>,
        dy: &Buf<Cpu>,
        dw: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("conv_backward_filter", Some(&(s, at(x), at(dy), at(dw))))?;
        match self.layout {
            Layout::Nchw => loops::conv_backward_filter(s, x, dy, dw),
            Layout::Nhwc => {
                let x = to_nchw(&s.input_planes(), x);
                loops::conv_backward_filter(s, &x, &to_nchw(&s.output_planes(), dy), dw);
            }
        }
        // A bf16 convolution writes its filter gradient in bf16.
        self.store(&mut dw[..s.filter_len()]);
        Ok(())
    }

    fn bias_relu(&mut self, p: &Planes, y: &mut Buf<Cpu>, bias: &Buf<Cpu>) -> KernelResult {
        self.enter("bias_relu", Some(&(p, at(y), at(bias))))?;
        match self.layout {
            Layout::Nchw => loops::bias_relu(p, y, bias),
            // Elementwise: the same arithmetic, channels innermost.
            Layout::Nhwc => {
                for row in y[..p.len()].chunks_mut(p.channels.max(1)) {
                    for (v, &b) in row.iter_mut().zip(bias.iter()) {
                        *v = (*v + b).max(0.0);
                    }
                }
            }
        }
        self.store(&mut y[..p.len()]);
        Ok(())
    }

    fn relu_bias_backward(
        &mut self,
        p: &Planes,
        y: &Buf<Cpu>,
        dy: &mut Buf<Cpu>,
        db: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("relu_bias_backward", Some(&(p, at(y), at(dy), at(db))))?;
        match self.layout {
            Layout::Nchw => loops::relu_bias_backward(p, y, dy, db),
            Layout::Nhwc => relu_bias_backward_nhwc(p, y, dy, db),
        }
        Ok(())
    }

    fn lrn_forward(
        &mut self,
        p: &Planes,
        lrn: &LrnParams,
        x: &Buf<Cpu>,
        y: &mut Buf<Cpu>,
        d: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("lrn_forward", Some(&(p, lrn, at(x), at(y), at(d))))?;
        match self.layout {
            Layout::Nchw => loops::lrn_forward(p, lrn, x, y, d),
            Layout::Nhwc => {
                let (mut out, mut denominators) = (vec![0.0; p.len()], vec![0.0; p.len()]);
                loops::lrn_forward(p, lrn, &to_nchw(p, x), &mut out, &mut denominators);
                to_nhwc(p, &out, y);
                to_nhwc(p, &denominators, d);
            }
        }
        self.store(&mut y[..p.len()]);
        Ok(())
    }

    fn lrn_backward(
        &mut self,
        p: &Planes,
        lrn: &LrnParams,
        x: &Buf<Cpu>,
        d: &Buf<Cpu>,
        dy: &Buf<Cpu>,
        dx: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter(
            "lrn_backward",
            Some(&(p, lrn, at(x), at(d), at(dy), at(dx))),
        )?;
        match self.layout {
            Layout::Nchw => loops::lrn_backward(p, lrn, x, d, dy, dx),
            Layout::Nhwc => {
                let (x, d, dy) = (to_nchw(p, x), to_nchw(p, d), to_nchw(p, dy));
                let mut out = vec![0.0; p.len()];
                loops::lrn_backward(p, lrn, &x, &d, &dy, &mut out);
                to_nhwc(p, &out, dx);
            }
        }
        self.store(&mut dx[..p.len()]);
        Ok(())
    }

    fn pool_forward(
        &mut self,
        s: &PoolShape,
        x: &Buf<Cpu>,
        y: &mut Buf<Cpu>,
        argmax: &mut Buf<Cpu>,
    ) -> KernelResult {
        const CALL: &str = "pool_forward";
        self.enter(CALL, Some(&(s, at(x), at(y), at(argmax))))?;
        // Larger planes' indices would be rounded in f32, routing gradients to wrong inputs.
        if s.size
            .checked_mul(s.size)
            .is_none_or(|n| n > MAX_POOL_PLANE)
        {
            return Err(KernelError::Failed {
                call: CALL,
                status: format!(
                    "{0}×{0} planes: f32 arg-max indices are exact only for planes of up to \
                     {MAX_POOL_PLANE} values",
                    s.size
                ),
            });
        }
        match self.layout {
            Layout::Nchw => loops::pool_forward(s, x, y, argmax),
            Layout::Nhwc => {
                let (mut out, mut chosen) = (vec![0.0; s.output_len()], vec![0.0; s.output_len()]);
                loops::pool_forward(s, &to_nchw(&s.input_planes(), x), &mut out, &mut chosen);
                to_nhwc(&s.output_planes(), &out, y);
                to_nhwc(&s.output_planes(), &chosen, argmax);
            }
        }
        Ok(())
    }

    fn pool_backward(
        &mut self,
        s: &PoolShape,
        argmax: &Buf<Cpu>,
        dy: &Buf<Cpu>,
        dx: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("pool_backward", Some(&(s, at(argmax), at(dy), at(dx))))?;
        match self.layout {
            Layout::Nchw => loops::pool_backward(s, argmax, dy, dx),
            Layout::Nhwc => {
                let planes = s.output_planes();
                let (argmax, dy) = (to_nchw(&planes, argmax), to_nchw(&planes, dy));
                let mut out = vec![0.0; s.input_len()];
                loops::pool_backward(s, &argmax, &dy, &mut out);
                to_nhwc(&s.input_planes(), &out, dx);
            }
        }
        // Overlapping windows add gradients: the sum is rounded as it is stored.
        self.store(&mut dx[..s.input_len()]);
        Ok(())
    }

    fn flatten_channels_last(
        &mut self,
        p: &Planes,
        x: &Buf<Cpu>,
        y: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("flatten_channels_last", Some(&(p, at(x), at(y))))?;
        match self.layout {
            Layout::Nchw => loops::flatten_channels_last(p, x, y),
            Layout::Nhwc => y[..p.len()].copy_from_slice(&x[..p.len()]),
        }
        Ok(())
    }

    fn unflatten_channels_last(
        &mut self,
        p: &Planes,
        y: &Buf<Cpu>,
        x: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("unflatten_channels_last", Some(&(p, at(y), at(x))))?;
        match self.layout {
            Layout::Nchw => loops::unflatten_channels_last(p, y, x),
            Layout::Nhwc => x[..p.len()].copy_from_slice(&y[..p.len()]),
        }
        self.store(&mut x[..p.len()]);
        Ok(())
    }

    fn matmul(
        &mut self,
        mm: &MatMul,
        a: &Buf<Cpu>,
        b: &Buf<Cpu>,
        c: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("matmul", Some(&(mm, at(a), at(b), at(c))))?;
        let short = [
            ("a", a.len(), mm.a_len()),
            ("b", b.len(), mm.b_len()),
            ("c", c.len(), mm.c_len()),
        ]
        .into_iter()
        .find(|&(_, len, needed)| len < needed);
        if let Some((name, len, needed)) = short {
            return Err(KernelError::Failed {
                call: "matmul",
                status: format!("buffer {name} holds {len} values, {mm:?} needs {needed}"),
            });
        }
        let (a, b) = (
            self.operand(&a[..mm.a_len()]),
            self.operand(&b[..mm.b_len()]),
        );
        loops::dense_matmul(mm, &a, &b, c);
        Ok(())
    }

    fn bias_add(
        &mut self,
        rows: usize,
        columns: usize,
        y: &mut Buf<Cpu>,
        bias: &Buf<Cpu>,
    ) -> KernelResult {
        self.enter("bias_add", Some(&(rows, columns, at(y), at(bias))))?;
        loops::bias_add(rows, columns, y, bias);
        Ok(())
    }

    fn bias_backward(
        &mut self,
        rows: usize,
        columns: usize,
        dy: &Buf<Cpu>,
        db: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("bias_backward", Some(&(rows, columns, at(dy), at(db))))?;
        loops::bias_backward(rows, columns, dy, db);
        Ok(())
    }

    fn multiply(
        &mut self,
        len: usize,
        x: &Buf<Cpu>,
        m: &Buf<Cpu>,
        y: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("multiply", Some(&(len, at(x), at(m), at(y))))?;
        for ((y, &x), &m) in y[..len].iter_mut().zip(&x[..len]).zip(&m[..len]) {
            *y = x * m;
        }
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        rows: usize,
        mean_over: usize,
        classes: usize,
        logits: &Buf<Cpu>,
        labels: &[u32],
        row_stats: &mut Buf<Cpu>,
        dlogits: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.enter("softmax_cross_entropy", None)?;
        check_labels(rows, mean_over, classes, labels)?;
        if rows == 0 {
            return Ok(());
        }
        loops::softmax_cross_entropy(classes, mean_over, logits, labels, row_stats, dlogits);
        Ok(())
    }

    fn dropout_mask(&mut self, mask: &DropoutMask, out: &mut Buf<Cpu>) -> KernelResult {
        self.enter("dropout_mask", None)?;
        let values = crate::seed::dropout_mask(
            mask.key,
            mask.rate,
            mask.first_image..mask.first_image + mask.images as u64,
            mask.units,
            mask.keep,
        );
        out[..values.len()].copy_from_slice(&values);
        Ok(())
    }

    fn sgd(
        &mut self,
        step: &SgdStep,
        w: &mut Buf<Cpu>,
        v: &mut Buf<Cpu>,
        g: &Buf<Cpu>,
    ) -> KernelResult {
        self.enter("sgd", None)?;
        for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g.iter()) {
            let g = g + step.weight_decay * *w;
            *v = step.momentum * *v + g;
            *w -= step.learning_rate * *v;
        }
        if self.faults.flips() {
            if let Some(w) = w.first_mut() {
                *w = f32::from_bits(w.to_bits() ^ 1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Act, Lrn};
    use dfdx::prelude::*;

    /// LRN alone against the dfdx path's (banded matmul), forward and backward, at the paper's
    /// conv1 width.
    #[test]
    fn lrn_equals_the_dfdx_layer() -> Result<(), KernelError> {
        let dev = Cpu::default();
        let (batch, channels, pixels) = (2, 96, 9);
        let params = LrnParams {
            size: 5,
            k: 2.0,
            alpha: 0.05,
            beta: 0.75,
        };
        let x: Vec<f32> = (0..batch * channels * pixels)
            .map(|i| ((i * 7919) % 1000) as f32 / 300.0)
            .collect();
        let dy: Vec<f32> = (0..batch * channels * pixels)
            .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        // dfdx: channels-last (B, P, C).
        let nhwc = |v: &[f32]| -> Vec<f32> {
            let mut out = vec![0.0; v.len()];
            for b in 0..batch {
                for c in 0..channels {
                    for p in 0..pixels {
                        out[(b * pixels + p) * channels + c] = v[(b * channels + c) * pixels + p];
                    }
                }
            }
            out
        };
        let lrn = Lrn::new(&dev, channels, 5, 2.0, 0.05, 0.75);
        let xt: Act<f32, Cpu> = dev.tensor_from_vec(nhwc(&x), (batch, pixels, channels));
        let y = lrn.forward(xt.clone().traced(Gradients::leaky()));
        let want_y = y.as_vec();
        let g: Act<f32, Cpu> = dev.tensor_from_vec(nhwc(&dy), (batch, pixels, channels));
        let grads = (y * g).sum().backward();
        let want_dx = grads.get(&xt).as_vec();

        let mut k = HostKernels::new(&dev, Layout::Nchw, Precision::Strict)?;
        let planes = Planes {
            batch,
            channels,
            pixels,
        };
        let (xb, dyb) = (k.upload(&x)?, k.upload(&dy)?);
        let (mut yb, mut d, mut dx) = (k.alloc(x.len())?, k.alloc(x.len())?, k.alloc(x.len())?);
        k.lrn_forward(&planes, &params, &xb, &mut yb, &mut d)?;
        k.lrn_backward(&planes, &params, &xb, &d, &dyb, &mut dx)?;
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                    "{what}[{i}]: {p} vs {q}"
                );
            }
        };
        close(&nhwc(&yb), &want_y, "y");
        close(&nhwc(&dx), &want_dx, "dx");
        Ok(())
    }

    /// Every layout-dependent kernel in NHWC computes exactly what it computes in NCHW, on the
    /// same values transposed: the NHWC kernels are the GPU's NHWC kernels' reference. In
    /// bf16 too, where every activation they write is a bf16 value.
    #[test]
    fn nhwc_kernels_compute_exactly_what_nchw_kernels_do() -> Result<(), KernelError> {
        layouts_agree(Precision::Strict)?;
        layouts_agree(Precision::Bf16)
    }

    fn layouts_agree(precision: Precision) -> Result<(), KernelError> {
        let dev = Cpu::default();
        let (mut a, mut b) = (
            HostKernels::new(&dev, Layout::Nchw, precision)?,
            HostKernels::new(&dev, Layout::Nhwc, precision)?,
        );
        let conv = ConvShape {
            batch: 2,
            in_channels: 5,
            out_channels: 7,
            size: 11,
            kernel: 3,
            stride: 2,
            pad: 1,
        };
        let planes = conv.output_planes();
        let pool = PoolShape {
            batch: 2,
            channels: 7,
            size: conv.out_size(),
            kernel: 3,
            stride: 2,
        };
        let value = |n: usize, m: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * m) % 1009) as f32 / 504.5 - 1.0)
                .collect()
        };
        let nhwc = |p: &Planes, v: &[f32]| {
            let mut out = vec![0.0; v.len()];
            to_nhwc(p, v, &mut out);
            out
        };
        let same = |what: &str, p: &Planes, nchw: &[f32], ours: &[f32]| {
            let want = nhwc(p, &nchw[..p.len()]);
            assert!(
                want.iter()
                    .zip(ours)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{what}"
            );
        };
        // An activation the kernels wrote, as the precision stores it; and some of it not 0.
        let stored = |what: &str, values: &[f32]| {
            if precision.bf16_activations() {
                let off = values
                    .iter()
                    .find(|&&v| bf16::round(v).to_bits() != v.to_bits());
                assert!(off.is_none(), "{what}: {off:?} is not a bf16 value");
            }
            assert!(values.iter().any(|&v| v != 0.0), "{what}: all zeros");
        };
        let (x, w) = (
            value(conv.input_len(), 7919),
            value(conv.filter_len(), 104729),
        );
        let dy = value(conv.output_len(), 15485863);
        let input = conv.input_planes();
        let lrn = LrnParams {
            size: 5,
            k: 2.0,
            alpha: 1e-2,
            beta: 0.75,
        };

        // Forward: convolution, bias + ReLU, LRN, pooling.
        let (xa, xb, wa) = (
            a.upload_activation(&x)?,
            b.upload_activation(&nhwc(&input, &x))?,
            a.upload(&w)?,
        );
        let mut y = [a.alloc(conv.output_len())?, b.alloc(conv.output_len())?];
        a.conv_forward(&conv, &xa, &wa, &mut y[0])?;
        b.conv_forward(&conv, &xb, &wa, &mut y[1])?;
        same("conv_forward", &planes, &y[0], &y[1]);
        stored("conv_forward", &y[0]);
        let bias = a.upload(&value(planes.channels, 31))?;
        a.bias_relu(&planes, &mut y[0], &bias)?;
        b.bias_relu(&planes, &mut y[1], &bias)?;
        same("bias_relu", &planes, &y[0], &y[1]);
        stored("bias_relu", &y[0]);
        let mut l = [a.alloc(planes.len())?, b.alloc(planes.len())?];
        let mut d = [a.alloc(planes.len())?, b.alloc(planes.len())?];
        let [(la, lb), (da, db)] = [l.split_at_mut(1), d.split_at_mut(1)];
        a.lrn_forward(&planes, &lrn, &y[0], &mut la[0], &mut da[0])?;
        b.lrn_forward(&planes, &lrn, &y[1], &mut lb[0], &mut db[0])?;
        same("lrn_forward y", &planes, &l[0], &l[1]);
        stored("lrn_forward y", &l[0]);
        same("lrn_forward d", &planes, &d[0], &d[1]);
        let pooled = pool.output_planes();
        let mut p = [a.alloc(pool.output_len())?, b.alloc(pool.output_len())?];
        let mut m = [a.alloc(pool.output_len())?, b.alloc(pool.output_len())?];
        let [(pa, pb), (ma, mb)] = [p.split_at_mut(1), m.split_at_mut(1)];
        a.pool_forward(&pool, &l[0], &mut pa[0], &mut ma[0])?;
        b.pool_forward(&pool, &l[1], &mut pb[0], &mut mb[0])?;
        same("pool_forward y", &pooled, &p[0], &p[1]);
        stored("pool_forward y", &p[0]);
        same("pool_forward argmax", &pooled, &m[0], &m[1]);
        let mut flat = [a.alloc(pooled.len())?, b.alloc(pooled.len())?];
        let (fa, fb) = flat.split_at_mut(1);
        a.flatten_channels_last(&pooled, &p[0], &mut fa[0])?;
        b.flatten_channels_last(&pooled, &p[1], &mut fb[0])?;
        assert_eq!(flat[0].to_vec(), flat[1].to_vec(), "flatten_channels_last");

        // Backward, from the same gradient of the flattened features.
        let mut dp = [a.alloc(pooled.len())?, b.alloc(pooled.len())?];
        let (dpa, dpb) = dp.split_at_mut(1);
        a.unflatten_channels_last(&pooled, &flat[0], &mut dpa[0])?;
        b.unflatten_channels_last(&pooled, &flat[1], &mut dpb[0])?;
        same("unflatten_channels_last", &pooled, &dp[0], &dp[1]);
        stored("unflatten_channels_last", &dp[0]);
        let mut dl = [a.alloc(planes.len())?, b.alloc(planes.len())?];
        let (dla, dlb) = dl.split_at_mut(1);
        a.pool_backward(&pool, &m[0], &dp[0], &mut dla[0])?;
        b.pool_backward(&pool, &m[1], &dp[1], &mut dlb[0])?;
        same("pool_backward", &planes, &dl[0], &dl[1]);
        stored("pool_backward", &dl[0]);
        let mut dr = [a.alloc(planes.len())?, b.alloc(planes.len())?];
        let (dra, drb) = dr.split_at_mut(1);
        a.lrn_backward(&planes, &lrn, &y[0], &d[0], &dl[0], &mut dra[0])?;
        b.lrn_backward(&planes, &lrn, &y[1], &d[1], &dl[1], &mut drb[0])?;
        same("lrn_backward", &planes, &dr[0], &dr[1]);
        stored("lrn_backward", &dr[0]);
        let mut g = [
            a.upload_activation(&dy)?,
            b.upload_activation(&nhwc(&planes, &dy))?,
        ];
        let mut bias_grad = [a.alloc(planes.channels)?, b.alloc(planes.channels)?];
        let ([ga, gb], [bga, bgb]) = (&mut g, &mut bias_grad);
        a.relu_bias_backward(&planes, &y[0], ga, bga)?;
        b.relu_bias_backward(&planes, &y[1], gb, bgb)?;
        same("relu_bias_backward dy", &planes, &g[0], &g[1]);
        assert_eq!(
            bias_grad[0].to_vec(),
            bias_grad[1].to_vec(),
            "relu_bias_backward db"
        );
        let mut dw = [a.alloc(conv.filter_len())?, b.alloc(conv.filter_len())?];
        let (dwa, dwb) = dw.split_at_mut(1);
        a.conv_backward_filter(&conv, &xa, &g[0], &mut dwa[0])?;
        b.conv_backward_filter(&conv, &xb, &g[1], &mut dwb[0])?;
        assert_eq!(dw[0].to_vec(), dw[1].to_vec(), "conv_backward_filter");
        // f32, but computed as a bf16 convolution writes it.
        stored("conv_backward_filter", &dw[0]);
        let mut dx = [a.alloc(conv.input_len())?, b.alloc(conv.input_len())?];
        let (dxa, dxb) = dx.split_at_mut(1);
        a.conv_backward_data(&conv, &g[0], &wa, &mut dxa[0])?;
        b.conv_backward_data(&conv, &g[1], &wa, &mut dxb[0])?;
        same("conv_backward_data", &input, &dx[0], &dx[1]);
        stored("conv_backward_data", &dx[0]);
        Ok(())
    }

    /// In bf16 a matrix product reads its operands rounded to bf16 and sums in f32.
    #[test]
    fn a_bf16_matmul_rounds_its_operands_not_its_sums() -> Result<(), KernelError> {
        let dev = Cpu::default();
        let mm = MatMul::dense_forward(1, 2, 1);
        // 1 + 2^-10 is 1 in bf16; 2^-10 alone is exact, and so is the f32 sum 1 + 2^-10.
        let (a, b) = (vec![1.0 + 2f32.powi(-10), 2f32.powi(-10)], vec![1.0, 1.0]);
        let mut products = Vec::new();
        for precision in [Precision::Strict, Precision::Bf16] {
            let mut k = HostKernels::new(&dev, Layout::Nchw, precision)?;
            let (a, b, mut c) = (k.upload(&a)?, k.upload(&b)?, k.alloc(1)?);
            k.matmul(&mm, &a, &b, &mut c)?;
            products.push(c[0]);
        }
        assert_eq!(products, [1.0 + 2.0 * 2f32.powi(-10), 1.0 + 2f32.powi(-10)]);
        Ok(())
    }

    /// The input normalised into NHWC holds NCHW's values transposed.
    #[test]
    fn normalize_writes_either_layout() -> Result<(), KernelError> {
        let dev = Cpu::default();
        let (batch, crop) = (2, 5);
        let pixels: Vec<u8> = (0..batch * crop * crop * 3)
            .map(|i| (i * 37 % 256) as u8)
            .collect();
        let table: Vec<f32> = (0..3 * crop * 3).map(|i| i as f32 * 1.5).collect();
        let mean_rows: Vec<u32> = (0..batch * crop).map(|i| (i % 3) as u32).collect();
        let input = InputBatch {
            pixels: &pixels,
            mean_rows: &mean_rows,
            lighting: &[0.5, -1.0, 2.0, 0.0, 0.25, -0.75],
            scale: [1.0, 0.5, 2.0],
            batch,
            crop,
        };
        let planes = Planes {
            batch,
            channels: 3,
            pixels: crop * crop,
        };
        let mut out = Vec::new();
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let mut k = HostKernels::new(&dev, layout, Precision::Strict)?;
            k.set_mean_table(&table, crop * 3)?;
            let mut x = k.alloc(planes.len())?;
            k.normalize(&input, &mut x)?;
            out.push(x.to_vec());
        }
        let mut want = vec![0.0; planes.len()];
        to_nhwc(&planes, &out[0], &mut want);
        assert_eq!(out[1], want);
        Ok(())
    }

    /// A convolution (conv5's geometry, padded) against the dfdx path's gather + matmul layer:
    /// output, input gradient and filter gradient.
    #[test]
    fn convolutions_equal_the_dfdx_layer() -> Result<(), KernelError> {
        let conv5 = ConvShape {
            batch: 2,
            in_channels: 384,
            out_channels: 256,
            size: 13,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let conv1 = ConvShape {
            batch: 3,
            in_channels: 3,
            out_channels: 96,
            size: 224,
            kernel: 11,
            stride: 4,
            pad: 2,
        };
        for s in [conv5, conv1] {
            convolution_equals_the_dfdx_layer(s)?;
        }
        Ok(())
    }

    fn convolution_equals_the_dfdx_layer(s: ConvShape) -> Result<(), KernelError> {
        use crate::model::checkpoint::to_torch;
        use crate::model::{Affine, Conv, TorchLayout, Window};
        let dev = Cpu::default();
        let value = |i: usize, m: usize| ((i * m) % 1009) as f32 / 504.5 - 1.0;
        let x: Vec<f32> = (0..s.input_len()).map(|i| value(i, 7919)).collect();
        let w_ours: Vec<f32> = (0..s.filter_len())
            .map(|i| value(i, 104729) * 0.1)
            .collect();
        let dy: Vec<f32> = (0..s.output_len()).map(|i| value(i, 15485863)).collect();
        let (out, pixels) = (s.out_size(), s.size * s.size);
        let to_nhwc = |v: &[f32], c: usize, p: usize| -> Vec<f32> {
            let mut o = vec![0.0; v.len()];
            for b in 0..s.batch {
                for ch in 0..c {
                    for q in 0..p {
                        o[(b * p + q) * c + ch] = v[(b * c + ch) * p + q];
                    }
                }
            }
            o
        };
        let inputs = s.in_channels * s.kernel * s.kernel;
        let mut conv = Conv::new(
            Affine {
                weight: dev.tensor_from_vec(w_ours.clone(), (inputs, s.out_channels)),
                bias: dev.zeros_like(&(s.out_channels,)),
            },
            Window {
                size: s.size,
                kernel: s.kernel,
                stride: s.stride,
                pad: s.pad,
            },
        );
        let xt: Act<f32, Cpu> = dev.tensor_from_vec(
            to_nhwc(&x, s.in_channels, pixels),
            (s.batch, pixels, s.in_channels),
        );
        let y = conv.forward(xt.clone().traced(Gradients::leaky()));
        let want_y = y.as_vec();
        let g: Act<f32, Cpu> = dev.tensor_from_vec(
            to_nhwc(&dy, s.out_channels, out * out),
            (s.batch, out * out, s.out_channels),
        );
        let grads = (y * g).sum().backward();
        let want_dx = grads.get(&xt).as_vec();
        let want_dw = grads.get(&conv.affine.weight).as_vec();

        let layout = TorchLayout::Conv {
            kernel: s.kernel,
            in_channels: s.in_channels,
        };
        let mut k = HostKernels::new(&dev, Layout::Nchw, Precision::Strict)?;
        let (xb, wb, dyb) = (
            k.upload(&x)?,
            k.upload(&to_torch(layout, &w_ours, inputs, s.out_channels))?,
            k.upload(&dy)?,
        );
        let (mut yb, mut dx, mut dw) = (
            k.alloc(s.output_len())?,
            k.alloc(s.input_len())?,
            k.alloc(s.filter_len())?,
        );
        k.conv_forward(&s, &xb, &wb, &mut yb)?;
        k.conv_backward_data(&s, &dyb, &wb, &mut dx)?;
        k.conv_backward_filter(&s, &xb, &dyb, &mut dw)?;
        let close = |a: &[f32], b: &[f32], what: &str| {
            let (error, _) = crate::check::relative_error(a, b);
            assert!(error < 1e-6, "{what}: relative error {error:e}");
        };
        close(&to_nhwc(&yb, s.out_channels, out * out), &want_y, "y");
        close(&to_nhwc(&dx, s.in_channels, pixels), &want_dx, "dx");
        let dw_ours = crate::model::checkpoint::from_torch(layout, &dw, inputs, s.out_channels);
        close(&dw_ours, &want_dw, "dw");
        Ok(())
    }

    fn replay_key() -> ReplayKey {
        ReplayKey {
            stretch: replay::Stretch::Forward,
            batch: 2,
            dropout: false,
            buffers: 1,
        }
    }

    /// A stretch whose launches change from step to step (here the rows of a bias, as a
    /// per-step value baked into a CUDA graph would be) fails at its first replay, naming
    /// the call.
    #[test]
    fn a_replay_that_would_launch_other_than_its_recording_fails() -> Result<(), KernelError> {
        let mut k =
            HostKernels::new(&Cpu::default(), Layout::Nchw, Precision::Strict)?.replaying(true);
        let (mut y, bias) = (k.upload(&[1.0; 8])?, k.upload(&[0.5; 4])?);
        let mut rows = 0;
        let mut varying = |k: &mut HostKernels| {
            rows = rows % 2 + 1;
            k.bias_add(rows, 4, &mut y, &bias)
        };
        k.replayable(replay_key(), &mut varying)?;
        k.replayable(replay_key(), &mut varying)?;
        let e = k.replayable(replay_key(), &mut varying).unwrap_err();
        assert!(e.to_string().contains("bias_add(1, 4"), "{e}");
        // The same launches replay.
        let mut fixed = |k: &mut HostKernels| k.bias_add(2, 4, &mut y, &bias);
        let key = ReplayKey {
            buffers: 2,
            ..replay_key()
        };
        for _ in 0..3 {
            k.replayable(key, &mut fixed)?;
        }
        let stats = k.replay_stats().unwrap();
        assert_eq!((stats.recorded, stats.replayed), (2, 2));
        Ok(())
    }

    /// What a GPU recording cannot hold (an upload here) refuses the recording: the stretch
    /// runs directly from then on, and the reason is kept for the run's summary.
    #[test]
    fn a_host_call_inside_a_recorded_stretch_refuses_the_recording() -> Result<(), KernelError> {
        let mut k =
            HostKernels::new(&Cpu::default(), Layout::Nchw, Precision::Strict)?.replaying(true);
        let mut uploads = |k: &mut HostKernels| k.upload(&[1.0]).map(drop);
        for _ in 0..3 {
            k.replayable(replay_key(), &mut uploads)?;
        }
        let stats = k.replay_stats().unwrap();
        assert_eq!((stats.direct, stats.recorded), (3, 0));
        let reason = stats.refused.unwrap_or_default();
        assert!(
            reason.contains("upload") && reason.contains("inside"),
            "{reason}"
        );
        Ok(())
    }
}
