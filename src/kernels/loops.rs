//! The host kernels' arithmetic as plain loops, generic over the float type: `HostKernels`
//! runs them in f32 (the reference the GPU kernels are held to) and the check's replay in f64
//! (the exact arithmetic the fast path's backward pass is held to). One implementation of each
//! operation, so the two references cannot drift apart.
//!
//! Layouts are `kernels`' (NCHW activations, OIHW filters). Every output is overwritten.

use std::iter::Sum;
use std::ops::{Add, AddAssign, Mul, Sub};

use rayon::prelude::*;

use super::{ConvShape, LrnParams, MatMul, Planes, PoolShape};

/// f32 or f64.
pub trait Real:
    Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + AddAssign
    + Sum
    + Into<f64>
{
    fn from_f32(value: f32) -> Self;
    fn powf(self, exponent: Self) -> Self;
    fn max(self, other: Self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn div(self, other: Self) -> Self;
}

impl Real for f32 {
    fn from_f32(value: f32) -> Self {
        value
    }
    fn powf(self, exponent: Self) -> Self {
        f32::powf(self, exponent)
    }
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn div(self, other: Self) -> Self {
        self / other
    }
}

impl Real for f64 {
    fn from_f32(value: f32) -> Self {
        value as f64
    }
    fn powf(self, exponent: Self) -> Self {
        f64::powf(self, exponent)
    }
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn div(self, other: Self) -> Self {
        self / other
    }
}

/// `y = conv(x, w)`: per image, the patch matrix times the filters.
pub fn conv_forward<T: Real>(s: &ConvShape, x: &[T], w: &[T], y: &mut [T]) {
    let (rows, pixels) = patch_matrix(s);
    let mut cols = vec![T::default(); rows * pixels];
    for (b, y) in y[..s.output_len()]
        .chunks_mut(s.out_channels * pixels)
        .enumerate()
    {
        im2col(s, &x[b * s.in_channels * s.size * s.size..], &mut cols);
        // y_b (O, P) = W (O, C·K·K) · cols (C·K·K, P)
        matmul(
            y,
            (s.out_channels, pixels, rows),
            (w, rows, 1),
            (&cols, pixels, 1),
            false,
        );
    }
}

/// `dx = conv_backward_data(dy, w)`.
pub fn conv_backward_data<T: Real>(s: &ConvShape, dy: &[T], w: &[T], dx: &mut [T]) {
    let (rows, pixels) = patch_matrix(s);
    let mut cols = vec![T::default(); rows * pixels];
    for (b, dx) in dx[..s.input_len()]
        .chunks_mut(s.in_channels * s.size * s.size)
        .enumerate()
    {
        let dy = &dy[b * s.out_channels * pixels..][..s.out_channels * pixels];
        // cols (C·K·K, P) = Wᵀ (C·K·K, O) · dy_b (O, P), then every column back to its pixel.
        matmul(
            &mut cols,
            (rows, pixels, s.out_channels),
            (w, 1, rows),
            (dy, pixels, 1),
            false,
        );
        col2im(s, &cols, dx);
    }
}

/// `dw = conv_backward_filter(x, dy)`, summed over the batch.
pub fn conv_backward_filter<T: Real>(s: &ConvShape, x: &[T], dy: &[T], dw: &mut [T]) {
    let (rows, pixels) = patch_matrix(s);
    let mut cols = vec![T::default(); rows * pixels];
    for b in 0..s.batch {
        im2col(s, &x[b * s.in_channels * s.size * s.size..], &mut cols);
        let dy = &dy[b * s.out_channels * pixels..][..s.out_channels * pixels];
        // dW (O, C·K·K) += dy_b (O, P) · cols_bᵀ (P, C·K·K)
        matmul(
            dw,
            (s.out_channels, rows, pixels),
            (dy, pixels, 1),
            (&cols, 1, pixels),
            b > 0,
        );
    }
}

/// `y ← max(y + bias[c], 0)`.
pub fn bias_relu<T: Real>(p: &Planes, y: &mut [T], bias: &[T]) {
    y[..p.len()]
        .par_chunks_mut(p.pixels)
        .enumerate()
        .for_each(|(plane, y)| {
            let b = bias[plane % p.channels];
            for v in y {
                *v = (*v + b).max(T::default());
            }
        });
}

/// `dy ← dy · [y > 0]` (the ReLU's gradient, from its output) and `db` its per-channel sum.
pub fn relu_bias_backward<T: Real>(p: &Planes, y: &[T], dy: &mut [T], db: &mut [T]) {
    for (g, &v) in dy.iter_mut().zip(y.iter()) {
        if v <= T::default() {
            *g = T::default();
        }
    }
    for (c, db) in db[..p.channels].iter_mut().enumerate() {
        let mut sum = T::default();
        for b in 0..p.batch {
            sum += dy[(b * p.channels + c) * p.pixels..][..p.pixels]
                .iter()
                .copied()
                .sum::<T>();
        }
        *db = sum;
    }
}

/// LRN across channels (see `LrnParams`): `y` and the denominators `d`.
pub fn lrn_forward<T: Real>(p: &Planes, lrn: &LrnParams, x: &[T], y: &mut [T], d: &mut [T]) {
    let half = lrn.size / 2;
    let (k, alpha, beta) = (
        T::from_f32(lrn.k),
        T::from_f32(lrn.alpha),
        T::from_f32(lrn.beta),
    );
    let zero = T::default();
    let image = p.channels * p.pixels;
    // One image per task; each value is computed as in a plain loop.
    y[..p.len()]
        .par_chunks_mut(image)
        .zip(d[..p.len()].par_chunks_mut(image))
        .zip(x[..p.len()].par_chunks(image))
        .for_each(|((y, d), x)| {
            // Each square once, not once per window holding it; every window's sum is still
            // taken afresh in ascending channel order, so the values are a plain loop's.
            let squares: Vec<T> = x.iter().map(|&v| v * v).collect();
            for c in 0..p.channels {
                let window = c.saturating_sub(half)..(c + half + 1).min(p.channels);
                for i in 0..p.pixels {
                    let at = |c: usize| c * p.pixels + i;
                    let sum: T = window.clone().map(|c| squares[at(c)]).sum();
                    let denominator = k + alpha * sum;
                    d[at(c)] = denominator;
                    y[at(c)] = x[at(c)] * denominator.powf(zero - beta);
                }
            }
        });
}

/// LRN's backward pass from its input `x`, denominators `d` and output gradient `dy`.
pub fn lrn_backward<T: Real>(
    p: &Planes,
    lrn: &LrnParams,
    x: &[T],
    d: &[T],
    dy: &[T],
    dx: &mut [T],
) {
    let half = lrn.size / 2;
    let (alpha, beta, one, two) = (
        T::from_f32(lrn.alpha),
        T::from_f32(lrn.beta),
        T::from_f32(1.0),
        T::from_f32(2.0),
    );
    let zero = T::default();
    let image = p.channels * p.pixels;
    dx[..p.len()]
        .par_chunks_mut(image)
        .enumerate()
        .for_each(|(b, dx)| {
            let (x, d, dy) = (
                &x[b * image..][..image],
                &d[b * image..][..image],
                &dy[b * image..][..image],
            );
            // Each cross term (a power) once, not once per window holding it; as in the forward,
            // every window's sum is taken afresh in ascending channel order.
            let exponent = zero - beta - one;
            let terms: Vec<T> = (0..image)
                .map(|at| dy[at] * x[at] * d[at].powf(exponent))
                .collect();
            for c in 0..p.channels {
                let window = c.saturating_sub(half)..(c + half + 1).min(p.channels);
                for i in 0..p.pixels {
                    let at = |c: usize| c * p.pixels + i;
                    let cross: T = window.clone().map(|c| terms[at(c)]).sum();
                    dx[at(c)] = dy[at(c)] * d[at(c)].powf(zero - beta)
                        - two * alpha * beta * x[at(c)] * cross;
                }
            }
        });
}

/// Max pooling: each window's first maximum, and in `argmax` that maximum's index within its
/// input plane (`iy · size + ix`), the choice `pool_backward` routes the gradient by. Exact
/// for planes of up to 2^24 values (`MAX_POOL_PLANE`), in f64 as in f32.
pub fn pool_forward<T: Real>(s: &PoolShape, x: &[T], y: &mut [T], argmax: &mut [T]) {
    let out = s.out_size();
    let plane = s.size * s.size;
    y[..s.output_len()]
        .par_chunks_mut(out * out)
        .zip(argmax[..s.output_len()].par_chunks_mut(out * out))
        .enumerate()
        .for_each(|(p, (y, argmax))| {
            let x = &x[p * plane..][..plane];
            for oy in 0..out {
                for ox in 0..out {
                    let at = window_max(s, x, oy, ox);
                    y[oy * out + ox] = x[at];
                    argmax[oy * out + ox] = T::from_f32(at as f32);
                }
            }
        });
}

/// Max pooling's backward pass: each window's gradient to the input its `argmax` (from
/// `pool_forward`) names, windows visited row by row so that every input's sum is added up in
/// one fixed order. An index outside its window routes nowhere, as in the CUDA kernel, which
/// looks for each input's index among the windows covering it.
pub fn pool_backward<T: Real>(s: &PoolShape, argmax: &[T], dy: &[T], dx: &mut [T]) {
    let out = s.out_size();
    let plane = s.size * s.size;
    dx[..s.input_len()]
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(p, dx)| {
            dx.fill(T::default());
            let windows = p * out * out..(p + 1) * out * out;
            let (argmax, dy) = (&argmax[windows.clone()], &dy[windows]);
            let covers = |o: usize, i: usize| (o * s.stride..o * s.stride + s.kernel).contains(&i);
            for oy in 0..out {
                for ox in 0..out {
                    let w = oy * out + ox;
                    // Saturating, as the CUDA kernel's conversion is: NaN reads as 0.
                    let at = Into::<f64>::into(argmax[w]) as usize;
                    if at < plane && covers(oy, at / s.size) && covers(ox, at % s.size) {
                        dx[at] += dy[w];
                    }
                }
            }
        });
}

