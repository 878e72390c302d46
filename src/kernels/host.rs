//! The fast path's kernels as plain loops on the CPU: the reference the CUDA kernels are
//! tested against, and what lets the CPU tests run everything around the kernels (the join
//! to dfdx, parameter ownership, SGD, checkpoints, resume).
//!
//! Written for clarity first: convolutions as im2col and one matrix product per image.
//!
//! Faults can be injected (`ALEXNET_HOST_FAULT`, see `Faults`), so that the tests can show
//! what a run does when a GPU kernel fails or the GPU runs out of memory.

use dfdx::prelude::{Cpu, Storage};
use rayon::prelude::*;

use super::{
    Buf, ConvShape, InputBatch, KernelError, KernelResult, Kernels, LrnParams, Memory, Planes,
    PoolShape, SgdStep,
};
use crate::pixels;

/// The environment variable that injects faults into the host kernels.
pub const FAULT_VARIABLE: &str = "ALEXNET_HOST_FAULT";

pub struct HostKernels {
    dev: Cpu,
    mean_table: Vec<f32>,
    row_len: usize,
    faults: Faults,
}

/// Injected faults, from `ALEXNET_HOST_FAULT`: comma-separated `CALL@N` (the `N`th call of
/// kernel `CALL`, e.g. `conv_backward_filter@3`, fails) and `memory=BYTES` (the kernels act
/// as a device with that much free memory: `memory()` reports it, and a larger allocation
/// fails as out of memory).
#[derive(Debug, Default)]
struct Faults {
    fail: Vec<(String, u64)>,
    calls: std::collections::HashMap<&'static str, u64>,
    memory: Option<usize>,
}

