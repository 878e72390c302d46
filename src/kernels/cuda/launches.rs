//! The host side of each kernel in `kernels.cu`: the checks that keep it inside its buffers
//! (see `buffers`), its parameters in the source's order, and its launch.

use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaSlice, DeviceSlice};
use dfdx::tensor::Cuda;

use super::buffers::{self, at_least, count32, DeviceMeanTable};
use super::check;
use super::nvrtc::{grid, per_chunk, relu_bias_splits, Functions, Kernel};
use super::upload::Uploads;
use crate::config::MAX_LRN_SIZE;
use crate::kernels::{
    Buf, DropoutMask, InputBatch, KernelResult, LrnParams, Planes, PoolShape, SgdStep,
};

pub(super) fn normalize(
    kernels: &Functions,
    uploads: &mut Uploads,
    table: Option<&DeviceMeanTable>,
    input: &InputBatch,
    x: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "normalize";
    let (batch, crop) = (input.batch, input.crop);
    let Some(table) = table else {
        return Err(check::failed(
            CALL,
            "no mean table: set_mean_table must come first".into(),
        ));
    };
    let n = batch * 3 * crop * crop;
    buffers::exactly(CALL, "pixels", input.pixels.len(), n)?;
    buffers::exactly(CALL, "mean_rows", input.mean_rows.len(), batch * crop)?;
    buffers::exactly(CALL, "lighting", input.lighting.len(), batch * 3)?;
    if crop * 3 > table.row_len {
        return Err(check::failed(
            CALL,
            format!(
                "crop {crop} wider than the mean rows ({} values)",
                table.row_len
            ),
        ));
    }
    // A row past the table would be read out of bounds on the GPU: check on the host.
    if let Some(&bad) = input.mean_rows.iter().find(|&&r| r as usize >= table.rows) {
        return Err(check::failed(
            CALL,
            format!("mean row {bad} outside the table's {} rows", table.rows),
        ));
    }
    at_least(CALL, "x", x.len(), n)?;
    let n = count32(CALL, "x", n)?;
    let row_len = count32(CALL, "mean row length", table.row_len)?;
    if n == 0 {
        return Ok(());
    }
    let staged = uploads.stage(input)?;
    let params = (
        &mut *x,
        staged.pixels,
        &table.data,
        staged.mean_rows,
        staged.lighting,
        input.scale[0],
        input.scale[1],
        input.scale[2],
        batch as u32,
        crop as u32,
        row_len,
    );
    // SAFETY: the parameters match `normalize` in the CUDA source; lengths checked above.
    unsafe { kernels.normalize.launch(grid(n), params) }?;
    uploads.consumed()
}

pub(super) fn bias_relu(
    kernels: &Functions,
    planes: &Planes,
    y: &mut Buf<Cuda>,
    bias: &Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "bias_relu";
    at_least(CALL, "y", y.len(), planes.len())?;
    at_least(CALL, "bias", bias.len(), planes.channels)?;
    let n = count32(CALL, "y", planes.len())?;
    if n == 0 {
        return Ok(());
    }
    let params = (
        &mut *y,
        bias,
        n,
        planes.channels as u32,
        planes.pixels as u32,
    );
    // SAFETY: matches `bias_relu`; lengths checked.
    unsafe { kernels.bias_relu.launch(grid(n), params) }
}

/// The ReLU's mask and the bias gradient in two launches: per-chunk partial sums into
/// `partials` (grown here when too short), then their sum per channel (see `kernels.cu`).
pub(super) fn relu_bias_backward(
    kernels: &Functions,
    dev: &Arc<CudaDevice>,
    partials: &mut Option<CudaSlice<f32>>,
    planes: &Planes,
    y: &Buf<Cuda>,
    dy: &mut Buf<Cuda>,
    db: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "relu_bias_backward";
    at_least(CALL, "y", y.len(), planes.len())?;
    at_least(CALL, "dy", dy.len(), planes.len())?;
    at_least(CALL, "db", db.len(), planes.channels)?;
    count32(CALL, "dy", planes.len())?;
    if planes.channels == 0 {
        return Ok(());
    }
    let channels = count32(CALL, "channels", planes.channels)?;
    let splits = relu_bias_splits(planes.batch * planes.pixels);
    let needed = planes.channels * splits as usize;
    if partials.as_ref().is_none_or(|p| p.len() < needed) {
        // Dropping the old one frees it in stream order, after the work that used it.
        *partials = None;
        let grown = dev.alloc_zeros::<f32>(needed).map_err(|e| {
            check::allocation(
                dev,
                "cuMemAlloc (relu_bias_backward: partial sums)",
                needed * 4,
                e,
            )
        })?;
        *partials = Some(grown);
    }
    let Some(partials) = partials.as_mut() else {
        return Err(check::failed(
            CALL,
            "no partial sums after allocating".into(),
        ));
    };
    let params = (
        &mut *dy,
        y,
        &mut *partials,
        planes.batch as u32,
        channels,
        planes.pixels as u32,
        splits,
    );
    // SAFETY: matches `relu_bias_partials`, launched with RELU_BIAS_THREADS threads and
    // `splits × channels` blocks; `partials` holds `channels × splits` values.
    unsafe {
        kernels
            .relu_bias_partials
            .launch(per_chunk(splits, channels), params)
    }?;
    let params = (&*partials, &mut *db, channels, splits);
    // SAFETY: matches `sum_partials`; `partials` and `db` checked above.
    unsafe { kernels.sum_partials.launch(grid(channels), params) }
}

