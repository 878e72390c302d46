//! Choosing each convolution pass's algorithm, through the pass table (`passes`), and the
//! per-shape plans that keep the descriptors and the choices for the rest of the process.

use std::ffi::c_int;

use super::buffers::Form;
use super::check;
use super::cudnn::{ConvDesc, FilterDesc, TensorDesc};
use super::ffi::{self, cudnnMathType_t};
use super::passes::{Call, Descriptors, Pass, PassApi, SearchFn};
use crate::config::Precision;
use crate::kernels::{ConvShape, KernelError, KernelResult};

/// An algorithm chosen for one pass, and the workspace it needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chosen {
    pub(super) algo: u32,
    pub(super) workspace: usize,
    /// The math type the algorithm runs with (tensor-core TF32 or FMA).
    pub(super) math: u32,
}

/// One pass of one shape. Each pass has its own convolution descriptor because in Tf32 mode
/// the descriptor's math type is set to that of the algorithm chosen for the pass, and the
/// three passes may choose differently.
struct Direction {
    conv: ConvDesc,
    chosen: Option<Chosen>,
}

/// Descriptors and chosen algorithms of one convolution shape.
pub(super) struct ConvPlan {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    /// Indexed by `Pass`.
    directions: [Direction; 3],
}

impl ConvPlan {
    /// Activations and filters in `form` (filters OHWI in NHWC; bf16 in bf16, summed in f32).
    pub(super) fn new(shape: &ConvShape, math: cudnnMathType_t, form: Form) -> KernelResult<Self> {
        const OUTPUT_DIM: &str = "cudnnGetConvolution2dForwardOutputDim";
        let out = shape.out_size();
        let (size, kernel) = (shape.size, shape.kernel);
        let x = TensorDesc::new(form, shape.batch, shape.in_channels, size, size)?;
        let w = FilterDesc::new(form, shape.out_channels, shape.in_channels, kernel, kernel)?;
        let y = TensorDesc::new(form, shape.batch, shape.out_channels, out, out)?;
        let direction = || {
            Ok::<_, KernelError>(Direction {
                conv: ConvDesc::new(shape, math)?,
                chosen: None,
            })
        };
        let plan = Self {
            x,
            w,
            y,
            directions: [direction()?, direction()?, direction()?],
        };
        // The output descriptor is built from `ConvShape::out_size`; a disagreement with
        // cuDNN's arithmetic would otherwise surface only as a bad-parameter error later.
        let mut dims: [c_int; 4] = [0; 4];
        let [n, c, h, w] = &mut dims;
        // SAFETY: live descriptors, four valid out-pointers.
        check::cudnn(OUTPUT_DIM, unsafe {
            ffi::cudnnGetConvolution2dForwardOutputDim(
                plan.directions[0].conv.0,
                plan.x.0,
                plan.w.0,
                n,
                c,
                h,
                w,
            )
        })?;
        let expected = [
            check::c_int(OUTPUT_DIM, shape.batch)?,
            check::c_int(OUTPUT_DIM, shape.out_channels)?,
            check::c_int(OUTPUT_DIM, out)?,
            check::c_int(OUTPUT_DIM, out)?,
        ];
        if dims != expected {
            return Err(check::failed(
                OUTPUT_DIM,
                format!("cuDNN computes output {dims:?}, the shape says {expected:?}"),
            ));
        }
        Ok(plan)
    }

