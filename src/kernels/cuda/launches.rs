//! The host side of each kernel in `kernels.cu`: the checks that keep it inside its buffers
//! (see `buffers`), its parameters in the source's order, and its launch.

use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaSlice, DeviceSlice};
use dfdx::tensor::Cuda;

use super::buffers::{self, at_least, count32, DeviceMeanTable, Form};
use super::check;
use super::nvrtc::{
    grid, grid_stride, lrn_rows, per_chunk, per_lanes_and_rows, per_row, relu_bias_row_splits,
    relu_bias_splits, Functions, LRN_NHWC_MAX_CHANNELS, SGD_MAX_TENSORS, SOFTMAX_THREADS,
};
use super::upload::Uploads;
use crate::config::MAX_LRN_SIZE;
use crate::kernels::{
    Buf, DropoutMask, InputBatch, KernelResult, Layout, LrnParams, Planes, PoolShape, SgdStep,
    SgdTensor,
};

pub(super) fn normalize(
    kernels: &Functions,
    form: Form,
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
    at_least(CALL, "x", form.values(x), n)?;
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
        u32::from(form.layout == Layout::Nhwc),
    );
    // SAFETY: the parameters match `normalize` in the CUDA source (`x` of the form's type);
    // lengths checked above.
    unsafe { kernels.normalize.of(form.bf16).launch(grid(n), params) }?;
    uploads.consumed()
}

pub(super) fn bias_relu(
    kernels: &Functions,
    form: Form,
    planes: &Planes,
    y: &mut Buf<Cuda>,
    bias: &Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "bias_relu";
    at_least(CALL, "y", form.values(y), planes.len())?;
    at_least(CALL, "bias", bias.len(), planes.channels)?;
    let n = count32(CALL, "y", planes.len())?;
    if n == 0 {
        return Ok(());
    }
    let channel_stride = match form.layout {
        Layout::Nchw => planes.pixels as u32,
        Layout::Nhwc => 1,
    };
    let params = (&mut *y, bias, n, planes.channels as u32, channel_stride);
    // SAFETY: matches `bias_relu`; lengths checked, and `channel_stride` is not 0 when `n` is
    // not.
    unsafe { kernels.bias_relu.of(form.bf16).launch(grid(n), params) }
}

/// The ReLU's mask and the bias gradient in two launches: per-chunk partial sums into
/// `partials` (grown here when too short), then their sum per channel (see `kernels.cu`).
#[allow(clippy::too_many_arguments)]
pub(super) fn relu_bias_backward(
    kernels: &Functions,
    form: Form,
    dev: &Arc<CudaDevice>,
    partials: &mut Option<CudaSlice<f32>>,
    planes: &Planes,
    y: &Buf<Cuda>,
    dy: &mut Buf<Cuda>,
    db: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "relu_bias_backward";
    at_least(CALL, "y", form.values(y), planes.len())?;
    at_least(CALL, "dy", form.values(dy), planes.len())?;
    at_least(CALL, "db", db.len(), planes.channels)?;
    count32(CALL, "dy", planes.len())?;
    if planes.channels == 0 {
        return Ok(());
    }
    let channels = count32(CALL, "channels", planes.channels)?;
    let rows = planes.batch * planes.pixels;
    let splits = match form.layout {
        Layout::Nchw => relu_bias_splits(rows),
        Layout::Nhwc => relu_bias_row_splits(rows),
    };
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
    match form.layout {
        Layout::Nchw => {
            let params = (
                &mut *dy,
                y,
                &mut *partials,
                planes.batch as u32,
                channels,
                planes.pixels as u32,
                splits,
            );
            // SAFETY: matches `relu_bias_partials`, launched with RELU_BIAS_THREADS threads
            // and `splits × channels` blocks; `partials` holds `splits × channels` values.
            unsafe {
                kernels
                    .relu_bias_partials
                    .of(form.bf16)
                    .launch(per_chunk(splits, channels), params)
            }?;
        }
        Layout::Nhwc => {
            let params = (&mut *dy, y, &mut *partials, rows as u32, channels);
            // SAFETY: matches `relu_bias_partials_nhwc`, launched with RELU_BIAS_THREADS
            // threads, a block per 32 channels and split; `partials` holds `splits × channels`
            // values, and `dy`, `y` the `rows × channels` checked above.
            unsafe {
                kernels
                    .relu_bias_partials_nhwc
                    .of(form.bf16)
                    .launch(per_lanes_and_rows(channels, splits), params)
            }?;
        }
    }
    // The splits' sums, added in split order: the partial sums are a splits × channels matrix.
    let params = (&*partials, &mut *db, splits, channels);
    // SAFETY: matches `bias_backward` with rows = splits and columns = channels; `partials`
    // and `db` checked above.
    unsafe { kernels.bias_backward.launch(grid(channels), params) }
}