impl Faults {
    fn parse(text: &str) -> Result<Self, String> {
        let mut faults = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(bytes) = part.strip_prefix("memory=") {
                let bytes = bytes
                    .parse()
                    .map_err(|_| format!("{part:?}: not a byte count"))?;
                faults.memory = Some(bytes);
            } else if let Some((call, n)) = part.split_once('@') {
                let n = n.parse().map_err(|_| format!("{part:?}: not CALL@N"))?;
                faults.fail.push((call.to_string(), n));
            } else {
                return Err(format!("{part:?}: expected CALL@N or memory=BYTES"));
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
    pub fn new(dev: &Cpu) -> KernelResult<Self> {
        let faults = match std::env::var(FAULT_VARIABLE) {
            Ok(text) => Faults::parse(&text)
                .map_err(|e| KernelError::Setup(format!("{FAULT_VARIABLE}: {e}")))?,
            Err(_) => Faults::default(),
        };
        Ok(Self {
            dev: dev.clone(),
            mean_table: Vec::new(),
            row_len: 0,
            faults,
        })
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

impl Kernels<Cpu> for HostKernels {
    fn alloc(&mut self, len: usize) -> KernelResult<Buf<Cpu>> {
        self.faults.enter("alloc")?;
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
        self.faults.enter("upload")?;
        let mut buf = self.alloc(host.len())?;
        buf.copy_from_slice(host);
        Ok(buf)
    }

    fn download(&mut self, buf: &Buf<Cpu>) -> KernelResult<Vec<f32>> {
        self.faults.enter("download")?;
        Ok(buf.to_vec())
    }

    fn synchronize(&mut self) -> KernelResult {
        self.faults.enter("synchronize")
    }

    fn memory(&mut self) -> Option<Memory> {
        self.faults.memory().or_else(system_memory)
    }

    fn set_mean_table(&mut self, table: &[f32], row_len: usize) -> KernelResult {
        self.faults.enter("set_mean_table")?;
        self.mean_table = table.to_vec();
        self.row_len = row_len;
        Ok(())
    }

    fn normalize(&mut self, input: &InputBatch, x: &mut Buf<Cpu>) -> KernelResult {
        self.faults.enter("normalize")?;
        let (crop, table, row_len) = (input.crop, &self.mean_table, self.row_len);
        let plane = crop * crop;
        x.par_chunks_mut(3 * plane)
            .enumerate()
            .for_each(|(b, image)| {
                for y in 0..crop {
                    let row = input.mean_rows[b * crop + y] as usize * row_len;
                    for xx in 0..crop {
                        for c in 0..3 {
                            let pixel = input.pixels[((b * crop + y) * crop + xx) * 3 + c];
                            image[c * plane + y * crop + xx] = pixels::normalize(
                                pixel,
                                table[row + xx * 3 + c],
                                input.lighting[b * 3 + c],
                                input.scale[c],
                            );
                        }
                    }
                }
            });
        Ok(())
    }

    fn conv_forward(
        &mut self,
        s: &ConvShape,
        x: &Buf<Cpu>,
        w: &Buf<Cpu>,
        y: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.faults.enter("conv_forward")?;
        let (rows, pixels) = patch_matrix(s);
        let mut cols = vec![0f32; rows * pixels];
        for (b, y) in y.chunks_mut(s.out_channels * pixels).enumerate() {
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
        Ok(())
    }

    fn conv_backward_data(
        &mut self,
        s: &ConvShape,
        dy: &Buf<Cpu>,
        w: &Buf<Cpu>,
        dx: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.faults.enter("conv_backward_data")?;
        let (rows, pixels) = patch_matrix(s);
        let mut cols = vec![0f32; rows * pixels];
        for (b, dx) in dx.chunks_mut(s.in_channels * s.size * s.size).enumerate() {
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
        Ok(())
    }

    fn conv_backward_filter(
        &mut self,
        s: &ConvShape,
        x: &Buf<Cpu>,
        dy: &Buf<Cpu>,
        dw: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.faults.enter("conv_backward_filter")?;
        let (rows, pixels) = patch_matrix(s);
        let mut cols = vec![0f32; rows * pixels];
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
        Ok(())
    }

    fn bias_relu(&mut self, p: &Planes, y: &mut Buf<Cpu>, bias: &Buf<Cpu>) -> KernelResult {
        self.faults.enter("bias_relu")?;
        y.par_chunks_mut(p.pixels)
            .enumerate()
            .for_each(|(plane, y)| {
                let b = bias[plane % p.channels];
                for v in y {
                    *v = (*v + b).max(0.0);
                }
            });
        Ok(())
    }

    fn relu_bias_backward(
        &mut self,
        p: &Planes,
        y: &Buf<Cpu>,
        dy: &mut Buf<Cpu>,
        db: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.faults.enter("relu_bias_backward")?;
        for (g, &v) in dy.iter_mut().zip(y.iter()) {
            if v <= 0.0 {
                *g = 0.0;
            }
        }
        for (c, db) in db.iter_mut().enumerate() {
            let mut sum = 0f32;
            for b in 0..p.batch {
                sum += dy[(b * p.channels + c) * p.pixels..][..p.pixels]
                    .iter()
                    .sum::<f32>();
            }
            *db = sum;
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
        self.faults.enter("lrn_forward")?;
        let half = lrn.size / 2;
        for b in 0..p.batch {
            for c in 0..p.channels {
                let window = c.saturating_sub(half)..(c + half + 1).min(p.channels);
                for i in 0..p.pixels {
                    let at = |c: usize| (b * p.channels + c) * p.pixels + i;
                    let sum: f32 = window.clone().map(|c| x[at(c)] * x[at(c)]).sum();
                    let denominator = lrn.k + lrn.alpha * sum;
                    d[at(c)] = denominator;
                    y[at(c)] = x[at(c)] * denominator.powf(-lrn.beta);
                }
            }
        }
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
        self.faults.enter("lrn_backward")?;
        let half = lrn.size / 2;
        for b in 0..p.batch {
            for c in 0..p.channels {
                let window = c.saturating_sub(half)..(c + half + 1).min(p.channels);
                for i in 0..p.pixels {
                    let at = |c: usize| (b * p.channels + c) * p.pixels + i;
                    let cross: f32 = window
                        .clone()
                        .map(|c| dy[at(c)] * x[at(c)] * d[at(c)].powf(-lrn.beta - 1.0))
                        .sum();
                    dx[at(c)] = dy[at(c)] * d[at(c)].powf(-lrn.beta)
                        - 2.0 * lrn.alpha * lrn.beta * x[at(c)] * cross;
                }
            }
        }
        Ok(())
    }

    fn pool_forward(&mut self, s: &PoolShape, x: &Buf<Cpu>, y: &mut Buf<Cpu>) -> KernelResult {
        self.faults.enter("pool_forward")?;
        let out = s.out_size();
        for plane in 0..s.batch * s.channels {
            let x = &x[plane * s.size * s.size..][..s.size * s.size];
            for oy in 0..out {
                for ox in 0..out {
                    let (at, _) = window_max(s, x, oy, ox);
                    y[(plane * out + oy) * out + ox] = x[at];
                }
            }
        }
        Ok(())
    }

    fn pool_backward(
        &mut self,
        s: &PoolShape,
        x: &Buf<Cpu>,
        _y: &Buf<Cpu>,
        dy: &Buf<Cpu>,
        dx: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.faults.enter("pool_backward")?;
        let out = s.out_size();
        dx.fill(0.0);
        for plane in 0..s.batch * s.channels {
            let x = &x[plane * s.size * s.size..][..s.size * s.size];
            let dx = &mut dx[plane * s.size * s.size..][..s.size * s.size];
            for oy in 0..out {
                for ox in 0..out {
                    let (at, _) = window_max(s, x, oy, ox);
                    dx[at] += dy[(plane * out + oy) * out + ox];
                }
            }
        }
        Ok(())
    }

    fn flatten_channels_last(
        &mut self,
        p: &Planes,
        x: &Buf<Cpu>,
        y: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.faults.enter("flatten_channels_last")?;
        for b in 0..p.batch {
            for c in 0..p.channels {
                for i in 0..p.pixels {
                    y[(b * p.pixels + i) * p.channels + c] = x[(b * p.channels + c) * p.pixels + i];
                }
            }
        }
        Ok(())
    }

    fn unflatten_channels_last(
        &mut self,
        p: &Planes,
        y: &Buf<Cpu>,
        x: &mut Buf<Cpu>,
    ) -> KernelResult {
        self.faults.enter("unflatten_channels_last")?;
        for b in 0..p.batch {
            for c in 0..p.channels {
                for i in 0..p.pixels {
                    x[(b * p.channels + c) * p.pixels + i] = y[(b * p.pixels + i) * p.channels + c];
                }
            }
        }
        Ok(())
    }

    fn sgd(
        &mut self,
        step: &SgdStep,
        w: &mut Buf<Cpu>,
        v: &mut Buf<Cpu>,
        g: &Buf<Cpu>,
    ) -> KernelResult {
        self.faults.enter("sgd")?;
        for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g.iter()) {
            let g = g + step.weight_decay * *w;
            *v = step.momentum * *v + g;
            *w -= step.learning_rate * *v;
        }
        Ok(())
    }
}

/// `dst (m, n) [+]= lhs (m, k) · rhs (k, n)`, each operand given with its row and column
/// strides (a transposed operand is just swapped strides).
fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    accumulate: bool,
) {
    assert!(dst.len() >= m * n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let threads = rayon::current_num_threads();
    // Safety: the asserts keep every index of the three operands in bounds, and `dst` is
    // borrowed mutably, so it aliases neither input.
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
            1.0,
            1.0,
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
fn im2col(s: &ConvShape, x: &[f32], cols: &mut [f32]) {
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
                        _ => 0.0,
                    };
                }
            }
        });
}

/// The adjoint of `im2col`: each patch value added back to the input pixel it came from.
fn col2im(s: &ConvShape, cols: &[f32], dx: &mut [f32]) {
    let out = s.out_size();
    let k2 = s.kernel * s.kernel;
    dx.par_chunks_mut(s.size * s.size)
        .enumerate()
        .for_each(|(c, plane)| {
            plane.fill(0.0);
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

/// Index (within one plane) and value of the first maximum of window `(oy, ox)`.
fn window_max(s: &PoolShape, x: &[f32], oy: usize, ox: usize) -> (usize, f32) {
    let mut best = (usize::MAX, f32::NEG_INFINITY);
    for ky in 0..s.kernel {
        for kx in 0..s.kernel {
            let at = (oy * s.stride + ky) * s.size + ox * s.stride + kx;
            if best.0 == usize::MAX || x[at] > best.1 {
                best = (at, x[at]);
            }
        }
    }
    best
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

        let mut k = HostKernels::new(&dev)?;
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
        let mut k = HostKernels::new(&dev)?;
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
}