/// NCHW planes to channels-last rows, `(B, pixels · channels)`.
pub fn flatten_channels_last<T: Real>(p: &Planes, x: &[T], y: &mut [T]) {
    for b in 0..p.batch {
        for c in 0..p.channels {
            for i in 0..p.pixels {
                y[(b * p.pixels + i) * p.channels + c] = x[(b * p.channels + c) * p.pixels + i];
            }
        }
    }
}

/// The inverse of `flatten_channels_last`.
pub fn unflatten_channels_last<T: Real>(p: &Planes, y: &[T], x: &mut [T]) {
    for b in 0..p.batch {
        for c in 0..p.channels {
            for i in 0..p.pixels {
                x[(b * p.channels + c) * p.pixels + i] = y[(b * p.pixels + i) * p.channels + c];
            }
        }
    }
}

/// Channels-last values `(B, pixels · C)` of `p` as a new NCHW vector (the layout these loops
/// compute in).
pub fn to_nchw<T: Real>(p: &Planes, channels_last: &[T]) -> Vec<T> {
    let mut nchw = vec![T::default(); p.len()];
    unflatten_channels_last(p, channels_last, &mut nchw);
    nchw
}

/// `c = op(a) · op(b)` (see `MatMul`).
pub fn dense_matmul<T: Real>(mm: &MatMul, a: &[T], b: &[T], c: &mut [T]) {
    let (m, n, k) = (mm.m, mm.n, mm.k);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(T::default());
        return;
    }
    // A transposed operand is the stored matrix read with its strides swapped.
    let a_strides = if mm.a_transposed { (1, m) } else { (k, 1) };
    let b_strides = if mm.b_transposed { (1, k) } else { (n, 1) };
    matmul(
        c,
        (m, n, k),
        (a, a_strides.0, a_strides.1),
        (b, b_strides.0, b_strides.1),
        false,
    );
}

