//! The fast path's own CUDA kernels (`src/kernels/cuda/kernels.cu`) compiled for the CPU and
//! run against the host kernels, in f32 and bf16 and in both layouts — so that the arithmetic
//! and indexing of every kernel over activations is tested on machines without a GPU.
//!
//! A small shim gives the source what CUDA provides (thread and block indices, `__syncthreads`
//! as a barrier, shared memory as statics, the bit-cast intrinsics); the source is compiled with
//! the system's C++ compiler into a shared library, without contraction into fused
//! multiply-adds (as NVRTC compiles it, `--fmad=false`). Each emulated CUDA thread is a call of
//! the kernel with its indices set; kernels that synchronise their block run one OS thread per
//! CUDA thread, one block at a time. The launches mirror `src/kernels/cuda/launches.rs` (the
//! same kernels, parameters and block shapes). Without a C++ compiler the test says so and
//! passes: it proves nothing there, and the CUDA build itself is not needed.
//!
//! What this cannot show: anything of cuDNN, cuBLAS or the GPU's memory model, and the few ulps
//! by which the GPU's `powf` and `expf` differ from the C library's (the comparisons that depend
//! on them allow for it).

use std::ffi::{c_void, CString};
use std::path::Path;

use alexnet::config::{Layout, Precision};
use alexnet::kernels::host::HostKernels;
use alexnet::kernels::{bf16, InputBatch, Kernels, LrnParams, Planes, PoolShape};
use dfdx::prelude::Cpu;

const SHIM: &str = r#"
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
using std::isnan;
struct dim3 { unsigned int x, y, z; };
thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
// One block runs at a time, so a function's statics are its block's shared memory.
#define __shared__ static
static std::barrier<> *emu_barrier = nullptr;
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
template <class T> inline T min(T a, T b) { return a < b ? a : b; }
alignas(16) static float emu_dynamic_shared[1 << 16];
extern "C" void emu_set(unsigned int thread, unsigned int bx, unsigned int by, unsigned int threads,
                        unsigned int gx, unsigned int gy)
{
    threadIdx = {thread, 0, 0};
    blockIdx = {bx, by, 0};
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, 1};
}
extern "C" void emu_block(unsigned int threads)
{
    delete emu_barrier;
    emu_barrier = new std::barrier<>(threads);
}
"#;

/// kernels.cu compiled for the CPU, loaded.
struct Emulator {
    lib: *mut c_void,
    _dir: tempfile::TempDir,
}

/// An emulated launch: blocks `grid`, `threads` per block; `cooperative` when the kernel
/// synchronises its block (then every CUDA thread gets an OS thread of its own).
#[derive(Clone, Copy)]
struct Launch {
    grid: (u32, u32),
    threads: u32,
    cooperative: bool,
}

impl Launch {
    /// One thread per item, 256 per block (`nvrtc::grid`).
    fn items(n: usize) -> Self {
        Self {
            grid: ((n as u32).div_ceil(256), 1),
            threads: 256,
            cooperative: false,
        }
    }
}

