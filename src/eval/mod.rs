//! Evaluation the paper's way: top-1/top-5 error of the centre crop, and of ten crops (four
//! corners and the centre, and their mirror images) with the softmax outputs averaged.
//!
//! One pass over the validation split gives both: the loader's ten-crop batches hold the
//! centre crop as view 4.

pub mod plot;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{Float32Builder, ListBuilder, UInt32Builder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use serde::{Deserialize, Serialize};

use crate::config::Pipeline;
use crate::device::FastDevice;
use crate::dist::{Control, DistError, Launch, World};
use crate::engine::{EngineError, StepEngine};
use crate::loader::{Loader, LoaderData, LoaderError, LoaderOptions, Mode, Output};
use crate::model::checkpoint::{import_layers, CheckpointError, TensorFile};
use crate::model::{AlexNet, ModelError, Spec};
use crate::progress::{Meter, Progress};
use crate::run::state::saved_state;
use crate::run::RunDir;
use crate::shards::{ShardError, Split};

/// The paper's Table 2, one CNN, ILSVRC-2012 validation, ten crops.
pub const PAPER_TOP1_ERROR: f64 = 0.407;
pub const PAPER_TOP5_ERROR: f64 = 0.182;
/// Index of the unmirrored centre crop among the loader's ten crops.
const CENTER_VIEW: usize = 4;
const VIEWS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    State(#[from] crate::run::state::StateError),
    #[error(transparent)]
    Shards(#[from] ShardError),
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error("{run} has no checkpoints; train first, or name a file with --checkpoint")]
    NoCheckpoint { run: PathBuf },
    #[error(
        "checkpoint {path} was trained with other settings than --pipeline gives ({differences}, \
         as trained and as given): omit --pipeline to evaluate with the checkpoint's own"
    )]
    PipelineConflict { path: PathBuf, differences: String },
    #[error(
        "checkpoint {path} was trained on {trained} classes ({first}…), but the data has \
         {found}; evaluate it on the shards it was trained on"
    )]
    Classes {
        path: PathBuf,
        trained: usize,
        first: String,
        found: usize,
    },
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint {path} gives non-finite outputs ({value}) on {source_path}: its weights have \
         diverged, so there is nothing to evaluate; use an earlier checkpoint (--checkpoint)"
    )]
    NonFinite {
        path: PathBuf,
        source_path: String,
        value: f32,
    },
    #[error("the loader delivered {got} of the {expected} validation images without saying why")]
    ShortStream { got: u64, expected: u64 },
}

pub struct EvalOptions {
    pub data: PathBuf,
    pub run: PathBuf,
    /// The pipeline the model was trained with (it fixes the widths and the crop size). A
    /// checkpoint of ours carries its own, which is used instead (see `pipeline_given`).
    pub pipeline: Pipeline,
    /// Whether `pipeline` was named with --pipeline: it must then agree with the
    /// checkpoint's; otherwise (the run's pipeline.toml, or the paper's) the checkpoint's wins.
    pub pipeline_given: bool,
    /// The weights to evaluate; `None` takes the run's latest checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// Images per batch (each is ten views).
    pub batch_images: usize,
    pub progress: Progress,
    pub device_name: String,
    /// This process's part in a data-parallel job: each rank evaluates its share of the images
    /// and rank 0 gathers the counts and predictions and writes the report (see `dist`).
    pub launch: Option<Launch>,
}

/// Top-1/top-5 error and mean cross-entropy of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Errors {
    pub top1_error: f64,
    pub top5_error: f64,
    pub loss: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassResult {
    pub label: u32,
    pub wnid: String,
    pub name: String,
    pub images: u64,
    pub center_top1_accuracy: f64,
    pub ten_crop_top1_accuracy: f64,
    pub ten_crop_top5_accuracy: f64,
}

