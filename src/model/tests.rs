//! Tests of the model: each layer against a naive reference written here in plain loops
//! straight from its definition, gradients against central finite differences (f64), the
//! layer table against the paper's (and torchvision's) shapes and parameter counts, and the
//! checkpoint round trip.

use std::path::Path;

use dfdx::prelude::*;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{export_layers, import_layers, CheckpointError, TensorFile};
use super::*;
use crate::config::ModelConfig;

type Dev = Cpu;

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| lo + (hi - lo) * rng.random::<f64>())
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn affine(dev: &Dev, weight: &[f64], bias: &[f64]) -> Affine<f64, Dev> {
    let outputs = bias.len();
    Affine {
        weight: dev.tensor_from_vec(weight.to_vec(), (weight.len() / outputs, outputs)),
        bias: dev.tensor_from_vec(bias.to_vec(), (outputs,)),
    }
}

fn act(dev: &Dev, values: &[f64], batch: usize, pixels: usize, channels: usize) -> Act<f64, Dev> {
    dev.tensor_from_vec(values.to_vec(), (batch, pixels, channels))
}

// ---------------------------------------------------------------------------------------
// Naive references: the definitions, in loops, independent of `Window::rows` and of dfdx.
// ---------------------------------------------------------------------------------------

/// Output side of a window, from the usual formula ⌊(size + 2·pad − kernel) / stride⌋ + 1.
fn naive_out(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - kernel) / stride + 1
}