impl Emulator {
    fn build() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let source = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels/cuda/kernels.cu"),
        )
        .unwrap();
        // Dynamic shared memory is the shim's one array.
        let mut kernels = String::new();
        for line in source.lines() {
            match line.trim().strip_prefix("extern __shared__ float ") {
                Some(rest) => {
                    let name = rest.trim_end_matches("[];");
                    kernels.push_str(&format!("    float *{name} = emu_dynamic_shared;\n"));
                }
                None => {
                    kernels.push_str(line);
                    kernels.push('\n');
                }
            }
        }
        let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let compile = |source: &str, name: &str| {
            let cpp = dir.path().join(format!("{name}.cpp"));
            std::fs::write(&cpp, source).unwrap();
            let lib = dir.path().join(format!("lib{name}.so"));
            let out = std::process::Command::new(&compiler)
                .args([
                    "-std=c++20",
                    "-O2",
                    "-ffp-contract=off",
                    "-fPIC",
                    "-shared",
                    "-pthread",
                ])
                .arg(&cpp)
                .arg("-o")
                .arg(&lib)
                .output();
            (lib, out)
        };
        // The shim alone first: a compiler without C++20 (`std::barrier`) cannot run the test,
        // which is not a fault of the kernels.
        match compile(SHIM, "shim").1 {
            Err(e) => {
                eprintln!("no C++ compiler ({compiler}: {e}): kernels.cu not run on the CPU");
                return None;
            }
            Ok(out) if !out.status.success() => {
                eprintln!(
                    "{compiler} cannot build the CUDA shim (C++20 needed), kernels.cu not run on \
                     the CPU:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return None;
            }
            Ok(_) => {}
        }
        let (lib, out) = compile(&format!("{SHIM}\n{kernels}"), "kernels");
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "kernels.cu does not compile for the CPU:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = CString::new(lib.to_str().unwrap()).unwrap();
        // SAFETY: a library just built from our own source; it runs no code when loaded.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen failed");
        Some(Self {
            lib: handle,
            _dir: dir,
        })
    }

    fn symbol(&self, name: &str) -> *mut c_void {
        let c = CString::new(name).unwrap();
        // SAFETY: a live handle and a NUL-terminated name.
        let f = unsafe { libc::dlsym(self.lib, c.as_ptr()) };
        assert!(!f.is_null(), "no kernel {name} in kernels.cu");
        f
    }

    /// Kernel `name` as a function of type `F`.
    ///
    /// # Safety
    /// `F` must be a function pointer type with the kernel's parameters in kernels.cu.
    unsafe fn kernel<F: Copy>(&self, name: &str) -> F {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: a function pointer of the size of the symbol's address (checked), whose
        // signature the caller vouches for.
        unsafe { std::mem::transmute_copy(&self.symbol(name)) }
    }

    /// Runs `call` (one kernel call) as every thread of `launch`.
    fn launch(&self, launch: Launch, call: impl Fn() + Sync) {
        type Set = unsafe extern "C" fn(u32, u32, u32, u32, u32, u32);
        type Block = unsafe extern "C" fn(u32);
        // SAFETY: the shim's functions, of these signatures.
        let set: Set = unsafe { self.kernel("emu_set") };
        let block: Block = unsafe { self.kernel("emu_block") };
        let Launch {
            grid: (gx, gy),
            threads,
            cooperative,
        } = launch;
        for by in 0..gy {
            for bx in 0..gx {
                if cooperative {
                    // SAFETY: no thread of an earlier block is still waiting on the barrier.
                    unsafe { block(threads) };
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let call = &call;
                            s.spawn(move || {
                                // SAFETY: sets this thread's indices.
                                unsafe { set(t, bx, by, threads, gx, gy) };
                                call();
                            });
                        }
                    });
                } else {
                    for t in 0..threads {
                        // SAFETY: as above.
                        unsafe { set(t, bx, by, threads, gx, gy) };
                        call();
                    }
                }
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SAFETY: opened once, closed once, nothing of it in use any more.
        unsafe { libc::dlclose(self.lib) };
    }
}

/// An activation buffer as the GPU holds it: f32, or bf16 bits.
enum Act {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Act {
    fn new(values: &[f32], precision: Precision) -> Self {
        if precision.bf16_activations() {
            Act::Bf16(bf16::to_bits(values))
        } else {
            Act::F32(values.to_vec())
        }
    }

    fn zeros(len: usize, precision: Precision) -> Self {
        Self::new(&vec![0.0; len], precision)
    }

    /// The buffer's address, passed as the kernel's pointer (an integer, so that the calls can
    /// run on several threads).
    fn at(&mut self) -> usize {
        match self {
            Act::F32(v) => v.as_mut_ptr() as usize,
            Act::Bf16(v) => v.as_mut_ptr() as usize,
        }
    }