/// `RUN/eval/report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checkpoint: PathBuf,
    /// Training steps and epochs behind the checkpoint (absent for foreign checkpoints).
    pub step: Option<u64>,
    pub epoch: Option<u64>,
    pub pipeline: String,
    pub data: PathBuf,
    pub images: u64,
    pub classes: usize,
    pub views_per_image: usize,
    pub center: Errors,
    pub ten_crop: Errors,
    /// The paper's one-CNN ten-crop errors on ILSVRC-2012, for comparison.
    pub paper: Errors,
    pub per_class: Vec<ClassResult>,
    pub device: String,
    pub seconds: f64,
    pub images_per_sec: f64,
}

impl Report {
    /// One line on what was evaluated, where and how fast.
    pub fn summary(&self) -> String {
        format!(
            "evaluated {} on {} validation images ({} views each) in {:.1} s, {:.0} images/s on {}",
            self.checkpoint.display(),
            self.images,
            self.views_per_image,
            self.seconds,
            self.images_per_sec,
            self.device,
        )
    }
}

/// Running counts of one protocol.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Counts {
    top1: u64,
    top5: u64,
    loss_sum: f64,
}

impl Counts {
    /// Adds one image's class probabilities.
    fn add(&mut self, probs: &[f64], label: usize) -> (bool, bool) {
        let (top1, top5) = crate::engine::metrics::top1_top5(probs, label);
        self.top1 += top1 as u64;
        self.top5 += top5 as u64;
        self.loss_sum -= probs[label].max(1e-300).ln();
        (top1, top5)
    }

    fn errors(&self, images: u64) -> Errors {
        let n = images.max(1) as f64;
        Errors {
            top1_error: 1.0 - self.top1 as f64 / n,
            top5_error: 1.0 - self.top5 as f64 / n,
            loss: self.loss_sum / n,
        }
    }
}

/// Softmax of one row of logits, in f64.
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The five most probable classes, most probable first (ties: lower class first).
fn top5(probs: &[f64]) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(5)
        .map(|i| (i as u32, probs[i] as f32))
        .collect()
}

/// One prediction row.
#[derive(Serialize, Deserialize)]
struct Prediction {
    index: u32,
    label: u32,
    center_top1: u32,
    top5: Vec<(u32, f32)>,
}

impl crate::device::DeviceJob for EvalOptions {
    type Output = Result<Report, EvalError>;
    fn run<D: FastDevice>(self, dev: D, device_name: String) -> Self::Output {
        run(
            dev,
            EvalOptions {
                device_name,
                ..self
            },
        )
    }
}

/// What one rank evaluated: its images' counts and predictions.
#[derive(Serialize, Deserialize)]
struct Partial {
    center: Counts,
    ten: Counts,
    /// Per class: images, centre top-1, 10-crop top-1, 10-crop top-5.
    per_class: Vec<[u64; 4]>,
    predictions: Vec<Prediction>,
}

impl Partial {
    /// The ranks' parts as one: counts added, predictions in dataset order.
    fn merge(parts: Vec<Partial>) -> Partial {
        let mut parts = parts.into_iter();
        let mut all = parts.next().expect("at least one rank");
        for part in parts {
            for (mine, theirs) in [(&mut all.center, part.center), (&mut all.ten, part.ten)] {
                mine.top1 += theirs.top1;
                mine.top5 += theirs.top5;
                mine.loss_sum += theirs.loss_sum;
            }
            for (mine, theirs) in all.per_class.iter_mut().zip(part.per_class) {
                mine.iter_mut().zip(theirs).for_each(|(m, t)| *m += t);
            }
            all.predictions.extend(part.predictions);
        }
        all.predictions.sort_by_key(|p| p.index);
        all
    }