/// Convolution by definition, channels-last:
/// `y[b, oy, ox, o] = bias[o] + Σ_{ky, kx, c} x[b, oy·s + ky − p, ox·s + kx − p, c] · w[(ky·K + kx)·C + c, o]`,
/// with `x` zero outside the image.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f64],
    batch: usize,
    size: usize,
    cin: usize,
    w: &[f64],
    bias: &[f64],
    (kernel, stride, pad): (usize, usize, usize),
) -> Vec<f64> {
    let cout = bias.len();
    let out = naive_out(size, kernel, stride, pad);
    let mut y = vec![0.0; batch * out * out * cout];
    for b in 0..batch {
        for oy in 0..out {
            for ox in 0..out {
                for o in 0..cout {
                    let mut acc = bias[o];
                    for ky in 0..kernel {
                        for kx in 0..kernel {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy < 0 || ix < 0 || iy >= size as isize || ix >= size as isize {
                                continue;
                            }
                            let (iy, ix) = (iy as usize, ix as usize);
                            for c in 0..cin {
                                let xv = x[((b * size + iy) * size + ix) * cin + c];
                                let wv = w[((ky * kernel + kx) * cin + c) * cout + o];
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((b * out + oy) * out + ox) * cout + o] = acc;
                }
            }
        }
    }
    y
}

/// Max pooling by definition: `y[b, oy, ox, c] = max_{ky, kx} x[b, oy·s + ky, ox·s + kx, c]`.
fn naive_pool(
    x: &[f64],
    batch: usize,
    size: usize,
    channels: usize,
    (kernel, stride): (usize, usize),
) -> Vec<f64> {
    let out = naive_out(size, kernel, stride, 0);
    let mut y = vec![f64::NEG_INFINITY; batch * out * out * channels];
    for b in 0..batch {
        for oy in 0..out {
            for ox in 0..out {
                for c in 0..channels {
                    let cell = &mut y[((b * out + oy) * out + ox) * channels + c];
                    for ky in 0..kernel {
                        for kx in 0..kernel {
                            let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                            *cell = cell.max(x[((b * size + iy) * size + ix) * channels + c]);
                        }
                    }
                }
            }
        }
    }
    y
}

/// The paper's LRN (section 3.3):
/// `b_c = a_c / (k + α Σ_{c' = max(0, c − n/2)}^{min(C − 1, c + n/2)} a_c'²)^β`.
fn naive_lrn(x: &[f64], channels: usize, n: usize, k: f64, alpha: f64, beta: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (pixel, out) in x.chunks(channels).zip(y.chunks_mut(channels)) {
        for c in 0..channels {
            let lo = c.saturating_sub(n / 2);
            let hi = (c + n / 2).min(channels - 1);
            let sum: f64 = (lo..=hi).map(|j| pixel[j] * pixel[j]).sum();
            out[c] = pixel[c] / (k + alpha * sum).powf(beta);
        }
    }
    y
}

// ---------------------------------------------------------------------------------------
// Finite differences.
// ---------------------------------------------------------------------------------------

const EPS: f64 = 1e-6;
/// Relative error allowed between backprop and central differences.
const GRAD_TOL: f64 = 1e-6;
/// Gradients smaller than this are compared absolutely (relative to `GRAD_FLOOR`), so that
/// the roundoff of `(f(x+ε) − f(x−ε)) / 2ε` (≈ 1e-16·|f| / ε) does not fail near-zero entries.
const GRAD_FLOOR: f64 = 1e-3;

fn relative_error(analytic: f64, numeric: f64) -> f64 {
    (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(GRAD_FLOOR)
}

/// Compares `analytic[i]` with the central difference of `f` at `values[i]` for every `i` in
/// `indices`; returns the worst relative error.
fn check_gradient(
    what: &str,
    values: &[f64],
    analytic: &[f64],
    indices: impl IntoIterator<Item = usize>,
    mut f: impl FnMut(&[f64]) -> f64,
) -> f64 {
    assert_eq!(values.len(), analytic.len(), "{what}");
    let mut v = values.to_vec();
    let mut worst: f64 = 0.0;
    for i in indices {
        let original = v[i];
        v[i] = original + EPS;
        let plus = f(&v);
        v[i] = original - EPS;
        let minus = f(&v);
        v[i] = original;
        let numeric = (plus - minus) / (2.0 * EPS);
        let err = relative_error(analytic[i], numeric);
        assert!(
            err < GRAD_TOL,
            "{what}[{i}]: backprop {} vs central difference {numeric} (relative error {err:.2e})",
            analytic[i]
        );
        worst = worst.max(err);
    }
    worst
}

// ---------------------------------------------------------------------------------------
// Convolution.
// ---------------------------------------------------------------------------------------

fn conv_forward(
    dev: &Dev,
    x: &[f64],
    (batch, size, cin): (usize, usize, usize),
    w: &[f64],
    b: &[f64],
    (kernel, stride, pad): (usize, usize, usize),
) -> Vec<f64> {
    let window = Window {
        size,
        kernel,
        stride,
        pad,
    };
    let mut conv = Conv::new(affine(dev, w, b), window);
    let y = conv.forward(act(dev, x, batch, size * size, cin));
    let out = naive_out(size, kernel, stride, pad);
    assert_eq!(*y.shape(), (batch, out * out, b.len()));
    y.as_vec()
}

#[test]
fn conv_matches_naive_convolution() {
    let dev = Dev::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // (size, in channels, out channels, (kernel, stride, pad))
    let cases = [
        (15, 3, 4, (5, 4, 2)),  // conv1-like stride 4, pad 2
        (15, 3, 4, (5, 2, 2)),  // stride 2, pad 2
        (19, 3, 4, (11, 4, 2)), // conv1's own kernel, 4×4 output
        (7, 5, 6, (3, 1, 1)),   // conv3-like
        (8, 2, 3, (3, 1, 0)),   // no padding
        (9, 3, 2, (4, 3, 0)),   // stride leaves the last column unread
        (5, 4, 3, (5, 1, 2)),   // conv2-like, kernel as large as the image
    ];
    for (size, cin, cout, geometry) in cases {
        let batch = 3;
        let (kernel, _, _) = geometry;
        let x = uniform(&mut rng, batch * size * size * cin, -1.0, 1.0);
        let w = uniform(&mut rng, kernel * kernel * cin * cout, -1.0, 1.0);
        let b = uniform(&mut rng, cout, -1.0, 1.0);
        let got = conv_forward(&dev, &x, (batch, size, cin), &w, &b, geometry);
        let want = naive_conv(&x, batch, size, cin, &w, &b, geometry);
        let err = max_abs_diff(&got, &want);
        assert!(
            err < 1e-12,
            "size {size}, {cin}→{cout}, {geometry:?}: {err:e}"
        );
        // The images differ, so a batch mix-up would show.
        let per_image = want.len() / batch;
        assert_ne!(want[..per_image], want[per_image..2 * per_image]);
    }
}

#[test]
fn conv_gradients_match_finite_differences() {
    let dev = Dev::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // Padded and strided, and unpadded; 2 images.
    for (size, cin, cout, geometry) in [(7, 2, 3, (3, 2, 1)), (6, 3, 2, (3, 1, 0))] {
        let batch = 2;
        let (kernel, stride, pad) = geometry;
        let out = naive_out(size, kernel, stride, pad);
        let x = uniform(&mut rng, batch * size * size * cin, -1.0, 1.0);
        let w = uniform(&mut rng, kernel * kernel * cin * cout, -1.0, 1.0);
        let b = uniform(&mut rng, cout, -1.0, 1.0);
        let r = uniform(&mut rng, batch * out * out * cout, -1.0, 1.0);

        // Backprop of loss = Σ conv(x) ⊙ r.
        let window = Window {
            size,
            kernel,
            stride,
            pad,
        };
        let mut conv = Conv::new(affine(&dev, &w, &b), window);
        let x_t = act(&dev, &x, batch, size * size, cin);
        let r_t: Act<f64, Dev> = act(&dev, &r, batch, out * out, cout);
        let y = conv.forward(x_t.clone().traced(Gradients::leaky()));
        let g = (y * r_t).sum::<Rank0, _>().backward();
        let gw = g.get(&conv.affine.weight).as_vec();
        let gb = g.get(&conv.affine.bias).as_vec();
        let gx = g.get(&x_t).as_vec();

        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            dot(
                &conv_forward(&dev, x, (batch, size, cin), w, b, geometry),
                &r,
            )
        };
        let e1 = check_gradient("conv weight", &w, &gw, 0..w.len(), |w| loss(&x, w, &b));
        let e2 = check_gradient("conv bias", &b, &gb, 0..b.len(), |b| loss(&x, &w, b));
        let e3 = check_gradient("conv input", &x, &gx, 0..x.len(), |x| loss(x, &w, &b));
        eprintln!("conv {geometry:?} gradient relative errors: w {e1:.1e}, b {e2:.1e}, x {e3:.1e}");
    }
}

// ---------------------------------------------------------------------------------------
// Max pooling.
// ---------------------------------------------------------------------------------------

fn pool_forward(dev: &Dev, x: &[f64], (batch, size, channels): (usize, usize, usize)) -> Vec<f64> {
    let mut pool = MaxPool::new(Window {
        size,
        kernel: 3,
        stride: 2,
        pad: 0,
    });
    let y = pool.forward(act(dev, x, batch, size * size, channels));
    let out = naive_out(size, 3, 2, 0);
    assert_eq!(*y.shape(), (batch, out * out, channels));
    y.as_vec()
}

#[test]
fn max_pool_matches_naive_pooling() {
    let dev = Dev::default();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // 7 → 3, 8 → 3 (last row and column unread), 13 → 6, 55 → 27 (pool1's geometry).
    for (size, channels) in [(7, 3), (8, 2), (13, 4), (55, 2)] {
        let batch = 2;
        // Continuous random values: ties have probability zero.
        let x = uniform(&mut rng, batch * size * size * channels, -1.0, 1.0);
        let got = pool_forward(&dev, &x, (batch, size, channels));
        let want = naive_pool(&x, batch, size, channels, (3, 2));
        // A maximum is one of its inputs: exact.
        assert_eq!(got, want, "size {size}");
    }
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    let dev = Dev::default();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (batch, size, channels) = (2, 7, 3);
    let out = naive_out(size, 3, 2, 0);
    let x = uniform(&mut rng, batch * size * size * channels, -1.0, 1.0);
    let r = uniform(&mut rng, batch * out * out * channels, -1.0, 1.0);
    let mut pool = MaxPool::new(Window {
        size,
        kernel: 3,
        stride: 2,
        pad: 0,
    });
    let x_t = act(&dev, &x, batch, size * size, channels);
    let r_t: Act<f64, Dev> = act(&dev, &r, batch, out * out, channels);
    let y = pool.forward(x_t.clone().traced(Gradients::leaky()));
    let gx = g_of(&x_t, (y * r_t).sum::<Rank0, _>().backward());
    // The loss is piecewise linear in x; with continuous random inputs no two values of a
    // window are within 2ε, so ±ε never moves an argmax and the differences are exact up
    // to roundoff. (Inputs that are the maximum of two overlapping windows get both
    // gradients; all inputs are checked.)
    let e = check_gradient("max-pool input", &x, &gx, 0..x.len(), |x| {
        dot(&pool_forward(&dev, x, (batch, size, channels)), &r)
    });
    // Inputs that are no window's maximum get no gradient.
    assert!(gx.contains(&0.0));
    eprintln!("max-pool gradient relative error {e:.1e}");
}

fn g_of(x: &Act<f64, Dev>, g: Gradients<f64, Dev>) -> Vec<f64> {
    g.get(x).as_vec()
}

// ---------------------------------------------------------------------------------------
// Local response normalisation.
// ---------------------------------------------------------------------------------------

#[test]
fn lrn_matches_the_paper_formula() {
    let dev = Dev::default();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // (channels, n, k, α, β, input range)
    let cases = [
        (7, 5, 2.0, 0.3, 0.75, 2.0), // edges: channels 0, 1, 5, 6 have clipped windows
        (3, 5, 2.0, 0.3, 0.75, 2.0), // fewer channels than the window
        (1, 5, 1.0, 0.5, 0.5, 2.0),  // a single channel
        (6, 3, 1.5, 0.2, 1.0, 2.0),  // n = 3
        (16, 5, 2.0, 1e-4, 0.75, 50.0), // the paper's constants, ReLU-sized inputs
    ];
    for (channels, n, k, alpha, beta, range) in cases {
        let (batch, pixels) = (2, 5);
        let x = uniform(&mut rng, batch * pixels * channels, -range, range);
        let lrn = Lrn::new(&dev, channels, n, k, alpha, beta);
        let y = lrn.forward(act(&dev, &x, batch, pixels, channels));
        assert_eq!(*y.shape(), (batch, pixels, channels));
        let want = naive_lrn(&x, channels, n, k, alpha, beta);
        let err = max_abs_diff(&y.as_vec(), &want);
        assert!(err < 1e-12, "C={channels}, n={n}: {err:e}");
        // The normalisation is not the identity here.
        assert!(max_abs_diff(&want, &x) > 1e-3, "C={channels}, n={n}");
    }
}

#[test]
fn lrn_gradient_matches_finite_differences() {
    let dev = Dev::default();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for (channels, n) in [(7, 5), (3, 5)] {
        let (batch, pixels, k, alpha, beta) = (2, 4, 2.0, 0.3, 0.75);
        let x = uniform(&mut rng, batch * pixels * channels, -2.0, 2.0);
        let r = uniform(&mut rng, x.len(), -1.0, 1.0);
        let lrn = Lrn::new(&dev, channels, n, k, alpha, beta);
        let x_t = act(&dev, &x, batch, pixels, channels);
        let r_t: Act<f64, Dev> = act(&dev, &r, batch, pixels, channels);
        let y = lrn.forward(x_t.clone().traced(Gradients::leaky()));
        let gx = g_of(&x_t, (y * r_t).sum::<Rank0, _>().backward());
        // Smooth in x; the error is roundoff plus O(ε²).
        let e = check_gradient("lrn input", &x, &gx, 0..x.len(), |x| {
            let y = lrn.forward(act(&dev, x, batch, pixels, channels));
            dot(&y.as_vec(), &r)
        });
        // Check the backprop against the paper formula's forward too (not only our own).
        let e_naive = check_gradient("lrn input (naive forward)", &x, &gx, 0..x.len(), |x| {
            dot(&naive_lrn(x, channels, n, k, alpha, beta), &r)
        });
        eprintln!("lrn C={channels} gradient relative error {e:.1e} (vs naive {e_naive:.1e})");
    }
}

// ---------------------------------------------------------------------------------------
// The whole network.
// ---------------------------------------------------------------------------------------

/// The smallest input `Spec::new` accepts: 63 → conv1 15 → pool 7 → conv2 7 → pool 3 →
/// conv3..5 3 → pool 1.
const MIN_INPUT: usize = 63;

fn tiny_config() -> ModelConfig {
    ModelConfig {
        conv_channels: [4, 4, 4, 4, 4],
        fc_units: 8,
        dropout: 0.0,
        lrn: true,
        // α larger than the paper's 1e-4, so that LRN visibly shapes the gradients.
        lrn_alpha: 0.1,
        ..ModelConfig::default()
    }
}

#[test]
fn smallest_input_and_class_count() {
    let cfg = tiny_config();
    let spec = Spec::new(&cfg, MIN_INPUT, 3).unwrap();
    assert_eq!(spec.final_side(), 1);
    assert_eq!(spec.fc6_inputs(), 4);
    let err = Spec::new(&cfg, MIN_INPUT - 1, 3).unwrap_err();
    assert!(
        matches!(err, ModelError::InputTooSmall { input: 62, .. }),
        "{err}"
    );
    assert!(matches!(
        Spec::new(&cfg, 224, 1),
        Err(ModelError::TooFewClasses(1))
    ));
}

#[test]
fn network_gradients_match_finite_differences() {
    let dev = Dev::default();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let spec = Spec::new(&tiny_config(), MIN_INPUT, 3).unwrap();
    let batch = 2;
    // He-style uniform weights and small random biases keep every layer alive (with the
    // paper's N(0, 0.01²) most of a 4-channel net's signal would come from the biases).
    let layers: Vec<Affine<f64, Dev>> = AlexNet::<f64, Dev>::affine_shapes(&spec)
        .iter()
        .map(|&(inputs, outputs)| {
            let a = (6.0 / inputs as f64).sqrt();
            let w = uniform(&mut rng, inputs * outputs, -a, a);
            let b = uniform(&mut rng, outputs, -0.05, 0.2);
            affine(&dev, &w, &b)
        })
        .collect();
    let layers: [Affine<f64, Dev>; 8] = layers.try_into().unwrap_or_else(|_| unreachable!());
    let mut model = AlexNet::from_layers(&dev, spec.clone(), layers);
    let x = uniform(&mut rng, batch * MIN_INPUT * MIN_INPUT * 3, -1.0, 1.0);
    let x_t = act(&dev, &x, batch, MIN_INPUT * MIN_INPUT, 3);
    let r = uniform(&mut rng, batch * spec.classes, -1.0, 1.0);
    let r_t: Mat<f64, Dev> = dev.tensor_from_vec(r.clone(), (batch, spec.classes));

    let logits = model.forward(x_t.clone().traced(Gradients::leaky()), None);
    assert_eq!(*logits.shape(), (batch, spec.classes));
    let g = (logits * r_t).sum::<Rank0, _>().backward();
    let analytic: Vec<(Vec<f64>, Vec<f64>)> = model
        .layers()
        .iter()
        .map(|(_, a, _)| (g.get(&a.weight).as_vec(), g.get(&a.bias).as_vec()))
        .collect();
    let gx = g.get(&x_t).as_vec();

    let loss = |model: &mut AlexNet<f64, Dev>, x: &[f64]| {
        let y = model.forward(act(&dev, x, batch, MIN_INPUT * MIN_INPUT, 3), None);
        dot(&y.as_vec(), &r)
    };
    // A few random entries and the entry with the largest gradient, of each tensor.
    let mut sample = |grad: &[f64], random: usize| {
        let largest = (0..grad.len())
            .max_by(|&i, &j| grad[i].abs().total_cmp(&grad[j].abs()))
            .unwrap();
        let mut picks: Vec<usize> = (0..random)
            .map(|_| rng.random_range(0..grad.len()))
            .collect();
        picks.push(largest);
        (picks, grad[largest].abs())
    };

    let mut worst: f64 = 0.0;
    for (l, (gw, gb)) in analytic.iter().enumerate() {
        let name = TORCH_NAMES[l];
        let (w0, b0) = {
            let a = &model.layers()[l].1;
            (a.weight.clone(), a.bias.clone())
        };
        let (w_picks, w_max) = sample(gw, 4);
        let (b_picks, b_max) = sample(gb, 2);
        // A dead layer would make the comparison vacuous.
        assert!(
            w_max > 1e-3 && b_max > 1e-3,
            "{name}: |∇w| ≤ {w_max:e}, |∇b| ≤ {b_max:e}"
        );
        let shape = *w0.shape();
        let e_w = check_gradient(&format!("{name}.weight"), &w0.as_vec(), gw, w_picks, |w| {
            model.layers_mut()[l].weight = dev.tensor_from_vec(w.to_vec(), shape);
            loss(&mut model, &x)
        });
        model.layers_mut()[l].weight = w0;
        let e_b = check_gradient(&format!("{name}.bias"), &b0.as_vec(), gb, b_picks, |b| {
            model.layers_mut()[l].bias = dev.tensor_from_vec(b.to_vec(), (b.len(),));
            loss(&mut model, &x)
        });
        model.layers_mut()[l].bias = b0;
        worst = worst.max(e_w).max(e_b);
    }
    let (x_picks, _) = sample(&gx, 6);
    let e_x = check_gradient("input", &x, &gx, x_picks, |x| loss(&mut model, x));
    eprintln!("network gradient relative errors: parameters ≤ {worst:.1e}, input {e_x:.1e}");
}

// ---------------------------------------------------------------------------------------
// Shapes and parameter counts.
// ---------------------------------------------------------------------------------------

#[test]
fn paper_layer_table_at_224() {
    let spec = Spec::new(&ModelConfig::default(), 224, 1000).unwrap();
    let table = spec.table();
    let sides: Vec<usize> = table.iter().map(|l| l.side).collect();
    let channels: Vec<usize> = table.iter().map(|l| l.channels).collect();
    // The paper's figure 2 / section 3.5 (single tower), as in mod.rs's table.
    assert_eq!(sides, [55, 27, 27, 13, 13, 13, 13, 6, 1, 1, 1]);
    assert_eq!(
        channels,
        [96, 96, 256, 256, 384, 384, 256, 256, 4096, 4096, 1000]
    );
    assert_eq!(spec.fc6_inputs(), 9216);
    assert_eq!(spec.final_side(), 6);
    // K·K·C_in·C_out + C_out per layer, by hand; pooling (and LRN) have none.
    let params: Vec<usize> = table.iter().map(|l| l.parameters).collect();
    assert_eq!(
        params,
        [
            11 * 11 * 3 * 96 + 96,
            0,
            5 * 5 * 96 * 256 + 256,
            0,
            3 * 3 * 256 * 384 + 384,
            3 * 3 * 384 * 384 + 384,
            3 * 3 * 384 * 256 + 256,
            0,
            9216 * 4096 + 4096,
            4096 * 4096 + 4096,
            4096 * 1000 + 1000,
        ]
    );
    // The single-tower paper widths give 62,378,344 parameters.
    assert_eq!(spec.parameter_count(), 62_378_344);
    let from_shapes: usize = AlexNet::<f32, Dev>::affine_shapes(&spec)
        .iter()
        .map(|(i, o)| i * o + o)
        .sum();
    assert_eq!(from_shapes, spec.parameter_count());
}

#[test]
fn torchvision_widths_give_torchvisions_parameter_count() {
    // torchvision.models.alexnet() is the "one weird trick" variant: 64, 192, 384, 256, 256
    // channels, the same kernels, strides, padding and FC widths. Its
    // `sum(p.numel() for p in model.parameters())` is 61,100,840.
    let cfg = ModelConfig {
        conv_channels: [64, 192, 384, 256, 256],
        ..ModelConfig::default()
    };
    let spec = Spec::new(&cfg, 224, 1000).unwrap();
    let sides: Vec<usize> = spec.table().iter().map(|l| l.side).collect();
    assert_eq!(sides, [55, 27, 27, 13, 13, 13, 13, 6, 1, 1, 1]);
    assert_eq!(spec.fc6_inputs(), 9216);
    assert_eq!(spec.parameter_count(), 61_100_840);
}

#[test]
fn forward_gives_one_row_of_logits_per_image() {
    let dev = Dev::default();
    let cfg = ModelConfig {
        conv_channels: [8, 8, 8, 8, 8],
        fc_units: 16,
        ..ModelConfig::default()
    };
    // 224: pool3 is 6×6 (fc6 sees 6·6·8); 112: 2×2.
    for (input, final_side) in [(224, 6), (112, 2)] {
        let spec = Spec::new(&cfg, input, 10).unwrap();
        assert_eq!(spec.final_side(), final_side);
        let mut model = AlexNet::<f32, Dev>::new(&dev, spec.clone(), 3);
        let batch = 2;
        let x: Act<f32, Dev> = dev.sample_normal_like(&(batch, input * input, 3));
        let masks = DropoutMasks::draw(&dev, &spec, 3, 0, batch);
        assert!(masks.is_some());
        for dropout in [None, masks.as_ref()] {
            let y = model.forward(x.clone(), dropout);
            assert_eq!(*y.shape(), (batch, 10), "input {input}");
            assert!(y.as_vec().iter().all(|v| v.is_finite()));
        }
    }
}

/// The counter-based masks: the rate is the configured one, a row depends on its image alone
/// (a batch's first rows are a smaller batch's rows), and steps and layers get their own.
#[test]
fn dropout_masks_are_per_image_and_drop_at_the_configured_rate() {
    let dev = Dev::default();
    let spec = Spec::new(&ModelConfig::default(), 224, 10).unwrap();
    let draw = |step, batch| DropoutMasks::<f32, Dev>::draw(&dev, &spec, 5, step, batch).unwrap();
    let (eight, four) = (draw(3, 8), draw(3, 4));
    let (fc6, fc7) = (eight.fc6.as_vec(), eight.fc7.as_vec());
    assert_eq!(four.fc6.as_vec(), fc6[..fc6.len() / 2]);
    assert_eq!(four.fc7.as_vec(), fc7[..fc7.len() / 2]);
    assert!(fc6.iter().chain(&fc7).all(|&v| v == 0.0 || v == 2.0));
    let dropped = fc6.iter().filter(|&&v| v == 0.0).count() as f64 / fc6.len() as f64;
    assert!((dropped - 0.5).abs() < 0.01, "dropped {dropped}");
    // Rows of one mask, the two layers and two steps are all different draws.
    let units = spec.config.fc_units;
    assert_ne!(fc7[..units], fc7[units..2 * units]);
    assert_ne!(fc6[..units], fc7[..units]);
    assert_ne!(draw(4, 8).fc7.as_vec(), fc7);
}

// ---------------------------------------------------------------------------------------
// Checkpoints.
// ---------------------------------------------------------------------------------------

#[test]
fn checkpoint_round_trip_keeps_outputs() {
    let dev = Dev::default();
    let cfg = ModelConfig {
        conv_channels: [4, 6, 5, 4, 3],
        fc_units: 8,
        init_std: 0.3,
        init_bias: 0.1,
        ..ModelConfig::default()
    };
    // 95 → pool3 2×2, so that fc6's channel-major reordering is exercised.
    let input = 95;
    let spec = Spec::new(&cfg, input, 5).unwrap();
    assert_eq!(spec.final_side(), 2);
    let mut model = AlexNet::<f32, Dev>::new(&dev, spec.clone(), 11);
    let x: Act<f32, Dev> = dev.sample_normal_like(&(3, input * input, 3));
    let before = model.forward(x.clone(), None).as_vec();

    let mut file = TensorFile::default();
    export_layers(
        &mut file,
        "",
        model.layers().map(|(_, a, _)| a),
        model.torch_layouts(),
    );
    assert_eq!(file.tensors["features.0.weight"].0, [4, 3, 11, 11]);
    assert_eq!(file.tensors["classifier.1.weight"].0, [8, 12]);
    let path = Path::new("round-trip.safetensors");
    let back = TensorFile::from_bytes(&file.to_bytes(path).unwrap(), path).unwrap();
    let layers = import_layers(&back, path, "", &spec, &dev).unwrap();
    for ((_, ours, _), theirs) in model.layers().iter().zip(&layers) {
        assert_eq!(ours.weight.as_vec(), theirs.weight.as_vec());
        assert_eq!(ours.bias.as_vec(), theirs.bias.as_vec());
    }
    let mut restored = AlexNet::from_layers(&dev, spec.clone(), layers);
    let after = restored.forward(x, None).as_vec();
    assert_eq!(before, after);
    assert!(
        before.iter().any(|&v| v != before[0]),
        "outputs are not trivial"
    );

    // A different width is refused with the tensor's name.
    let other = Spec::new(
        &ModelConfig {
            conv_channels: [4, 6, 5, 4, 4],
            ..cfg
        },
        input,
        5,
    )
    .unwrap();
    match import_layers(&back, path, "", &other, &dev) {
        Err(CheckpointError::Shape { name, .. }) => assert_eq!(name, "features.12.weight"),
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
}