/// `y[r, c] += bias[c]` over `rows × columns`.
pub fn bias_add<T: Real>(rows: usize, columns: usize, y: &mut [T], bias: &[T]) {
    for row in y[..rows * columns].chunks_mut(columns.max(1)) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `db[c] = Σ_r dy[r, c]`, rows in order.
pub fn bias_backward<T: Real>(rows: usize, columns: usize, dy: &[T], db: &mut [T]) {
    db[..columns].fill(T::default());
    for row in dy[..rows * columns].chunks(columns.max(1)) {
        for (d, &g) in db.iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// How many classes other than `label` score at least as high as it — a NaN score counts as
/// higher — or `None` when the label's own score is NaN: top-1 when 0, top-5 below 5
/// (`engine::metrics::top1_top5`), so ties count against the label and a constant output
/// never scores.
pub fn classes_above<T: PartialOrd + Copy>(scores: &[T], label: usize) -> Option<usize> {
    let target = scores[label];
    target.partial_cmp(&target)?;
    let above = scores
        .iter()
        .enumerate()
        .filter(|&(i, &s)| i != label && s.partial_cmp(&target) != Some(std::cmp::Ordering::Less))
        .count();
    Some(above)
}

/// Each row's softmax cross-entropy loss `ln Σ exp(z − max) − (z[label] − max)` into
/// `row_stats[r]`, the number of other classes scoring at least as high as the label into
/// `row_stats[rows + r]` (`classes_above`; ∞ for a NaN label score), and the gradient
/// of the mean over `mean_over` rows, `(softmax(z) − onehot(label)) / mean_over`. Labels are
/// trusted to be below `classes` (the kernels check them).
pub fn softmax_cross_entropy<T: Real>(
    classes: usize,
    mean_over: usize,
    logits: &[T],
    labels: &[u32],
    row_stats: &mut [T],
    dlogits: &mut [T],
) {
    let rows = labels.len();
    let (losses, above) = row_stats[..2 * rows].split_at_mut(rows);
    for ((r, &label), above) in labels.iter().enumerate().zip(above) {
        let z = &logits[r * classes..][..classes];
        *above = match classes_above(z, label as usize) {
            Some(n) => T::from_f32(n as f32),
            None => T::from_f32(f32::INFINITY),
        };
    }
    let scale = T::from_f32(1.0).div(T::from_f32(mean_over as f32));
    let one = T::from_f32(1.0);
    for (r, &label) in labels.iter().enumerate() {
        let z = &logits[r * classes..][..classes];
        let g = &mut dlogits[r * classes..][..classes];
        let max = z.iter().copied().fold(z[0], T::max);
        let mut sum = T::default();
        for (g, &v) in g.iter_mut().zip(z) {
            *g = (v - max).exp();
            sum += *g;
        }
        let label = label as usize;
        losses[r] = sum.ln() - (z[label] - max);
        for (c, g) in g.iter_mut().enumerate() {
            let p = g.div(sum);
            *g = if c == label { p - one } else { p } * scale;
        }
    }
}

/// `dst (m, n) [+]= lhs (m, k) · rhs (k, n)`, each operand given with its row and column
/// strides (a transposed operand is just swapped strides).
fn matmul<T: Real>(
    dst: &mut [T],
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[T], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[T], usize, usize),
    accumulate: bool,
) {
    assert!(dst.len() >= m * n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let threads = rayon::current_num_threads();
    let one = T::from_f32(1.0);
    // Safety: the asserts keep every index of the three operands in bounds, and `dst` is
    // borrowed mutably, so it aliases neither input. `gemm` takes f32 and f64.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            one,
            one,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        );
    }
}

/// `(rows, columns)` of one image's patch matrix: `(C·K·K, output pixels)`.
fn patch_matrix(s: &ConvShape) -> (usize, usize) {
    (
        s.in_channels * s.kernel * s.kernel,
        s.out_size() * s.out_size(),
    )
}

/// The input patches of one image as a `(C·K·K, P)` matrix, rows in OIHW filter order
/// `(c, ky, kx)`; taps in the padding read 0.
fn im2col<T: Real>(s: &ConvShape, x: &[T], cols: &mut [T]) {
    let out = s.out_size();
    cols.par_chunks_mut(out * out)
        .enumerate()
        .for_each(|(row, col)| {
            let (c, ky, kx) = (
                row / (s.kernel * s.kernel),
                row / s.kernel % s.kernel,
                row % s.kernel,
            );
            let plane = &x[c * s.size * s.size..][..s.size * s.size];
            for oy in 0..out {
                let iy = (oy * s.stride + ky)
                    .checked_sub(s.pad)
                    .filter(|&v| v < s.size);
                for ox in 0..out {
                    let ix = (ox * s.stride + kx)
                        .checked_sub(s.pad)
                        .filter(|&v| v < s.size);
                    col[oy * out + ox] = match (iy, ix) {
                        (Some(iy), Some(ix)) => plane[iy * s.size + ix],
                        _ => T::default(),
                    };
                }
            }
        });
}

/// The adjoint of `im2col`: each patch value added back to the input pixel it came from.
fn col2im<T: Real>(s: &ConvShape, cols: &[T], dx: &mut [T]) {
    let out = s.out_size();
    let k2 = s.kernel * s.kernel;
    dx.par_chunks_mut(s.size * s.size)
        .enumerate()
        .for_each(|(c, plane)| {
            plane.fill(T::default());
            for tap in 0..k2 {
                let (ky, kx) = (tap / s.kernel, tap % s.kernel);
                let col = &cols[(c * k2 + tap) * out * out..][..out * out];
                for oy in 0..out {
                    let Some(iy) = (oy * s.stride + ky)
                        .checked_sub(s.pad)
                        .filter(|&v| v < s.size)
                    else {
                        continue;
                    };
                    for ox in 0..out {
                        if let Some(ix) = (ox * s.stride + kx)
                            .checked_sub(s.pad)
                            .filter(|&v| v < s.size)
                        {
                            plane[iy * s.size + ix] += col[oy * out + ox];
                        }
                    }
                }
            }
        });
}

/// Index (within one plane) of the first maximum of window `(oy, ox)`.
pub fn window_max<T: Real>(s: &PoolShape, x: &[T], oy: usize, ox: usize) -> usize {
    let mut best = oy * s.stride * s.size + ox * s.stride;
    for ky in 0..s.kernel {
        for kx in 0..s.kernel {
            let at = (oy * s.stride + ky) * s.size + ox * s.stride + kx;
            if x[at] > x[best] {
                best = at;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 5×5 planes, 3×3 windows at stride 2 (2×2 windows, overlapping in row and column 2).
    const SHAPE: PoolShape = PoolShape {
        batch: 1,
        channels: 2,
        size: 5,
        kernel: 3,
        stride: 2,
    };

    /// Tied maxima go to the first in row-major order; a NaN is kept only where it comes first
    /// in its window; an input chosen by several windows gets their gradients added in window
    /// order.
    #[test]
    fn pooling_keeps_the_first_maximum_and_routes_the_gradient_to_it() {
        let nan = f32::NAN;
        #[rustfmt::skip]
        let x = [
            // Ties: 2 at 1, 2, 6, 10, 12 in the first window, 5 at 9 and 14.
            1.0, 2.0, 2.0, 0.0, 0.0,
            0.0, 2.0, 0.0, 0.0, 5.0,
            2.0, 0.0, 2.0, 0.0, 5.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 1.0,
            // NaN first in the first window; 9 at 12 the maximum of the other three.
            nan, 1.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 9.0, 0.0, nan,
            0.0, 0.0, 0.0, 0.0, 0.0,
            3.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let (mut y, mut argmax) = ([0.0; 8], [0.0; 8]);
        pool_forward(&SHAPE, &x, &mut y, &mut argmax);
        assert_eq!(argmax, [1.0, 9.0, 10.0, 14.0, 0.0, 12.0, 12.0, 12.0]);
        assert_eq!(y[..4], [2.0, 5.0, 2.0, 5.0]);
        assert!(y[4].is_nan());
        assert_eq!(y[5..], [9.0, 9.0, 9.0]);

        // Added in another order (1e8 + 1 first), the three gradients at 12 would cancel to 0.
        let dy = [1.0, 2.0, 3.0, 4.0, 0.5, 1e8, -1e8, 1.0];
        let mut dx = [f32::NAN; 50];
        pool_backward(&SHAPE, &argmax, &dy, &mut dx);
        let mut want = [0.0; 50];
        (want[1], want[9], want[10], want[14]) = (1.0, 2.0, 3.0, 4.0);
        (want[25], want[25 + 12]) = (0.5, 1.0);
        assert_eq!(dx, want);
    }

    /// An index outside its window, which `pool_forward` never writes, routes nowhere (as the
    /// CUDA kernel's gather finds it in no window covering it) instead of indexing out of
    /// bounds.
    #[test]
    fn an_index_outside_its_window_routes_no_gradient() {
        let shape = PoolShape {
            channels: 1,
            ..SHAPE
        };
        let argmax = [4.0, 2.0, 1e9, f32::NAN];
        let mut dx = [f32::NAN; 25];
        pool_backward(&shape, &argmax, &[1.0, 2.0, 3.0, 4.0], &mut dx);
        let mut want = [0.0; 25];
        // Only window (0, 1) covers its index. Window (0, 0) names 4, in its row but not its
        // columns; 1e9 lies outside the plane; NaN reads as 0, far from window (1, 1).
        want[2] = 2.0;
        assert_eq!(dx, want);
    }
}