    /// Every rank's part, merged, on every rank.
    fn gather(self, control: &mut Control) -> Result<Partial, EvalError> {
        let what = "gathering the evaluation";
        let bytes = serde_json::to_vec(&self).expect("counts and predictions serialise");
        let parts = control
            .gather_bytes(bytes, what)?
            .iter()
            .enumerate()
            .map(|(rank, bytes)| {
                serde_json::from_slice(bytes).map_err(|e| {
                    DistError::Mismatch(format!("rank {rank} sent an unreadable {what}: {e}"))
                })
            })
            .collect::<Result<Vec<Partial>, DistError>>()?;
        Ok(Self::merge(parts))
    }
}

/// Evaluates a checkpoint on the validation split and writes `RUN/eval/`. In a data-parallel
/// job every rank evaluates its share of the images; rank 0 writes.
pub fn run<D: FastDevice>(dev: D, options: EvalOptions) -> Result<Report, EvalError> {
    // The ranks meet first, so that whatever stops one of them reaches the others.
    let mut control = match &options.launch {
        None => None,
        Some(launch) => Some(Control::join(launch, "alexnet evaluate", || Ok(Vec::new()))?.0),
    };
    let result = checkpoint_to_evaluate(&options).and_then(|checkpoint| {
        if let Some(control) = control.as_mut() {
            let name = checkpoint.file_name().unwrap_or_default().to_string_lossy();
            control.agree(&format!("evaluate {name}"))?;
        }
        evaluate(dev, &options, checkpoint, control.as_mut())
    });
    if let (Err(e), Some(control)) = (&result, &mut control) {
        control.abort(&e.to_string());
    }
    result
}

/// `--checkpoint`, or the run's latest.
fn checkpoint_to_evaluate(options: &EvalOptions) -> Result<PathBuf, EvalError> {
    let run = RunDir::new(&options.run);
    let checkpoint = match &options.checkpoint {
        Some(path) => path.clone(),
        None => run
            .latest_checkpoint()
            .map_err(|source| EvalError::Io {
                path: run.checkpoints(),
                source,
            })?
            .ok_or_else(|| EvalError::NoCheckpoint {
                run: run.root.clone(),
            })?,
    };
    Ok(checkpoint)
}