pub(super) fn lrn_forward(
    kernels: &Functions,
    planes: &Planes,
    lrn: &LrnParams,
    x: &Buf<Cuda>,
    y: &mut Buf<Cuda>,
    d: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "lrn_forward";
    at_least(CALL, "x", x.len(), planes.len())?;
    at_least(CALL, "y", y.len(), planes.len())?;
    at_least(CALL, "d", d.len(), planes.len())?;
    count32(CALL, "x", planes.len())?;
    let n = count32(CALL, "columns", planes.batch * planes.pixels)?;
    let half = lrn_half(CALL, lrn)?;
    if n == 0 {
        return Ok(());
    }
    let params = (
        x,
        &mut *y,
        &mut *d,
        planes.batch as u32,
        planes.channels as u32,
        planes.pixels as u32,
        half,
        lrn.k,
        lrn.alpha,
        lrn.beta,
    );
    // SAFETY: matches `lrn_forward`; lengths checked.
    unsafe { kernels.lrn_forward.launch(grid(n), params) }
}

pub(super) fn lrn_backward(
    kernels: &Functions,
    planes: &Planes,
    lrn: &LrnParams,
    x: &Buf<Cuda>,
    d: &Buf<Cuda>,
    dy: &Buf<Cuda>,
    dx: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "lrn_backward";
    at_least(CALL, "x", x.len(), planes.len())?;
    at_least(CALL, "d", d.len(), planes.len())?;
    at_least(CALL, "dy", dy.len(), planes.len())?;
    at_least(CALL, "dx", dx.len(), planes.len())?;
    count32(CALL, "x", planes.len())?;
    let n = count32(CALL, "columns", planes.batch * planes.pixels)?;
    let half = lrn_half(CALL, lrn)?;
    if n == 0 {
        return Ok(());
    }
    let params = (
        x,
        d,
        dy,
        &mut *dx,
        planes.batch as u32,
        planes.channels as u32,
        planes.pixels as u32,
        half,
        lrn.alpha,
        lrn.beta,
    );
    // SAFETY: matches `lrn_backward`; lengths checked.
    unsafe { kernels.lrn_backward.launch(grid(n), params) }
}

pub(super) fn pool_forward(
    kernels: &Functions,
    shape: &PoolShape,
    x: &Buf<Cuda>,
    y: &mut Buf<Cuda>,
    argmax: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "pool_forward";
    buffers::pool_geometry(CALL, shape)?;
    buffers::pool_plane(CALL, shape)?;
    at_least(CALL, "x", x.len(), shape.input_len())?;
    at_least(CALL, "y", y.len(), shape.output_len())?;
    at_least(CALL, "argmax", argmax.len(), shape.output_len())?;
    count32(CALL, "x", shape.input_len())?;
    let n = count32(CALL, "y", shape.output_len())?;
    if n == 0 {
        return Ok(());
    }
    let params = (
        x,
        &mut *y,
        &mut *argmax,
        (shape.batch * shape.channels) as u32,
        shape.size as u32,
        shape.kernel as u32,
        shape.stride as u32,
        shape.out_size() as u32,
    );
    // SAFETY: matches `pool_forward`; lengths checked.
    unsafe { kernels.pool_forward.launch(grid(n), params) }
}

