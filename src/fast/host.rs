//! The fast path's kernels as plain loops on the CPU: the reference the CUDA kernels are
//! tested against, and what lets the CPU tests run everything around the kernels (the join
//! to dfdx, parameter ownership, SGD, checkpoints, resume).
//!
//! Written for clarity over speed (direct convolution, parallel over images or filters).

use dfdx::prelude::{Cpu, Storage};
use rayon::prelude::*;

use super::kernels::{Buf, ConvShape, InputBatch, Kernels, LrnParams, Planes, PoolShape, SgdStep};

pub struct HostKernels {
    dev: Cpu,
    mean_table: Vec<f32>,
    row_len: usize,
}

impl HostKernels {
    pub fn new(dev: &Cpu) -> Self {
        Self {
            dev: dev.clone(),
            mean_table: Vec::new(),
            row_len: 0,
        }
    }
}

impl Kernels<Cpu> for HostKernels {
    fn alloc(&mut self, len: usize) -> Buf<Cpu> {
        self.dev.try_alloc_len(len).expect("host allocation")
    }

    fn upload(&mut self, host: &[f32]) -> Buf<Cpu> {
        let mut buf = self.alloc(host.len());
        buf.copy_from_slice(host);
        buf
    }

    fn download(&mut self, buf: &Buf<Cpu>) -> Vec<f32> {
        buf.to_vec()
    }

    fn synchronize(&mut self) {}

    fn set_mean_table(&mut self, table: &[f32], row_len: usize) {
        self.mean_table = table.to_vec();
        self.row_len = row_len;
    }

    fn normalize(&mut self, input: &InputBatch, x: &mut Buf<Cpu>) {
        let (crop, table, row_len) = (input.crop, &self.mean_table, self.row_len);
        let plane = crop * crop;
        x.par_chunks_mut(3 * plane)
            .enumerate()
            .for_each(|(b, image)| {
                for y in 0..crop {
                    let row = input.mean_rows[b * crop + y] as usize * row_len;
                    for xx in 0..crop {
                        for c in 0..3 {
                            let pixel = input.pixels[((b * crop + y) * crop + xx) * 3 + c] as f32;
                            let value = pixel - table[row + xx * 3 + c] + input.lighting[b * 3 + c];
                            image[c * plane + y * crop + xx] = value * input.scale[c];
                        }
                    }
                }
            });
    }

    fn conv_forward(&mut self, s: &ConvShape, x: &Buf<Cpu>, w: &Buf<Cpu>, y: &mut Buf<Cpu>) {
        let (out, k) = (s.out_size(), s.kernel);
        let in_image = s.in_channels * s.size * s.size;
        y.par_chunks_mut(out * out)
            .enumerate()
            .for_each(|(plane, y)| {
                let (b, o) = (plane / s.out_channels, plane % s.out_channels);
                let x = &x[b * in_image..][..in_image];
                let w = &w[o * s.in_channels * k * k..][..s.in_channels * k * k];
                for oy in 0..out {
                    for ox in 0..out {
                        let mut sum = 0f32;
                        for_taps(s, oy, ox, |c, ky, kx, at| {
                            sum += x[at] * w[(c * k + ky) * k + kx];
                        });
                        y[oy * out + ox] = sum;
                    }
                }
            });
    }

    fn conv_backward_data(
        &mut self,
        s: &ConvShape,
        dy: &Buf<Cpu>,
        w: &Buf<Cpu>,
        dx: &mut Buf<Cpu>,
    ) {
        let (out, k) = (s.out_size(), s.kernel);
        let out_image = s.out_channels * out * out;
        dx.par_chunks_mut(s.in_channels * s.size * s.size)
            .enumerate()
            .for_each(|(b, dx)| {
                dx.fill(0.0);
                let dy = &dy[b * out_image..][..out_image];
                for o in 0..s.out_channels {
                    let w = &w[o * s.in_channels * k * k..][..s.in_channels * k * k];
                    for oy in 0..out {
                        for ox in 0..out {
                            let g = dy[(o * out + oy) * out + ox];
                            for_taps(s, oy, ox, |c, ky, kx, at| {
                                dx[at] += g * w[(c * k + ky) * k + kx];
                            });
                        }
                    }
                }
            });
    }