fn evaluate<D: FastDevice>(
    dev: D,
    options: &EvalOptions,
    checkpoint: PathBuf,
    control: Option<&mut Control>,
) -> Result<Report, EvalError> {
    let run = RunDir::new(&options.run);
    let world = control.as_ref().map_or(World::ALONE, |c| c.world());
    let file = TensorFile::read(&checkpoint)?;
    crate::run::state::check_format(&file, &checkpoint)?;
    let unexpected = crate::run::state::unexpected_tensors(&file);
    if !unexpected.is_empty() && world.is_root() {
        eprintln!(
            "warning: {} holds tensors that are not AlexNet's ({}{}); they are ignored",
            checkpoint.display(),
            unexpected
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if unexpected.len() > 5 { ", …" } else { "" }
        );
    }
    let pipeline = &trained_pipeline(options, &file, &checkpoint, &run)?;
    let data = Arc::new(LoaderData::open(&options.data, Split::Val)?);
    data.check_pipeline(pipeline)?;
    let spec = Spec::new(
        &pipeline.model,
        pipeline.loader.crop_size as usize,
        data.classes.len(),
    )?;
    check_classes(&file, &checkpoint, &data)?;
    let layers = import_layers(&file, &checkpoint, "", &spec, &dev)?;
    let mut model = AlexNet::from_layers(&dev, spec, layers);
    let trained = saved_state(&file);

    let mut loader_config = pipeline.loader.clone();
    loader_config.batch_size = options.batch_images.max(1);
    let mut engine = StepEngine::new(&dev, &pipeline.compute, &data, &loader_config, &model, None)?;
    let mut loader_options = LoaderOptions::eval(&loader_config, Output::U8, Mode::TenCrop);
    (loader_options.rank, loader_options.world_size) = (world.rank, world.size);
    let loader = Loader::start(data.clone(), loader_options)?;
    let classes = data.classes.len();
    // Rank r takes every world-size-th image from r.
    let share = (data.len() + world.size - 1 - world.rank) / world.size;
    let progress = if world.is_root() {
        options.progress
    } else {
        Progress::Off
    };
    let mut bar = Meter::new(progress, "evaluating", "images", share as u64, 0);
    let started = Instant::now();
    let (mut center, mut ten) = (Counts::default(), Counts::default());
    let mut per_class = vec![[0u64; 4]; classes]; // images, centre top-1, 10-crop top-1, top-5
    let mut predictions = Vec::with_capacity(data.len());
    for batch in loader {
        let batch = batch?;
        let logits = engine.logits(&dev, &mut model, &batch)?;
        if let Some(at) = logits.iter().position(|v| !v.is_finite()) {
            let image = batch.indices[at / classes / VIEWS] as usize;
            return Err(EvalError::NonFinite {
                path: checkpoint,
                source_path: data.reader.read_index()?[image].source_path.clone(),
                value: logits[at],
            });
        }
        let views = logits.chunks_exact(classes).collect::<Vec<_>>();
        for (i, image_views) in views.chunks_exact(VIEWS).enumerate() {
            let label = batch.labels[i] as usize;
            let probs: Vec<Vec<f64>> = image_views.iter().map(|v| softmax(v)).collect();
            let mean: Vec<f64> = (0..classes)
                .map(|c| probs.iter().map(|p| p[c]).sum::<f64>() / VIEWS as f64)
                .collect();
            let (center_top1, _) = center.add(&probs[CENTER_VIEW], label);
            let (ten_top1, ten_top5) = ten.add(&mean, label);
            let row = &mut per_class[label];
            row[0] += 1;
            row[1] += center_top1 as u64;
            row[2] += ten_top1 as u64;
            row[3] += ten_top5 as u64;
            predictions.push(Prediction {
                index: batch.indices[i],
                label: label as u32,
                center_top1: top5(&probs[CENTER_VIEW])[0].0,
                top5: top5(&mean),
            });
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish();
    if predictions.len() != share {
        return Err(EvalError::ShortStream {
            got: predictions.len() as u64,
            expected: share as u64,
        });
    }
    let mut evaluated = Partial {
        center,
        ten,
        per_class,
        predictions,
    };
    if let Some(control) = control {
        evaluated = evaluated.gather(control)?;
    }
    let Partial {
        center,
        ten,
        per_class,
        predictions,
    } = evaluated;
    let seconds = started.elapsed().as_secs_f64();
    let images = predictions.len() as u64;
    if images != data.len() as u64 {
        return Err(EvalError::ShortStream {
            got: images,
            expected: data.len() as u64,
        });
    }

    let report = Report {
        checkpoint: checkpoint.clone(),
        step: trained.as_ref().map(|s| s.step),
        epoch: trained.as_ref().map(|s| s.epoch),
        pipeline: pipeline.name.clone(),
        data: options.data.clone(),
        images,
        classes,
        views_per_image: VIEWS,
        center: center.errors(images),
        ten_crop: ten.errors(images),
        paper: Errors {
            top1_error: PAPER_TOP1_ERROR,
            top5_error: PAPER_TOP5_ERROR,
            loss: f64::NAN,
        },
        per_class: per_class
            .iter()
            .enumerate()
            .map(|(label, c)| {
                let n = c[0].max(1) as f64;
                let info = &data.classes[label];
                ClassResult {
                    label: label as u32,
                    wnid: info.wnid.clone(),
                    name: info.name.clone(),
                    images: c[0],
                    center_top1_accuracy: c[1] as f64 / n,
                    ten_crop_top1_accuracy: c[2] as f64 / n,
                    ten_crop_top5_accuracy: c[3] as f64 / n,
                }
            })
            .collect(),
        device: options.device_name.clone(),
        seconds,
        images_per_sec: images as f64 / seconds.max(1e-9),
    };
    if world.is_root() {
        write_outputs(&run, &report, &predictions, &data)?;
    }
    Ok(report)
}

/// A checkpoint of ours names its classes; they must be the data's.
/// What defines the evaluated network and its crops.
const TRAINED_SETTINGS: [&str; 3] = ["model", "loader.crop_size", "loader.normalize"];

/// The pipeline to evaluate with: the one the checkpoint was trained with, if it carries it
/// (with this invocation's device settings); a `--pipeline` that disagrees with it is refused,
/// a run's `pipeline.toml` that does is noted and overruled.
fn trained_pipeline(
    options: &EvalOptions,
    file: &TensorFile,
    path: &Path,
    run: &RunDir,
) -> Result<Pipeline, EvalError> {
    let Some(saved) = file
        .metadata
        .get("pipeline")
        .and_then(|text| Pipeline::parse(text, path).ok())
    else {
        return Ok(options.pipeline.clone()); // a foreign checkpoint: the pipeline decides
    };
    let differences = saved.differences(&options.pipeline, &TRAINED_SETTINGS);
    if options.pipeline_given && !differences.is_empty() {
        return Err(EvalError::PipelineConflict {
            path: path.to_path_buf(),
            differences: differences.join(", "),
        });
    }
    if !differences.is_empty() && run.pipeline().exists() {
        eprintln!(
            "note: {} differs from the settings checkpoint {} was trained with ({}, as trained \
             and in the file); evaluating with the checkpoint's",
            run.pipeline().display(),
            path.display(),
            differences.join(", ")
        );
    }
    Ok(Pipeline {
        compute: options.pipeline.compute,
        ..saved
    })
}

fn check_classes(file: &TensorFile, path: &Path, data: &LoaderData) -> Result<(), EvalError> {
    let Some(saved) = file.metadata.get("classes") else {
        return Ok(()); // a foreign checkpoint: only the shapes can be checked
    };
    let saved: Vec<String> = serde_json::from_str(saved).unwrap_or_default();
    let found: Vec<&str> = data.classes.iter().map(|c| c.wnid.as_str()).collect();
    if saved.iter().map(String::as_str).ne(found.iter().copied()) {
        return Err(EvalError::Classes {
            path: path.to_path_buf(),
            trained: saved.len(),
            first: saved.first().cloned().unwrap_or_default(),
            found: found.len(),
        });
    }
    Ok(())
}

/// `RUN/eval/{report.json, predictions.parquet, per_class.png}` and the training curves.
fn write_outputs(
    run: &RunDir,
    report: &Report,
    predictions: &[Prediction],
    data: &LoaderData,
) -> Result<(), EvalError> {
    let dir = run.root.join("eval");
    std::fs::create_dir_all(&dir).map_err(|source| EvalError::Io {
        path: dir.clone(),
        source,
    })?;
    let json = serde_json::to_vec_pretty(report).expect("report serialises");
    crate::files::write_atomic(&dir.join("report.json"), &json)?;
    write_predictions(&dir.join("predictions.parquet"), predictions, data)?;

    let mut bars: Vec<(String, f64)> = report
        .per_class
        .iter()
        .map(|c| (c.name.clone(), c.ten_crop_top1_accuracy))
        .collect();
    bars.sort_by(|a, b| a.1.total_cmp(&b.1));
    let shown = bars.len().min(60);
    let title = if shown < bars.len() {
        format!(
            "Top-1 accuracy (10 crops), the {shown} weakest of {} classes",
            bars.len()
        )
    } else {
        "Top-1 accuracy per class (10 crops)".to_string()
    };
    bars.truncate(shown);
    plot::per_class_chart(&bars, &title, &dir.join("per_class.png"))?;
    if run.metrics().exists() {
        // The curves are an extra: a damaged training log must not fail an evaluation whose
        // report is written.
        if let Err(error) = plot::plot_training(run, &dir) {
            eprintln!("warning: no training curves: {error}");
        }
    }
    Ok(())
}

/// One row per validation image: where it came from, its label, and the ten-crop top five.
fn write_predictions(
    path: &Path,
    predictions: &[Prediction],
    data: &LoaderData,
) -> Result<(), EvalError> {
    let index = data.reader.read_index()?;
    let mut top5_labels = ListBuilder::new(UInt32Builder::new());
    let mut top5_probs = ListBuilder::new(Float32Builder::new());
    for p in predictions {
        for &(class, prob) in &p.top5 {
            top5_labels.values().append_value(class);
            top5_probs.values().append_value(prob);
        }
        top5_labels.append(true);
        top5_probs.append(true);
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "source_path",
            Arc::new(StringArray::from_iter_values(
                predictions
                    .iter()
                    .map(|p| index[p.index as usize].source_path.as_str()),
            )),
        ),
        (
            "label",
            Arc::new(UInt32Array::from_iter_values(
                predictions.iter().map(|p| p.label),
            )),
        ),
        ("top5_labels", Arc::new(top5_labels.finish())),
        ("top5_probs", Arc::new(top5_probs.finish())),
        (
            "center_top1",
            Arc::new(UInt32Array::from_iter_values(
                predictions.iter().map(|p| p.center_top1),
            )),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).expect("prediction columns line up");
    crate::files::write_parquet(path, &batch)?;
    Ok(())
}

/// The paper's Table 2 (one CNN) with this evaluation's rows.
pub fn table(report: &Report) -> String {
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    let mut out = String::new();
    out.push_str(&format!(
        "{:<40} {:>12} {:>12}\n",
        "Model", "Top-1 (val)", "Top-5 (val)"
    ));
    out.push_str(&format!(
        "{:<40} {:>12} {:>12}\n",
        "1 CNN (Krizhevsky et al., 2012)",
        pct(PAPER_TOP1_ERROR),
        pct(PAPER_TOP5_ERROR)
    ));
    for (name, e) in [
        ("this model, 10 crops", report.ten_crop),
        ("this model, centre crop", report.center),
    ] {
        out.push_str(&format!(
            "{:<40} {:>12} {:>12}\n",
            name,
            pct(e.top1_error),
            pct(e.top5_error)
        ));
    }
    if report.classes != 1000 {
        out.push_str(&format!(
            "(the paper's row is ILSVRC-2012's 1000 classes; these {} images are from {} \
             classes, so the numbers are not comparable)\n",
            report.images, report.classes
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::augment::{center_crop, ten_crops};

    #[test]
    fn view_four_of_the_ten_crops_is_the_centre_crop() {
        for (stored, crop) in [(256, 224), (128, 112), (72, 64)] {
            let views = ten_crops(stored, crop);
            assert_eq!(views.len(), VIEWS);
            assert_eq!(views[CENTER_VIEW], center_crop(stored, crop));
            assert_eq!(views.iter().filter(|v| v.flip).count(), 5);
        }
    }

    #[test]
    fn softmax_and_top5_rank_by_probability() {
        let p = softmax(&[1.0, 3.0, 2.0, 3.0, -1.0, 0.0, 5.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let top: Vec<u32> = top5(&p).iter().map(|t| t.0).collect();
        assert_eq!(top, [6, 1, 3, 2, 0]); // ties keep the lower class first
        let huge = softmax(&[1000.0, 0.0]);
        assert!((huge[0] - 1.0).abs() < 1e-12 && huge[1] >= 0.0);
    }

    #[test]
    fn counts_score_ties_against_the_label() {
        let mut c = Counts::default();
        assert_eq!(c.add(&[0.25; 4], 2), (false, true));
        assert_eq!(c.add(&[0.1, 0.6, 0.3], 1), (true, true));
        let e = c.errors(2);
        assert_eq!((e.top1_error, e.top5_error), (0.5, 0.0));
        assert!((e.loss - (-(0.25f64.ln()) - 0.6f64.ln()) / 2.0).abs() < 1e-12);
    }
}
