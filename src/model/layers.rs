//! Convolution, max pooling, LRN and fully connected layers from dfdx's stable ops.
//!
//! dfdx 0.13's own `Conv2D`/`MaxPool2D` need a nightly compiler, so the windowed layers are
//! built from `gather` + `matmul` (im2col). Activations stay channels-last, `(B, H·W, C)`:
//! gathering the K×K window of every output pixel gives `(B, Ho·Wo·K·K, C)`, which is already
//! the `(B·Ho·Wo, K·K·C)` matrix a single matmul with the `(K·K·C, O)` weight needs — no copy,
//! no permute. Padding reads a zero row appended to each image.

use dfdx::prelude::*;

/// Activations: `(batch, height × width, channels)`, channels-last.
pub type Act<E, D, T = NoTape> = Tensor<(usize, usize, usize), E, D, T>;
/// Matrices: weights, and activations after flattening.
pub type Mat<E, D, T = NoTape> = Tensor<(usize, usize), E, D, T>;
pub type Vector<E, D> = Tensor<(usize,), E, D>;
pub type NoTape = NoneTape;

/// A square sliding window over a square `size × size` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Window {
    /// Side of the output grid, or `None` when the window does not fit the padded input.
    pub fn out_size(&self) -> Option<usize> {
        let padded = self.size + 2 * self.pad;
        (self.kernel <= padded && self.stride > 0).then(|| (padded - self.kernel) / self.stride + 1)
    }

    /// For every output pixel (row-major) and window offset (row-major), the input pixel it
    /// reads; positions in the padding read pixel `size²`, the zero row.
    pub fn rows(&self) -> Vec<usize> {
        let out = self.out_size().expect("window fits its input");
        let (size, k) = (self.size as isize, self.kernel);
        let mut rows = Vec::with_capacity(out * out * k * k);
        for oy in 0..out {
            for ox in 0..out {
                for ky in 0..k {
                    for kx in 0..k {
                        let y = (oy * self.stride + ky) as isize - self.pad as isize;
                        let x = (ox * self.stride + kx) as isize - self.pad as isize;
                        let inside = (0..size).contains(&y) && (0..size).contains(&x);
                        rows.push(if inside {
                            (y * size + x) as usize
                        } else {
                            (size * size) as usize
                        });
                    }
                }
            }
        }
        rows
    }
}

/// A window's gather indices, replicated per image (dfdx gathers along axis 1 with one index
/// row per batch element). Kept for the last two batch sizes seen: training's, and the short
/// last batch of an evaluation pass.
pub struct GatherIndex<D: Storage<usize>> {
    rows: Vec<usize>,
    cached: Vec<(usize, Index<D>)>,
}

/// Gather indices, one row per image.
type Index<D> = Tensor<(usize, usize), usize, D>;

impl<D: Storage<usize> + TensorFromVec<usize>> GatherIndex<D> {
    pub fn new(window: Window) -> Self {
        Self {
            rows: window.rows(),
            cached: Vec::new(),
        }
    }

    pub fn for_batch(&mut self, batch: usize, dev: &D) -> Index<D> {
        if let Some((_, index)) = self.cached.iter().find(|(b, _)| *b == batch) {
            return index.clone();
        }
        let mut flat = Vec::with_capacity(batch * self.rows.len());
        for _ in 0..batch {
            flat.extend_from_slice(&self.rows);
        }
        let index = dev.tensor_from_vec(flat, (batch, self.rows.len()));
        if self.cached.len() == 2 {
            self.cached.remove(0);
        }
        self.cached.push((batch, index.clone()));
        index
    }
}

/// The tape bounds every layer needs: merge with untracked tensors and with itself, and start
/// empty (for tensors used twice).
pub trait LayerTape<E: Dtype, D: Device<E>>:
    Tape<E, D> + Merge<NoneTape> + Merge<Self> + Default
{
}
impl<E: Dtype, D: Device<E>, T: Tape<E, D> + Merge<NoneTape> + Merge<T> + Default> LayerTape<E, D>
    for T
{
}

/// Weight and bias of a convolution or linear layer, as one `x · W + b`.
pub struct Affine<E: Dtype, D: Device<E>> {
    /// `(inputs, outputs)`; for a convolution the inputs are `(ky, kx, c)`, row-major.
    pub weight: Mat<E, D>,
    pub bias: Vector<E, D>,
}

impl<E: Dtype, D: Device<E>> Affine<E, D> {
    pub fn inputs(&self) -> usize {
        self.weight.shape().0
    }

    pub fn outputs(&self) -> usize {
        self.weight.shape().1
    }

    /// `x · W + b` for `x` of shape `(n, inputs)`.
    pub fn forward<T: LayerTape<E, D>>(&self, x: Mat<E, D, T>) -> Mat<E, D, T> {
        let n = x.shape().0;
        let out = self.outputs();
        x.matmul(self.weight.retaped::<T>())
            + self
                .bias
                .retaped::<T>()
                .broadcast_like::<_, Axis<0>>(&(n, out))
    }
}