    fn conv_backward_filter(
        &mut self,
        s: &ConvShape,
        x: &Buf<Cpu>,
        dy: &Buf<Cpu>,
        dw: &mut Buf<Cpu>,
    ) {
        let (out, k) = (s.out_size(), s.kernel);
        let in_image = s.in_channels * s.size * s.size;
        let out_image = s.out_channels * out * out;
        dw.par_chunks_mut(s.in_channels * k * k)
            .enumerate()
            .for_each(|(o, dw)| {
                dw.fill(0.0);
                for b in 0..s.batch {
                    let x = &x[b * in_image..][..in_image];
                    let dy = &dy[b * out_image + o * out * out..][..out * out];
                    for oy in 0..out {
                        for ox in 0..out {
                            let g = dy[oy * out + ox];
                            for_taps(s, oy, ox, |c, ky, kx, at| {
                                dw[(c * k + ky) * k + kx] += g * x[at];
                            });
                        }
                    }
                }
            });
    }

    fn bias_relu(&mut self, p: &Planes, y: &mut Buf<Cpu>, bias: &Buf<Cpu>) {
        y.par_chunks_mut(p.pixels)
            .enumerate()
            .for_each(|(plane, y)| {
                let b = bias[plane % p.channels];
                for v in y {
                    *v = (*v + b).max(0.0);
                }
            });
    }

    fn relu_bias_backward(
        &mut self,
        p: &Planes,
        y: &Buf<Cpu>,
        dy: &mut Buf<Cpu>,
        db: &mut Buf<Cpu>,
    ) {
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
    }

    fn lrn_forward(
        &mut self,
        p: &Planes,
        lrn: &LrnParams,
        x: &Buf<Cpu>,
        y: &mut Buf<Cpu>,
        d: &mut Buf<Cpu>,
    ) {
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
    }

    fn lrn_backward(
        &mut self,
        p: &Planes,
        lrn: &LrnParams,
        x: &Buf<Cpu>,
        d: &Buf<Cpu>,
        dy: &Buf<Cpu>,
        dx: &mut Buf<Cpu>,
    ) {
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
    }

    fn pool_forward(&mut self, s: &PoolShape, x: &Buf<Cpu>, y: &mut Buf<Cpu>) {
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
    }

    fn pool_backward(
        &mut self,
        s: &PoolShape,
        x: &Buf<Cpu>,
        _y: &Buf<Cpu>,
        dy: &Buf<Cpu>,
        dx: &mut Buf<Cpu>,
    ) {
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
    }

    fn to_channels_last(&mut self, p: &Planes, x: &Buf<Cpu>, y: &mut Buf<Cpu>) {
        for b in 0..p.batch {
            for c in 0..p.channels {
                for i in 0..p.pixels {
                    y[(b * p.pixels + i) * p.channels + c] = x[(b * p.channels + c) * p.pixels + i];
                }
            }
        }
    }

    fn from_channels_last(&mut self, p: &Planes, y: &Buf<Cpu>, x: &mut Buf<Cpu>) {
        for b in 0..p.batch {
            for c in 0..p.channels {
                for i in 0..p.pixels {
                    x[(b * p.channels + c) * p.pixels + i] = y[(b * p.pixels + i) * p.channels + c];
                }
            }
        }
    }

    fn sgd(&mut self, step: &SgdStep, w: &mut Buf<Cpu>, v: &mut Buf<Cpu>, g: &Buf<Cpu>) {
        for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g.iter()) {
            let g = g + step.weight_decay * *w;
            *v = step.momentum * *v + g;
            *w -= step.learning_rate * *v;
        }
    }
}

/// Calls `tap(c, ky, kx, index into one image's input)` for every input value output pixel
/// `(oy, ox)` reads (taps in the padding are skipped: they read zeros).
fn for_taps(s: &ConvShape, oy: usize, ox: usize, mut tap: impl FnMut(usize, usize, usize, usize)) {
    for c in 0..s.in_channels {
        for ky in 0..s.kernel {
            let Some(iy) = (oy * s.stride + ky)
                .checked_sub(s.pad)
                .filter(|&v| v < s.size)
            else {
                continue;
            };
            for kx in 0..s.kernel {
                let Some(ix) = (ox * s.stride + kx)
                    .checked_sub(s.pad)
                    .filter(|&v| v < s.size)
                else {
                    continue;
                };
                tap(c, ky, kx, (c * s.size + iy) * s.size + ix);
            }
        }
    }
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