pub(super) fn lrn_forward(
    kernels: &Functions,
    form: Form,
    planes: &Planes,
    lrn: &LrnParams,
    x: &Buf<Cuda>,
    y: &mut Buf<Cuda>,
    d: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "lrn_forward";
    at_least(CALL, "x", form.values(x), planes.len())?;
    at_least(CALL, "y", form.values(y), planes.len())?;
    at_least(CALL, "d", d.len(), planes.len())?;
    count32(CALL, "x", planes.len())?;
    let n = count32(CALL, "columns", planes.batch * planes.pixels)?;
    let half = lrn_half(CALL, lrn)?;
    if n == 0 || planes.channels == 0 {
        return Ok(());
    }
    if form.layout == Layout::Nhwc {
        let channels = lrn_nhwc_channels(CALL, planes)?;
        let (config, per_block) = lrn_rows(n, channels);
        let params = (
            x, &mut *y, &mut *d, n, channels, per_block, half, lrn.k, lrn.alpha, lrn.beta,
        );
        // SAFETY: matches `lrn_forward_nhwc`; lengths checked, and the launch gives each block
        // the shared memory of `per_block` rows.
        return unsafe {
            kernels
                .lrn_forward_nhwc
                .of(form.bf16)
                .launch(config, params)
        };
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
    unsafe { kernels.lrn_forward.of(form.bf16).launch(grid(n), params) }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn lrn_backward(
    kernels: &Functions,
    form: Form,
    planes: &Planes,
    lrn: &LrnParams,
    x: &Buf<Cuda>,
    d: &Buf<Cuda>,
    dy: &Buf<Cuda>,
    dx: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "lrn_backward";
    at_least(CALL, "x", form.values(x), planes.len())?;
    at_least(CALL, "d", d.len(), planes.len())?;
    at_least(CALL, "dy", form.values(dy), planes.len())?;
    at_least(CALL, "dx", form.values(dx), planes.len())?;
    count32(CALL, "x", planes.len())?;
    let n = count32(CALL, "columns", planes.batch * planes.pixels)?;
    let half = lrn_half(CALL, lrn)?;
    if n == 0 || planes.channels == 0 {
        return Ok(());
    }
    if form.layout == Layout::Nhwc {
        let channels = lrn_nhwc_channels(CALL, planes)?;
        let (config, per_block) = lrn_rows(n, channels);
        let params = (
            x, d, dy, &mut *dx, n, channels, per_block, half, lrn.alpha, lrn.beta,
        );
        // SAFETY: matches `lrn_backward_nhwc`; lengths checked, and the launch gives each block
        // the shared memory of `per_block` rows.
        return unsafe {
            kernels
                .lrn_backward_nhwc
                .of(form.bf16)
                .launch(config, params)
        };
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
    unsafe { kernels.lrn_backward.of(form.bf16).launch(grid(n), params) }
}

pub(super) fn pool_forward(
    kernels: &Functions,
    form: Form,
    shape: &PoolShape,
    x: &Buf<Cuda>,
    y: &mut Buf<Cuda>,
    argmax: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "pool_forward";
    buffers::pool_geometry(CALL, shape)?;
    buffers::pool_plane(CALL, shape)?;
    at_least(CALL, "x", form.values(x), shape.input_len())?;
    at_least(CALL, "y", form.values(y), shape.output_len())?;
    at_least(CALL, "argmax", argmax.len(), shape.output_len())?;
    count32(CALL, "x", shape.input_len())?;
    let n = count32(CALL, "y", shape.output_len())?;
    if n == 0 {
        return Ok(());
    }
    if form.layout == Layout::Nhwc {
        let params = (
            x,
            &mut *y,
            &mut *argmax,
            shape.batch as u32,
            shape.channels as u32,
            shape.size as u32,
            shape.kernel as u32,
            shape.stride as u32,
            shape.out_size() as u32,
        );
        // SAFETY: matches `pool_forward_nhwc`; lengths checked.
        return unsafe {
            kernels
                .pool_forward_nhwc
                .of(form.bf16)
                .launch(grid(n), params)
        };
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
    unsafe { kernels.pool_forward.of(form.bf16).launch(grid(n), params) }
}

/// Routes each window's gradient to the input `pool_forward` stored as its choice.
pub(super) fn pool_backward(
    kernels: &Functions,
    form: Form,
    shape: &PoolShape,
    argmax: &Buf<Cuda>,
    dy: &Buf<Cuda>,
    dx: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "pool_backward";
    buffers::pool_geometry(CALL, shape)?;
    buffers::pool_plane(CALL, shape)?;
    at_least(CALL, "argmax", argmax.len(), shape.output_len())?;
    at_least(CALL, "dy", form.values(dy), shape.output_len())?;
    at_least(CALL, "dx", form.values(dx), shape.input_len())?;
    let n = count32(CALL, "dx", shape.input_len())?;
    if n == 0 {
        return Ok(());
    }
    if form.layout == Layout::Nhwc {
        let params = (
            argmax,
            dy,
            &mut *dx,
            shape.batch as u32,
            shape.channels as u32,
            shape.size as u32,
            shape.kernel as u32,
            shape.stride as u32,
            shape.out_size() as u32,
        );
        // SAFETY: matches `pool_backward_nhwc`; lengths checked.
        return unsafe {
            kernels
                .pool_backward_nhwc
                .of(form.bf16)
                .launch(grid(n), params)
        };
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
    unsafe { kernels.pool_backward.of(form.bf16).launch(grid(n), params) }
}

/// The flattened features FC6 reads: f32, channels-last.
const FEATURES: Form = Form {
    layout: Layout::Nhwc,
    bf16: false,
};

/// The parameters' filters: f32, OIHW (`(O, I, K²)` planes, channels first).
const PARAMETERS: Form = Form {
    layout: Layout::Nchw,
    bf16: false,
};

/// Activations in `form` → `(B, P·C)` channels-last f32 (what FC6 reads).
pub(super) fn flatten_channels_last(
    kernels: &Functions,
    form: Form,
    planes: &Planes,
    x: &Buf<Cuda>,
    y: &mut Buf<Cuda>,
) -> KernelResult {
    let call = "flatten_channels_last";
    relayout(kernels, call, planes, (form, x), (FEATURES, y))
}

/// The inverse of `flatten_channels_last`: f32 into activations in `form`.
pub(super) fn unflatten_channels_last(
    kernels: &Functions,
    form: Form,
    planes: &Planes,
    y: &Buf<Cuda>,
    x: &mut Buf<Cuda>,
) -> KernelResult {
    let call = "unflatten_channels_last";
    relayout(kernels, call, planes, (FEATURES, y), (form, x))
}

/// f32 OIHW filters (the parameters) → the filters a convolution in `form` reads: OHWI for
/// cuDNN's NHWC convolutions (filters as `(O, I, K²)` planes, a filter per image and its
/// kernel taps as pixels), bf16 for bf16 ones.
pub(super) fn filters_in(
    kernels: &Functions,
    form: Form,
    filters: &Planes,
    oihw: &Buf<Cuda>,
    converted: &mut Buf<Cuda>,
) -> KernelResult {
    let call = "filters for the convolution";
    relayout(
        kernels,
        call,
        filters,
        (PARAMETERS, oihw),
        (form, converted),
    )
}

/// The inverse of `filters_in`: a convolution's filter gradient in `form` into f32 OIHW.
pub(super) fn filters_out(
    kernels: &Functions,
    form: Form,
    filters: &Planes,
    converted: &Buf<Cuda>,
    oihw: &mut Buf<Cuda>,
) -> KernelResult {
    let call = "filter gradient from the convolution";
    relayout(
        kernels,
        call,
        filters,
        (form, converted),
        (PARAMETERS, oihw),
    )
}

/// `planes` from `src` in its form into `dst` in another: a copy where the layouts agree, else
/// one of the two layout kernels, `(B, C, P)` ↔ `(B, P·C)`; widening or narrowing between f32
/// and bf16 on the way.
fn relayout(
    kernels: &Functions,
    call: &'static str,
    planes: &Planes,
    (from, src): (Form, &Buf<Cuda>),
    (to, dst): (Form, &mut Buf<Cuda>),
) -> KernelResult {
    let kernel = match (from.layout, to.layout) {
        (Layout::Nchw, Layout::Nhwc) => &kernels.to_channels_last,
        (Layout::Nhwc, Layout::Nchw) => &kernels.from_channels_last,
        _ => &kernels.copy,
    };
    let kernel = match (from.bf16, to.bf16) {
        (false, false) => &kernel.same,
        (true, false) => &kernel.widen,
        (false, true) => &kernel.narrow,
        (true, true) => {
            return Err(check::failed(
                call,
                "no conversion from bf16 to bf16 (a bug in this build)".into(),
            ))
        }
    };
    at_least(call, "source", from.values(src), planes.len())?;
    at_least(call, "destination", to.values(dst), planes.len())?;
    let n = count32(call, "planes", planes.len())?;
    if n == 0 {
        return Ok(());
    }
    if from.layout == to.layout {
        // SAFETY: matches `copy` for these types; both buffers hold at least `n` values
        // (checked).
        return unsafe { kernel.launch(grid(n), (src, &mut *dst, n)) };
    }
    let params = (
        src,
        &mut *dst,
        planes.batch as u32,
        planes.channels as u32,
        planes.pixels as u32,
    );
    // SAFETY: both layout kernels take exactly these parameters, of the picked types; lengths
    // checked above, and the factors of a count that fits 32 bits fit too.
    unsafe { kernel.launch(grid(n), params) }
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

const SGD_TABLE: buffers::Upload = buffers::Upload {
    alloc: "cuMemAlloc (sgd_all: tensor table)",
    copy: "cuMemcpyHtoD (sgd_all: tensor table)",
};

/// Every tensor's update in one launch. The table of buffers (four 64-bit words per tensor:
/// weights, momentum, gradient, running count) is uploaded only when a buffer has changed —
/// the model's buffers live as long as the run — so a step uploads nothing.
pub(super) fn sgd_all(
    kernels: &Functions,
    dev: &Arc<CudaDevice>,
    table: &mut SgdTable,
    step: &SgdStep,
    tensors: &mut [SgdTensor<'_, Cuda>],
) -> KernelResult {
    const CALL: &str = "sgd_all";
    if tensors.len() > SGD_MAX_TENSORS {
        return Err(check::failed(
            CALL,
            format!(
                "{} tensors, more than the kernel's {SGD_MAX_TENSORS}",
                tensors.len()
            ),
        ));
    }
    let mut words = Vec::with_capacity(4 * tensors.len());
    let mut total = 0u64;
    for t in tensors.iter_mut() {
        let len = t.w.len();
        buffers::exactly(CALL, "momentum v (weights w's length)", t.v.len(), len)?;
        buffers::exactly(CALL, "gradient g (weights w's length)", t.g.len(), len)?;
        total += len as u64;
        words.extend([
            buffers::device_ptr_mut(t.w) as u64,
            buffers::device_ptr_mut(t.v) as u64,
            buffers::device_ptr(t.g) as u64,
            total,
        ]);
    }
    if total == 0 {
        return Ok(());
    }
    if table.words != words {
        buffers::upload_into(dev, &mut table.device, &words, &SGD_TABLE)?;
        table.words = words;
    }
    let Some(device) = table.device.as_ref() else {
        return Err(check::failed(
            CALL,
            "no tensor table after uploading".into(),
        ));
    };
    let params = (
        device,
        tensors.len() as u32,
        total,
        step.learning_rate,
        step.momentum,
        step.weight_decay,
    );
    // SAFETY: matches `sgd_all`; the table holds one entry per tensor (at most
    // SGD_MAX_TENSORS), each naming three live buffers of its tensor's length (checked) and
    // the running count, so every index the kernel forms lies inside its tensor's buffers.
    unsafe { kernels.sgd_all.launch(grid_stride(total), params) }
}

/// `sgd_all`'s table of buffers, on the host (to see when it changes) and on the device.
#[derive(Default)]
pub(super) struct SgdTable {
    words: Vec<u64>,
    device: Option<CudaSlice<u64>>,
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
        mask.first_image,
        crate::seed::dropout_threshold(mask.rate),
        mask.keep,
        count32(CALL, "images", mask.images)?,
        count32(CALL, "units", mask.units)?,
    );
    // SAFETY: matches `dropout_mask`; the output holds `images × units` values (checked).
    unsafe { kernels.dropout_mask.launch(grid(n), params) }
}

pub(super) fn bias_add(
    kernels: &Functions,
    rows: usize,
    columns: usize,
    y: &mut Buf<Cuda>,
    bias: &Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "bias_add";
    let len = matrix_len(CALL, "y", rows, columns)?;
    at_least(CALL, "y", y.len(), len)?;
    at_least(CALL, "bias", bias.len(), columns)?;
    let n = count32(CALL, "y", len)?;
    if n == 0 {
        return Ok(());
    }
    // A count that fits 32 bits has factors that fit too.
    let params = (&mut *y, bias, n, columns as u32);
    // SAFETY: matches `bias_add`; `y` holds `n` values and `bias` `columns` (checked), and
    // `columns` is not 0 when `n` is not.
    unsafe { kernels.bias_add.launch(grid(n), params) }
}

/// One thread per column summing its rows in order: the trait's order, without atomics.
pub(super) fn bias_backward(
    kernels: &Functions,
    rows: usize,
    columns: usize,
    dy: &Buf<Cuda>,
    db: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "bias_backward";
    let len = matrix_len(CALL, "dy", rows, columns)?;
    at_least(CALL, "dy", dy.len(), len)?;
    at_least(CALL, "db", db.len(), columns)?;
    count32(CALL, "dy", len)?;
    let columns = count32(CALL, "columns", columns)?;
    if columns == 0 {
        return Ok(());
    }
    // Without rows the kernel writes zeros, the sum of nothing.
    let rows = count32(CALL, "rows", rows)?;
    let params = (dy, &mut *db, rows, columns);
    // SAFETY: matches `bias_backward`; the kernel reads `dy` below `rows × columns` (which fits
    // 32 bits, checked) and writes `db` below `columns`, both checked.
    unsafe { kernels.bias_backward.launch(grid(columns), params) }
}

pub(super) fn multiply(
    kernels: &Functions,
    len: usize,
    x: &Buf<Cuda>,
    m: &Buf<Cuda>,
    y: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "multiply";
    at_least(CALL, "x", x.len(), len)?;
    at_least(CALL, "m", m.len(), len)?;
    at_least(CALL, "y", y.len(), len)?;
    let n = count32(CALL, "y", len)?;
    if n == 0 {
        return Ok(());
    }
    let params = (x, m, &mut *y, n);
    // SAFETY: matches `multiply`; all three buffers hold at least `n` values (checked).
    unsafe { kernels.multiply.launch(grid(n), params) }
}

const LABELS: buffers::Upload = buffers::Upload {
    alloc: "cuMemAlloc (softmax_cross_entropy: labels)",
    copy: "cuMemcpyHtoD (softmax_cross_entropy: labels)",
};

/// Checks the labels on the host (the kernel reads `logits[label]` unchecked), uploads them
/// into `device_labels` (grown here when too short) and launches one block per row.
#[allow(clippy::too_many_arguments)]
pub(super) fn softmax_cross_entropy(
    kernels: &Functions,
    dev: &Arc<CudaDevice>,
    device_labels: &mut Option<CudaSlice<u32>>,
    rows: usize,
    mean_over: usize,
    classes: usize,
    logits: &Buf<Cuda>,
    labels: &[u32],
    row_stats: &mut Buf<Cuda>,
    dlogits: &mut Buf<Cuda>,
) -> KernelResult {
    const CALL: &str = "softmax_cross_entropy";
    crate::kernels::host::check_labels(rows, mean_over, classes, labels)?;
    let len = matrix_len(CALL, "logits", rows, classes)?;
    at_least(CALL, "logits", logits.len(), len)?;
    at_least(
        CALL,
        "row_stats",
        row_stats.len(),
        matrix_len(CALL, "row_stats", 2, rows)?,
    )?;
    at_least(CALL, "dlogits", dlogits.len(), len)?;
    count32(CALL, "logits", len)?;
    if rows == 0 {
        return Ok(());
    }
    // Each thread steps through its row by the block's width: a 32-bit index near the top
    // would wrap and never end the loop.
    if classes > (u32::MAX - SOFTMAX_THREADS) as usize {
        return Err(check::failed(
            CALL,
            format!("{classes} classes exceed the kernel's 32-bit indexing"),
        ));
    }
    // One block per row, and a grid holds at most 2^31 − 1 blocks.
    let grid_rows = u32::try_from(rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| {
            check::failed(
                CALL,
                format!("{rows} rows exceed the grid's 2^31 − 1 blocks"),
            )
        })?;
    buffers::upload_into(dev, device_labels, labels, &LABELS)?;
    let Some(device_labels) = device_labels.as_ref() else {
        return Err(check::failed(CALL, "no labels after uploading".into()));
    };
    // The host reference's factor, computed the same way.
    let scale = 1.0f32 / mean_over as f32;
    let params = (
        logits,
        device_labels,
        &mut *row_stats,
        &mut *dlogits,
        classes as u32,
        scale,
    );
    // SAFETY: matches `softmax_cross_entropy`, launched with SOFTMAX_THREADS threads and one
    // block per row: `logits` and `dlogits` hold `rows × classes` values, `row_stats`
    // `2 × rows` and the uploaded labels `rows`, and every label is below `classes` (all checked above).
    unsafe {
        kernels
            .softmax_cross_entropy
            .launch(per_row(grid_rows), params)
    }
}

/// `rows × columns`, or `Failed` if the product overflows (the length checks would then pass
/// for buffers far too short).
fn matrix_len(call: &'static str, what: &str, rows: usize, columns: usize) -> KernelResult<usize> {
    rows.checked_mul(columns)
        .ok_or_else(|| check::failed(call, format!("{what}: {rows} × {columns} values overflow")))
}

/// The channels of an NHWC LRN, which its kernels hold a row of in shared memory.
fn lrn_nhwc_channels(call: &'static str, planes: &Planes) -> KernelResult<u32> {
    if planes.channels > LRN_NHWC_MAX_CHANNELS {
        return Err(check::failed(
            call,
            format!(
                "{} channels: the channels-last LRN kernels hold a pixel's channels in shared \
                 memory, at most {LRN_NHWC_MAX_CHANNELS}; use compute.layout = \"nchw\" \
                 (--layout nchw)",
                planes.channels
            ),
        ));
    }
    Ok(planes.channels as u32)
}

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