/// Routes each window's gradient to the input `pool_forward` stored as its choice.
pub(super) fn pool_backward(
    kernels: &Functions,
    shape: &PoolShape,
    argmax: &Buf<Cuda>,
    dy: &Buf<Cuda>,
    dx: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "pool_backward";
    buffers::pool_geometry(CALL, shape)?;
    buffers::pool_plane(CALL, shape)?;
    at_least(CALL, "argmax", argmax.len(), shape.output_len())?;
    at_least(CALL, "dy", dy.len(), shape.output_len())?;
    at_least(CALL, "dx", dx.len(), shape.input_len())?;
    let n = count32(CALL, "dx", shape.input_len())?;
    if n == 0 {
        return Ok(());
    }
    let params = (
        argmax,
        dy,
        &mut *dx,
        (shape.batch * shape.channels) as u32,
        shape.size as u32,
        shape.kernel as u32,
        shape.stride as u32,
        shape.out_size() as u32,
    );
    // SAFETY: matches `pool_backward`; lengths checked.
    unsafe { kernels.pool_backward.launch(grid(n), params) }
}

pub(super) fn flatten_channels_last(
    kernels: &Functions,
    planes: &Planes,
    x: &Buf<Cuda>,
    y: &mut Buf<Cuda>,
) -> KernelResult {
    let kernel = &kernels.to_channels_last;
    permute(kernel, "flatten_channels_last", planes, x, y)
}

pub(super) fn unflatten_channels_last(
    kernels: &Functions,
    planes: &Planes,
    y: &Buf<Cuda>,
    x: &mut Buf<Cuda>,
) -> KernelResult {
    let kernel = &kernels.from_channels_last;
    permute(kernel, "unflatten_channels_last", planes, y, x)
}

pub(super) fn sgd(
    kernels: &Functions,
    step: &SgdStep,
    w: &mut Buf<Cuda>,
    v: &mut Buf<Cuda>,
    g: &Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "sgd";
    let len = w.len();
    buffers::exactly(CALL, "momentum v (weights w's length)", v.len(), len)?;
    buffers::exactly(CALL, "gradient g (weights w's length)", g.len(), len)?;
    let n = count32(CALL, "w", len)?;
    if n == 0 {
        return Ok(());
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
    unsafe { kernels.sgd.launch(grid(n), params) }
}

pub(super) fn dropout_mask(
    kernels: &Functions,
    mask: &DropoutMask,
    out: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "dropout_mask";
    at_least(CALL, "out", out.len(), mask.len())?;
    let n = count32(CALL, "mask", mask.len())?;
    if n == 0 {
        return Ok(());
    }
    let params = (
        &mut *out,
        mask.key,
        crate::seed::dropout_threshold(mask.rate),
        mask.keep,
        count32(CALL, "images", mask.images)?,
        count32(CALL, "units", mask.units)?,
    );
    // SAFETY: matches `dropout_mask`; the output holds `images × units` values (checked).
    unsafe { kernels.dropout_mask.launch(grid(n), params) }
}

/// Launches one of the two layout kernels, `(B, C, P)` ↔ `(B, P·C)`, which share their
/// parameters: source, destination, batch, channels, pixels.
fn permute(
    kernel: &Kernel,
    call: &'static str,
    planes: &Planes,
    src: &Buf<Cuda>,
    dst: &mut Buf<Cuda>,
) -> KernelResult {
    at_least(call, "source", src.len(), planes.len())?;
    at_least(call, "destination", dst.len(), planes.len())?;
    let n = count32(call, "planes", planes.len())?;
    if n == 0 {
        return Ok(());
    }
    let params = (
        src,
        &mut *dst,
        planes.batch as u32,
        planes.channels as u32,
        planes.pixels as u32,
    );
    // SAFETY: both kernels take exactly these parameters; lengths checked above, and the
    // factors of a count that fits 32 bits fit too.
    unsafe { kernel.launch(grid(n), params) }
}

/// The LRN window's half-width as the kernels' `int`.
/// Half of LRN's window, which the kernels keep in a ring of at most `MAX_LRN_SIZE` channels
/// (the pipeline's check refuses wider windows before a run starts).
fn lrn_half(call: &'static str, lrn: &LrnParams) -> KernelResult<i32> {
    if lrn.size > MAX_LRN_SIZE {
        return Err(check::failed(
            call,
            format!(
                "LRN window of {} channels wider than the kernels' {MAX_LRN_SIZE}",
                lrn.size
            ),
        ));
    }
    Ok((lrn.size / 2) as i32)
}