    fn values(&self) -> Vec<f32> {
        match self {
            Act::F32(v) => v.clone(),
            Act::Bf16(v) => bf16::from_bits(v),
        }
    }
}

fn at(v: &mut [f32]) -> usize {
    v.as_mut_ptr() as usize
}

/// The kernel's name for the precision's activations.
fn typed(name: &str, precision: Precision) -> String {
    if precision.bf16_activations() {
        format!("{name}_bf16")
    } else {
        name.to_string()
    }
}

fn random(len: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

fn exact(what: &str, ours: &[f32], host: &[f32]) {
    let differ = ours
        .iter()
        .zip(host)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert!(
        differ.is_none(),
        "{what}: value {differ:?} differs: {:?} vs {:?}",
        differ.map(|i| ours[i]),
        differ.map(|i| host[i])
    );
}

fn close(what: &str, ours: &[f32], host: &[f32], tolerance: f64) {
    let error = relative(ours, host);
    assert!(error <= tolerance, "{what}: relative error {error:e}");
}

/// The forms the kernels run in: f32 and bf16 activations, each layout.
const FORMS: [(Precision, Layout); 4] = [
    (Precision::Strict, Layout::Nchw),
    (Precision::Strict, Layout::Nhwc),
    (Precision::Bf16, Layout::Nchw),
    (Precision::Bf16, Layout::Nhwc),
];

#[test]
fn the_cuda_kernels_compute_what_the_host_kernels_do() {
    let Some(emu) = Emulator::build() else {
        return;
    };
    for (precision, layout) in FORMS {
        let host = HostKernels::new(&Cpu::default(), layout, precision).unwrap();
        let mut case = Case {
            emu: &emu,
            host,
            precision,
            layout,
        };
        let form = format!("{precision:?} {layout:?}");
        case.normalize(&form);
        // Many channels with a partial chunk each; few channels of several chunks each.
        for (channels, pixels) in [(37, 401), (5, 5_001)] {
            let p = Planes {
                batch: 3,
                channels,
                pixels,
            };
            case.bias_relu(&form, p);
        }
        // NHWC: a block holds 4096 / 37 = 110 rows, and 135 rows leave a partial second block;
        // 4,099 channels are more than a block holds, one row per block.
        for (batch, channels, pixels) in [(3, 37, 45), (1, 4_099, 3)] {
            let p = Planes {
                batch,
                channels,
                pixels,
            };
            case.lrn(&form, p);
        }
        case.pool(&form);
        case.flatten(&form);
    }
}

/// The f32-only kernels that synchronise their blocks: SGD over all tensors at once (a table
/// of buffers walked with the grid's stride) and softmax cross-entropy (a block per row).
#[test]
fn the_cuda_update_and_loss_compute_what_the_host_kernels_do() {
    type SgdAll = unsafe extern "C" fn(*const u64, u32, u64, f32, f32, f32);
    type Softmax = unsafe extern "C" fn(*const f32, *const u32, *mut f32, *mut f32, u32, f32);
    let Some(emu) = Emulator::build() else {
        return;
    };
    let mut host = HostKernels::new(&Cpu::default(), Layout::Nchw, Precision::Strict).unwrap();
    let step = alexnet::kernels::SgdStep {
        learning_rate: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    // Odd lengths, so that tensors end mid-block and a thread's walk crosses them.
    let lens = [1_003usize, 7, 411];
    let mut tensors: Vec<[Vec<f32>; 3]> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let seed = 20 + 3 * i as u64;
            [
                random(n, -1.0, 1.0, seed),
                random(n, -0.1, 0.1, seed + 1),
                random(n, -1.0, 1.0, seed + 2),
            ]
        })
        .collect();
    let mut want = Vec::new();
    for [w, v, g] in &tensors {
        let (mut w, mut v, g) = (
            host.upload(w).unwrap(),
            host.upload(v).unwrap(),
            host.upload(g).unwrap(),
        );
        host.sgd(&step, &mut w, &mut v, &g).unwrap();
        want.push((w.to_vec(), v.to_vec()));
    }
    let mut table = Vec::new();
    let mut end = 0u64;
    for [w, v, g] in &mut tensors {
        end += w.len() as u64;
        table.extend([at(w) as u64, at(v) as u64, at(g) as u64, end]);
    }
    let f: SgdAll = unsafe { emu.kernel("sgd_all") };
    let tp = table.as_ptr() as usize;
    let launch = Launch {
        grid: (3, 1),
        threads: 256,
        cooperative: true,
    };
    emu.launch(launch, || unsafe {
        f(
            tp as *const u64,
            lens.len() as u32,
            end,
            step.learning_rate,
            step.momentum,
            step.weight_decay,
        )
    });
    for ((i, [w, v, _]), (want_w, want_v)) in tensors.iter().enumerate().zip(&want) {
        exact(&format!("sgd_all weights {i}"), w, want_w);
        exact(&format!("sgd_all momentum {i}"), v, want_v);
    }

    let (rows, classes) = (5usize, 1_003usize);
    let mut logits = random(rows * classes, -10.0, 10.0, 40);
    logits[2 * classes + 17] = f32::NAN;
    let labels: Vec<u32> = (0..rows)
        .map(|r| (r * (classes - 1) / (rows - 1)) as u32)
        .collect();
    let mean_over = rows + 5;
    let z = host.upload(&logits).unwrap();
    let (mut want_stats, mut want_d) = (
        host.alloc(2 * rows).unwrap(),
        host.alloc(rows * classes).unwrap(),
    );
    host.softmax_cross_entropy(
        rows,
        mean_over,
        classes,
        &z,
        &labels,
        &mut want_stats,
        &mut want_d,
    )
    .unwrap();
    let (mut stats, mut d) = (vec![0.0f32; 2 * rows], vec![0.0f32; rows * classes]);
    let (zp, lp, sp, dp) = (
        at(&mut logits),
        labels.as_ptr() as usize,
        at(&mut stats),
        at(&mut d),
    );
    let f: Softmax = unsafe { emu.kernel("softmax_cross_entropy") };
    let scale = 1.0 / mean_over as f32;
    let launch = Launch {
        grid: (rows as u32, 1),
        threads: 256,
        cooperative: true,
    };
    emu.launch(launch, || unsafe {
        f(
            zp as *const f32,
            lp as *const u32,
            sp as *mut f32,
            dp as *mut f32,
            classes as u32,
            scale,
        )
    });
    // Ranks exactly; losses and gradients within the C library's expf and logf (the row with a
    // NaN logit is NaN on both sides, and left out).
    exact("label ranks", &stats[rows..], &want_stats[rows..2 * rows]);
    let finite = |v: &[f32], r: usize| v[r * classes..(r + 1) * classes].to_vec();
    for r in (0..rows).filter(|&r| r != 2) {
        close(
            &format!("loss {r}"),
            &stats[r..r + 1],
            &want_stats[r..r + 1],
            1e-6,
        );
        close(
            &format!("dlogits {r}"),
            &finite(&d, r),
            &finite(&want_d, r),
            1e-6,
        );
    }
    assert!(stats[2].is_nan() && want_stats[2].is_nan());
}

/// The fully connected part's own kernels: dropout masks drawn on the device (the host's
/// counter-based draw, bit for bit), the bias and its gradient, and the mask product.
#[test]
fn the_cuda_head_kernels_compute_what_the_host_kernels_do() {
    type Mask = unsafe extern "C" fn(*mut f32, u64, u64, u64, f32, u32, u32);
    type BiasAdd = unsafe extern "C" fn(*mut f32, *const f32, u32, u32);
    type BiasSum = unsafe extern "C" fn(*const f32, *mut f32, u32, u32);
    type Multiply = unsafe extern "C" fn(*const f32, *const f32, *mut f32, u32);
    let Some(emu) = Emulator::build() else {
        return;
    };
    let mut host = HostKernels::new(&Cpu::default(), Layout::Nchw, Precision::Strict).unwrap();
    let mask = alexnet::kernels::DropoutMask {
        key: alexnet::model::dropout_key(3, 5, 6),
        first_image: 7,
        rate: 0.5,
        keep: 2.0,
        images: 3,
        units: 1_001,
    };
    let mut want = host.alloc(mask.len()).unwrap();
    host.dropout_mask(&mask, &mut want).unwrap();
    let mut out = vec![0.0f32; mask.len()];
    let op = at(&mut out);
    let f: Mask = unsafe { emu.kernel("dropout_mask") };
    let threshold = alexnet::seed::dropout_threshold(mask.rate);
    emu.launch(Launch::items(mask.len()), || unsafe {
        f(
            op as *mut f32,
            mask.key,
            mask.first_image,
            threshold,
            mask.keep,
            mask.images as u32,
            mask.units as u32,
        )
    });
    exact("dropout mask", &out, &want);
    let kept = out.iter().filter(|&&v| v == 2.0).count() as f64 / out.len() as f64;
    assert!((kept - 0.5).abs() < 0.05, "{kept} of the units kept");

    let (rows, columns) = (7usize, 1_001usize);
    let (y0, bias, dy) = (
        random(rows * columns, -1.0, 1.0, 50),
        random(columns, -0.5, 0.5, 51),
        random(rows * columns, -1.0, 1.0, 52),
    );
    let mut want_y = host.upload(&y0).unwrap();
    let bias_host = host.upload(&bias).unwrap();
    host.bias_add(rows, columns, &mut want_y, &bias_host)
        .unwrap();
    let dy_host = host.upload(&dy).unwrap();
    let mut want_db = host.alloc(columns).unwrap();
    host.bias_backward(rows, columns, &dy_host, &mut want_db)
        .unwrap();
    let mut want_product = host.alloc(rows * columns).unwrap();
    let y0_host = host.upload(&y0).unwrap();
    host.multiply(rows * columns, &y0_host, &dy_host, &mut want_product)
        .unwrap();

    let (mut y, mut b, mut g) = (y0.clone(), bias.clone(), dy.clone());
    let (mut db, mut x) = (vec![0.0f32; columns], y0.clone());
    let mut product = vec![0.0f32; rows * columns];
    let (yp, bp, gp, dbp) = (at(&mut y), at(&mut b), at(&mut g), at(&mut db));
    let (xp, pp) = (at(&mut x), at(&mut product));
    let n = (rows * columns) as u32;
    let add: BiasAdd = unsafe { emu.kernel("bias_add") };
    emu.launch(Launch::items(rows * columns), || unsafe {
        add(yp as *mut f32, bp as *const f32, n, columns as u32)
    });
    let sum: BiasSum = unsafe { emu.kernel("bias_backward") };
    emu.launch(Launch::items(columns), || unsafe {
        sum(
            gp as *const f32,
            dbp as *mut f32,
            rows as u32,
            columns as u32,
        )
    });
    let mul: Multiply = unsafe { emu.kernel("multiply") };
    emu.launch(Launch::items(rows * columns), || unsafe {
        mul(xp as *const f32, gp as *const f32, pp as *mut f32, n)
    });
    exact("bias add", &y, &want_y);
    // One thread per column adds its rows in order: the host's loop exactly.
    exact("bias gradient", &db, &want_db);
    exact("mask product", &product, &want_product);
}

struct Case<'a> {
    emu: &'a Emulator,
    host: HostKernels,
    precision: Precision,
    layout: Layout,
}