/// A square convolution as gather + matmul.
pub struct Conv<E: Dtype, D: Device<E>> {
    pub affine: Affine<E, D>,
    pub window: Window,
    index: GatherIndex<D>,
}

impl<E: Dtype, D: Device<E>> Conv<E, D> {
    pub fn new(affine: Affine<E, D>, window: Window) -> Self {
        Self {
            affine,
            window,
            index: GatherIndex::new(window),
        }
    }

    pub fn out_size(&self) -> usize {
        self.window
            .out_size()
            .expect("checked when the model was built")
    }

    /// `(B, size², C)` → `(B, out², O)`.
    pub fn forward<T: LayerTape<E, D>>(&mut self, x: Act<E, D, T>) -> Act<E, D, T> {
        self.forward_observed(x, &mut |_| {})
    }

    /// `forward`, calling `observe` after each of its stages (for profiling).
    pub fn forward_observed<T: LayerTape<E, D>>(
        &mut self,
        x: Act<E, D, T>,
        observe: &mut dyn FnMut(&'static str),
    ) -> Act<E, D, T> {
        let (batch, pixels, channels) = *x.shape();
        debug_assert_eq!(pixels, self.window.size * self.window.size);
        let dev = x.device().clone();
        let x = if self.window.pad > 0 {
            let zero_row: Act<E, D> = dev.zeros_like(&(batch, 1, channels));
            (x, zero_row).concat_along(Axis::<1>)
        } else {
            x
        };
        let out = self.out_size();
        let k2 = self.window.kernel * self.window.kernel;
        observe("pad");
        let cols: Act<E, D, T> = x.gather(self.index.for_batch(batch, &dev));
        let cols = cols.reshape_like(&(batch * out * out, k2 * channels));
        observe("gather");
        let y = self.affine.forward(cols);
        observe("matmul+bias");
        let outputs = self.affine.outputs();
        y.reshape_like(&(batch, out * out, outputs))
    }
}

/// Max pooling over square windows (no padding).
pub struct MaxPool<D: Storage<usize>> {
    pub window: Window,
    index: GatherIndex<D>,
}

impl<D: Storage<usize> + TensorFromVec<usize>> MaxPool<D> {
    pub fn new(window: Window) -> Self {
        Self {
            window,
            index: GatherIndex::new(window),
        }
    }

    pub fn out_size(&self) -> usize {
        self.window
            .out_size()
            .expect("checked when the model was built")
    }

    /// `(B, size², C)` → `(B, out², C)`: the maximum of each window, per channel.
    pub fn forward<E: Dtype, T: LayerTape<E, D>>(&mut self, x: Act<E, D, T>) -> Act<E, D, T>
    where
        D: Device<E>,
    {
        let (batch, _, channels) = *x.shape();
        let dev = x.device().clone();
        let out = self.out_size();
        let k2 = self.window.kernel * self.window.kernel;
        let windows: Act<E, D, T> = x.gather(self.index.for_batch(batch, &dev));
        let windows = windows.reshape_like(&(batch, out * out, k2, channels));
        windows.max::<(usize, usize, usize), Axis<2>>()
    }
}

/// Local response normalisation across channels, the paper's formula:
/// `b_c = a_c / (k + α Σ_{|c'−c| ≤ n/2} a_c'²)^β`.
/// The windowed sum of squares is one matmul with a fixed banded `(C, C)` 0/1 matrix.
pub struct Lrn<E: Dtype, D: Device<E>> {
    band: Mat<E, D>,
    k: f64,
    alpha: f64,
    beta: f64,
}

impl<E: Dtype, D: Device<E>> Lrn<E, D> {
    pub fn new(dev: &D, channels: usize, size: usize, k: f64, alpha: f64, beta: f64) -> Self {
        let half = size / 2;
        let band = (0..channels * channels)
            .map(|i| {
                let (row, col) = (i / channels, i % channels);
                if row.abs_diff(col) <= half {
                    E::ONE
                } else {
                    E::default()
                }
            })
            .collect();
        Self {
            band: dev.tensor_from_vec(band, (channels, channels)),
            k,
            alpha,
            beta,
        }
    }

    pub fn forward<T: LayerTape<E, D>>(&self, x: Act<E, D, T>) -> Act<E, D, T> {
        let shape = *x.shape();
        let (batch, pixels, channels) = shape;
        // `x` is used twice: once inside the denominator, once as the numerator.
        let numerator = x.with_empty_tape();
        let sums = x
            .square()
            .reshape_like(&(batch * pixels, channels))
            .matmul(self.band.clone());
        let alpha = E::from_f64(self.alpha).unwrap();
        let k = E::from_f64(self.k).unwrap();
        let scale = (sums * alpha + k).powf(-self.beta);
        numerator * scale.reshape_like(&shape)
    }
}

/// `(B, P, C)` → `(B, P·C)`, i.e. flattened in (row, column, channel) order.
pub fn flatten<E: Dtype, D: Device<E>, T: LayerTape<E, D>>(x: Act<E, D, T>) -> Mat<E, D, T> {
    let (batch, pixels, channels) = *x.shape();
    x.reshape_like(&(batch, pixels * channels))
}