    /// The descriptors `pass` runs with, and its algorithm once chosen.
    /// The algorithm chosen for each pass so far, as `forward IMPLICIT_PRECOMP_GEMM (tensor
    /// cores), ...`.
    pub(super) fn describe(&self) -> String {
        [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter]
            .into_iter()
            .filter_map(|pass| {
                let chosen = self.directions[pass as usize].chosen?;
                let api = pass.api();
                let math = match chosen.math {
                    ffi::MATH_TENSOR_OP => " (tensor cores)",
                    _ => "",
                };
                Some(format!(
                    "{} {}{math}",
                    api.name,
                    api.algorithm_name(chosen.algo)
                ))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(super) fn pass(&self, pass: Pass) -> (Descriptors, Option<Chosen>) {
        let direction = &self.directions[pass as usize];
        let descriptors = Descriptors {
            x: self.x.0,
            w: self.w.0,
            y: self.y.0,
            conv: direction.conv.0,
        };
        (descriptors, direction.chosen)
    }

    /// Chooses `pass`'s algorithm (see `choose`) and keeps it for the rest of the process.
    ///
    /// # Safety
    /// `handle` must be a live cuDNN handle whose context is current.
    pub(super) unsafe fn choose(
        &mut self,
        handle: ffi::cudnnHandle_t,
        pass: Pass,
        precision: Precision,
        measure: bool,
    ) -> KernelResult<Chosen> {
        let (descriptors, _) = self.pass(pass);
        let direction = &mut self.directions[pass as usize];
        let chosen = choose(
            handle,
            &descriptors,
            &direction.conv,
            pass,
            precision,
            measure,
        )?;
        direction.chosen = Some(chosen);
        Ok(chosen)
    }
}

fn math_type(value: u32) -> Option<cudnnMathType_t> {
    match value {
        ffi::MATH_DEFAULT => Some(cudnnMathType_t::CUDNN_DEFAULT_MATH),
        ffi::MATH_TENSOR_OP => Some(cudnnMathType_t::CUDNN_TENSOR_OP_MATH),
        ffi::MATH_TENSOR_OP_ALLOW_CONVERSION => {
            Some(cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
        }
        ffi::MATH_FMA => Some(cudnnMathType_t::CUDNN_FMA_MATH),
        _ => None,
    }
}

/// The first usable result, in cuDNN's order (fastest first when measured, best first by its
/// heuristics otherwise). It must have succeeded and be deterministic, so that a resumed run
/// reproduces an uninterrupted one. Tensor-core math that converts fp32 down to fp16/bf16 is
/// never wanted (cuDNN should not offer it for fp32 without being asked; this makes sure: a
/// bf16 convolution has bf16 operands already); Strict also refuses plain tensor-op math
/// (TF32), which its FMA math type already asks for.
fn accept(results: &[ffi::AlgoPerf], precision: Precision, api: &PassApi) -> Option<ffi::AlgoPerf> {
    results.iter().copied().find(|r| {
        let math_ok = match r.math_type {
            ffi::MATH_TENSOR_OP_ALLOW_CONVERSION => false,
            ffi::MATH_TENSOR_OP => precision != Precision::Strict,
            _ => true,
        };
        // Strict fp32 means the convolution's own products and sums, rounded as fp32 rounds
        // them: FFT and Winograd transform the operands and lose accuracy on the way.
        let arithmetic_ok = precision != Precision::Strict || api.is_direct(r.algo);
        r.status == ffi::STATUS_SUCCESS
            && r.determinism == ffi::DETERMINISTIC
            && math_ok
            && arithmetic_ok
    })
}

/// Runs one search (measuring or heuristic) for up to `capacity` results: the first usable
/// one, or the search's failing status.
///
/// # Safety
/// As for `choose`.
unsafe fn search(
    api: &PassApi,
    call: &Call<SearchFn>,
    handle: ffi::cudnnHandle_t,
    descriptors: &Descriptors,
    capacity: c_int,
    precision: Precision,
) -> Result<Option<ffi::AlgoPerf>, ffi::Status> {
    let mut results = vec![ffi::AlgoPerf::default(); capacity as usize];
    let mut returned: c_int = 0;
    let status = (call.f)(
        handle,
        descriptors,
        capacity,
        &mut returned,
        results.as_mut_ptr(),
    );
    if status != ffi::STATUS_SUCCESS {
        return Err(status);
    }
    let returned = (returned.max(0) as usize).min(results.len());
    Ok(accept(&results[..returned], precision, api))
}

/// Picks the algorithm of one pass, by measurement like PyTorch's benchmark mode, falling back
/// to cuDNN's heuristics when measuring fails, and sets the descriptor up to run it.
///
/// The choice is made once per process. Measured, timing noise can rank two close algorithms
/// the other way in another process, and a different algorithm rounds differently, so a
/// resumed run is bit-identical to an uninterrupted one only with the heuristics (the
/// default, `compute.algorithms = "heuristic"`), whose choice depends on the shape alone.
///
/// # Safety
/// The handle and descriptors must be live and describe `pass` of one convolution, `conv`
/// being the descriptor in `descriptors`.
unsafe fn choose(
    handle: ffi::cudnnHandle_t,
    descriptors: &Descriptors,
    conv: &ConvDesc,
    pass: Pass,
    precision: Precision,
    measure: bool,
) -> KernelResult<Chosen> {
    let api = pass.api();
    let mut count: c_int = 0;
    check::cudnn(api.max_count.name, (api.max_count.f)(handle, &mut count))?;
    let count = count.max(1);
    let (measured, mut why) = if !measure {
        (
            None,
            String::from("measuring is off (compute.algorithms = \"heuristic\")"),
        )
    } else {
        match search(api, &api.find, handle, descriptors, count, precision) {
            Ok(Some(pick)) => (Some(pick), String::new()),
            Ok(None) => (
                None,
                String::from("no measured algorithm was deterministic and successful"),
            ),
            Err(status) => (
                None,
                format!("measuring failed: {}", check::cudnn_status(status)),
            ),
        }
    };
    let pick = match measured {
        Some(pick) => pick,
        None => match search(api, &api.heuristic, handle, descriptors, count, precision) {
            Ok(Some(pick)) => pick,
            Ok(None) => {
                why.push_str("; no heuristic candidate was either");
                return Err(no_algorithm(api, &why));
            }
            Err(status) => {
                why.push_str(&format!(
                    "; heuristics failed: {}",
                    check::cudnn_status(status)
                ));
                return Err(no_algorithm(api, &why));
            }
        },
    };
    // Run exactly what was measured: with the default math type cuDNN may have timed a
    // tensor-core (TF32) variant, which the descriptor must then ask for (as PyTorch does).
    // Strict keeps FMA math whatever was reported.
    if precision != Precision::Strict {
        if let Some(math) = math_type(pick.math_type) {
            conv.set_math(math)?;
        }
    }
    let mut bytes = 0usize;
    check::cudnn(
        api.workspace_size.name,
        (api.workspace_size.f)(handle, descriptors, pick.algo, &mut bytes),
    )?;
    Ok(Chosen {
        algo: pick.algo,
        workspace: bytes.max(pick.memory),
        math: pick.math_type,
    })
}

fn no_algorithm(api: &PassApi, why: &str) -> KernelError {
    check::failed(
        api.heuristic.name,
        format!("no usable {} algorithm ({why})", api.name),
    )
}