impl Case<'_> {
    fn nhwc(&self) -> bool {
        self.layout == Layout::Nhwc
    }

    fn normalize(&mut self, form: &str) {
        type Normalize = unsafe extern "C" fn(
            *mut c_void,
            *const u8,
            *const f32,
            *const u32,
            *const f32,
            f32,
            f32,
            f32,
            u32,
            u32,
            u32,
            u32,
        );
        let (batch, crop, rows) = (3, 13, 4);
        let row_len = 3 * crop + 6;
        let pixels: Vec<u8> = random(batch * crop * crop * 3, 0.0, 255.0, 1)
            .iter()
            .map(|&v| v as u8)
            .collect();
        let table = random(rows * row_len, 60.0, 180.0, 2);
        let mean_rows: Vec<u32> = (0..batch * crop).map(|i| (i * 7 % rows) as u32).collect();
        let lighting = random(batch * 3, -2.0, 2.0, 3);
        let scale = [1.0 / 58.0, 1.0 / 57.0, 1.0 / 57.5];
        let input = InputBatch {
            pixels: &pixels,
            mean_rows: &mean_rows,
            lighting: &lighting,
            scale,
            batch,
            crop,
        };
        let n = batch * 3 * crop * crop;
        let k = &mut self.host;
        k.set_mean_table(&table, row_len).unwrap();
        let mut want = k.alloc_activation(n).unwrap();
        k.normalize(&input, &mut want).unwrap();

        let mut x = Act::zeros(n, self.precision);
        let f: Normalize = unsafe { self.emu.kernel(&typed("normalize", self.precision)) };
        let (xp, nhwc) = (x.at(), u32::from(self.nhwc()));
        let (pp, tp, rp, lp) = (
            pixels.as_ptr() as usize,
            table.as_ptr() as usize,
            mean_rows.as_ptr() as usize,
            lighting.as_ptr() as usize,
        );
        self.emu.launch(Launch::items(n), || unsafe {
            f(
                xp as *mut c_void,
                pp as *const u8,
                tp as *const f32,
                rp as *const u32,
                lp as *const f32,
                scale[0],
                scale[1],
                scale[2],
                batch as u32,
                crop as u32,
                row_len as u32,
                nhwc,
            )
        });
        exact(&format!("normalize, {form}"), &x.values(), &want[..n]);
    }

    fn bias_relu(&mut self, form: &str, p: Planes) {
        type BiasRelu = unsafe extern "C" fn(*mut c_void, *const f32, u32, u32, u32);
        type Partials =
            unsafe extern "C" fn(*mut c_void, *const c_void, *mut f32, u32, u32, u32, u32);
        type PartialsNhwc = unsafe extern "C" fn(*mut c_void, *const c_void, *mut f32, u32, u32);
        type Sum = unsafe extern "C" fn(*const f32, *mut f32, u32, u32);
        let precision = self.precision;
        let y0 = random(p.len(), -1.0, 1.0, 4);
        let bias = random(p.channels, -0.5, 0.5, 5);
        let dy0 = random(p.len(), -1.0, 1.0, 6);
        let k = &mut self.host;
        let mut want_y = k.upload_activation(&y0).unwrap();
        let bias_host = k.upload(&bias).unwrap();
        k.bias_relu(&p, &mut want_y, &bias_host).unwrap();
        let mut want_dy = k.upload_activation(&dy0).unwrap();
        let mut want_db = k.alloc(p.channels).unwrap();
        k.relu_bias_backward(&p, &want_y, &mut want_dy, &mut want_db)
            .unwrap();

        let (mut y, mut b) = (Act::new(&y0, precision), bias.clone());
        let f: BiasRelu = unsafe { self.emu.kernel(&typed("bias_relu", precision)) };
        let stride = if self.nhwc() { 1 } else { p.pixels as u32 };
        let (yp, bp) = (y.at(), at(&mut b));
        self.emu.launch(Launch::items(p.len()), || unsafe {
            f(
                yp as *mut c_void,
                bp as *const f32,
                p.len() as u32,
                p.channels as u32,
                stride,
            )
        });
        exact(
            &format!("bias_relu, {form}"),
            &y.values(),
            &want_y[..p.len()],
        );

        // The backward pass from the host's ReLU output (the same values, checked above).
        let mut dy = Act::new(&dy0, precision);
        let dyp = dy.at();
        let rows = p.batch * p.pixels;
        let (splits, grid) = if self.nhwc() {
            let splits = rows.div_ceil(1024) as u32;
            (splits, ((p.channels as u32).div_ceil(32), splits))
        } else {
            let splits = rows.div_ceil(8192) as u32;
            (splits, (splits, p.channels as u32))
        };
        let mut partials = vec![0.0f32; splits as usize * p.channels];
        let pp = at(&mut partials);
        let launch = Launch {
            grid,
            threads: 256,
            cooperative: true,
        };
        if self.nhwc() {
            let f: PartialsNhwc = unsafe {
                self.emu
                    .kernel(&typed("relu_bias_partials_nhwc", precision))
            };
            self.emu.launch(launch, || unsafe {
                f(
                    dyp as *mut c_void,
                    yp as *const c_void,
                    pp as *mut f32,
                    rows as u32,
                    p.channels as u32,
                )
            });
        } else {
            let f: Partials = unsafe { self.emu.kernel(&typed("relu_bias_partials", precision)) };
            self.emu.launch(launch, || unsafe {
                f(
                    dyp as *mut c_void,
                    yp as *const c_void,
                    pp as *mut f32,
                    p.batch as u32,
                    p.channels as u32,
                    p.pixels as u32,
                    splits,
                )
            });
        }
        let mut db = vec![0.0f32; p.channels];
        let dbp = at(&mut db);
        let sum: Sum = unsafe { self.emu.kernel("bias_backward") };
        self.emu.launch(Launch::items(p.channels), || unsafe {
            sum(pp as *const f32, dbp as *mut f32, splits, p.channels as u32)
        });
        assert!(
            splits > 1 || p.channels > 32,
            "{p:?}: one block sums everything"
        );
        exact(
            &format!("relu backward, {form}"),
            &dy.values(),
            &want_dy[..p.len()],
        );
        // The partial sums add in another order than the host's loop.
        close(&format!("bias gradient, {form}"), &db, &want_db, 1e-5);
    }

    fn lrn(&mut self, form: &str, p: Planes) {
        type Forward = unsafe extern "C" fn(
            *const c_void,
            *mut c_void,
            *mut f32,
            u32,
            u32,
            u32,
            i32,
            f32,
            f32,
            f32,
        );
        type Backward = unsafe extern "C" fn(
            *const c_void,
            *const f32,
            *const c_void,
            *mut c_void,
            u32,
            u32,
            u32,
            i32,
            f32,
            f32,
        );
        let lrn = LrnParams {
            size: 5,
            k: 2.0,
            alpha: 0.05,
            beta: 0.75,
        };
        let precision = self.precision;
        let (x0, dy0) = (random(p.len(), 0.0, 3.0, 7), random(p.len(), -1.0, 1.0, 8));
        let k = &mut self.host;
        let x_host = k.upload_activation(&x0).unwrap();
        let (mut want_y, mut want_d) = (k.alloc(p.len()).unwrap(), k.alloc(p.len()).unwrap());
        k.lrn_forward(&p, &lrn, &x_host, &mut want_y, &mut want_d)
            .unwrap();
        let dy_host = k.upload_activation(&dy0).unwrap();
        let mut want_dx = k.alloc(p.len()).unwrap();
        k.lrn_backward(&p, &lrn, &x_host, &want_d, &dy_host, &mut want_dx)
            .unwrap();

        let (mut x, mut y, mut dy, mut dx) = (
            Act::new(&x0, precision),
            Act::zeros(p.len(), precision),
            Act::new(&dy0, precision),
            Act::zeros(p.len(), precision),
        );
        let mut d = vec![0.0f32; p.len()];
        let (xp, yp, dp, dyp, dxp) = (x.at(), y.at(), at(&mut d), dy.at(), dx.at());
        let half = (lrn.size / 2) as i32;
        let rows = (p.batch * p.pixels) as u32;
        let channels = p.channels as u32;
        let (suffix, shape, launch) = if self.nhwc() {
            let per_block = (4096 / channels).max(1);
            let launch = Launch {
                grid: (rows.div_ceil(per_block), 1),
                threads: 256,
                cooperative: true,
            };
            ("_nhwc", (rows, channels, per_block), launch)
        } else {
            let shape = (p.batch as u32, channels, p.pixels as u32);
            ("", shape, Launch::items(rows as usize))
        };
        let forward: Forward = unsafe {
            self.emu
                .kernel(&typed(&format!("lrn_forward{suffix}"), precision))
        };
        self.emu.launch(launch, || unsafe {
            forward(
                xp as *const c_void,
                yp as *mut c_void,
                dp as *mut f32,
                shape.0,
                shape.1,
                shape.2,
                half,
                lrn.k,
                lrn.alpha,
                lrn.beta,
            )
        });
        let backward: Backward = unsafe {
            self.emu
                .kernel(&typed(&format!("lrn_backward{suffix}"), precision))
        };
        self.emu.launch(launch, || unsafe {
            backward(
                xp as *const c_void,
                dp as *const f32,
                dyp as *const c_void,
                dxp as *mut c_void,
                shape.0,
                shape.1,
                shape.2,
                half,
                lrn.alpha,
                lrn.beta,
            )
        });
        // The C library's powf is not the GPU's or Rust's to the last ulp; a bf16 store may
        // then round to the neighbouring value.
        let tolerance = if precision.bf16_activations() {
            1e-3
        } else {
            1e-5
        };
        close(
            &format!("lrn forward, {form}"),
            &y.values(),
            &want_y,
            tolerance,
        );
        close(&format!("lrn denominators, {form}"), &d, &want_d, 1e-6);
        close(
            &format!("lrn backward, {form}"),
            &dx.values(),
            &want_dx,
            tolerance,
        );
    }

    fn pool(&mut self, form: &str) {
        type Forward =
            unsafe extern "C" fn(*const c_void, *mut c_void, *mut f32, u32, u32, u32, u32, u32);
        type Backward =
            unsafe extern "C" fn(*const f32, *const c_void, *mut c_void, u32, u32, u32, u32, u32);
        type ForwardNhwc = unsafe extern "C" fn(
            *const c_void,
            *mut c_void,
            *mut f32,
            u32,
            u32,
            u32,
            u32,
            u32,
            u32,
        );
        type BackwardNhwc = unsafe extern "C" fn(
            *const f32,
            *const c_void,
            *mut c_void,
            u32,
            u32,
            u32,
            u32,
            u32,
            u32,
        );
        // 3/2 windows over 14 columns: the last column is in no window.
        let s = PoolShape {
            batch: 2,
            channels: 37,
            size: 14,
            kernel: 3,
            stride: 2,
        };
        let precision = self.precision;
        // Few distinct values, so that windows hold ties (the first maximum must win).
        let x0: Vec<f32> = random(s.input_len(), 0.0, 8.0, 9)
            .iter()
            .map(|v| v.floor())
            .collect();
        let dy0 = random(s.output_len(), -1.0, 1.0, 10);
        let k = &mut self.host;
        let x_host = k.upload_activation(&x0).unwrap();
        let (mut want_y, mut want_m) = (
            k.alloc(s.output_len()).unwrap(),
            k.alloc(s.output_len()).unwrap(),
        );
        k.pool_forward(&s, &x_host, &mut want_y, &mut want_m)
            .unwrap();
        let dy_host = k.upload_activation(&dy0).unwrap();
        let mut want_dx = k.alloc(s.input_len()).unwrap();
        k.pool_backward(&s, &want_m, &dy_host, &mut want_dx)
            .unwrap();

        let (mut x, mut y, mut dy, mut dx) = (
            Act::new(&x0, precision),
            Act::zeros(s.output_len(), precision),
            Act::new(&dy0, precision),
            Act::zeros(s.input_len(), precision),
        );
        let mut m = vec![0.0f32; s.output_len()];
        let (xp, yp, mp, dyp, dxp) = (x.at(), y.at(), at(&mut m), dy.at(), dx.at());
        let (size, kernel, stride, out) = (
            s.size as u32,
            s.kernel as u32,
            s.stride as u32,
            s.out_size() as u32,
        );
        let (out_n, in_n) = (Launch::items(s.output_len()), Launch::items(s.input_len()));
        if self.nhwc() {
            let (b, c) = (s.batch as u32, s.channels as u32);
            let forward: ForwardNhwc =
                unsafe { self.emu.kernel(&typed("pool_forward_nhwc", precision)) };
            self.emu.launch(out_n, || unsafe {
                forward(
                    xp as *const c_void,
                    yp as *mut c_void,
                    mp as *mut f32,
                    b,
                    c,
                    size,
                    kernel,
                    stride,
                    out,
                )
            });
            let backward: BackwardNhwc =
                unsafe { self.emu.kernel(&typed("pool_backward_nhwc", precision)) };
            self.emu.launch(in_n, || unsafe {
                backward(
                    mp as *const f32,
                    dyp as *const c_void,
                    dxp as *mut c_void,
                    b,
                    c,
                    size,
                    kernel,
                    stride,
                    out,
                )
            });
        } else {
            let planes = (s.batch * s.channels) as u32;
            let forward: Forward = unsafe { self.emu.kernel(&typed("pool_forward", precision)) };
            self.emu.launch(out_n, || unsafe {
                forward(
                    xp as *const c_void,
                    yp as *mut c_void,
                    mp as *mut f32,
                    planes,
                    size,
                    kernel,
                    stride,
                    out,
                )
            });
            let backward: Backward = unsafe { self.emu.kernel(&typed("pool_backward", precision)) };
            self.emu.launch(in_n, || unsafe {
                backward(
                    mp as *const f32,
                    dyp as *const c_void,
                    dxp as *mut c_void,
                    planes,
                    size,
                    kernel,
                    stride,
                    out,
                )
            });
        }
        exact(&format!("pool forward, {form}"), &y.values(), &want_y);
        exact(&format!("pool choices, {form}"), &m, &want_m);
        exact(&format!("pool backward, {form}"), &dx.values(), &want_dx);
    }

    fn flatten(&mut self, form: &str) {
        type Permute = unsafe extern "C" fn(*const c_void, *mut c_void, u32, u32, u32);
        type Copy = unsafe extern "C" fn(*const c_void, *mut c_void, u32);
        let p = Planes {
            batch: 2,
            channels: 37,
            pixels: 9,
        };
        let precision = self.precision;
        let x0 = random(p.len(), -1.0, 1.0, 11);
        let g0 = random(p.len(), -1.0, 1.0, 12);
        let k = &mut self.host;
        let x_host = k.upload_activation(&x0).unwrap();
        let mut want_flat = k.alloc(p.len()).unwrap();
        k.flatten_channels_last(&p, &x_host, &mut want_flat)
            .unwrap();
        let g_host = k.upload(&g0).unwrap();
        let mut want_back = k.alloc(p.len()).unwrap();
        k.unflatten_channels_last(&p, &g_host, &mut want_back)
            .unwrap();

        let (widen, narrow) = if precision.bf16_activations() {
            ("_widen", "_narrow")
        } else {
            ("", "")
        };
        let (mut x, mut back) = (Act::new(&x0, precision), Act::zeros(p.len(), precision));
        let (mut flat, mut g) = (vec![0.0f32; p.len()], g0.clone());
        let (xp, bp, fp, gp) = (x.at(), back.at(), at(&mut flat), at(&mut g));
        let (b, c, px) = (p.batch as u32, p.channels as u32, p.pixels as u32);
        let n = Launch::items(p.len());
        if self.nhwc() {
            let to: Copy = unsafe { self.emu.kernel(&format!("copy{widen}")) };
            self.emu.launch(n, || unsafe {
                to(xp as *const c_void, fp as *mut c_void, p.len() as u32)
            });
            let from: Copy = unsafe { self.emu.kernel(&format!("copy{narrow}")) };
            self.emu.launch(n, || unsafe {
                from(gp as *const c_void, bp as *mut c_void, p.len() as u32)
            });
        } else {
            let to: Permute = unsafe { self.emu.kernel(&format!("to_channels_last{widen}")) };
            self.emu.launch(n, || unsafe {
                to(xp as *const c_void, fp as *mut c_void, b, c, px)
            });
            let from: Permute = unsafe { self.emu.kernel(&format!("from_channels_last{narrow}")) };
            self.emu.launch(n, || unsafe {
                from(gp as *const c_void, bp as *mut c_void, b, c, px)
            });
        }
        exact(&format!("flatten, {form}"), &flat, &want_flat);
        exact(&format!("unflatten, {form}"), &back.values(), &want_back);
    }
}
