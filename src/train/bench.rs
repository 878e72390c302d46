//! Training throughput with the loader feeding the device, and where a step's time goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use dfdx::prelude::*;
use serde::Serialize;

use super::input::{InputStage, TrainDevice};
use super::sgd::Sgd;
use super::train_step;
use crate::config::Pipeline;
use crate::loader::{Loader, LoaderData, LoaderError, LoaderOptions, Output};
use crate::model::{AlexNet, DropoutMasks, Spec};

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub batch_size: usize,
    /// Timed steps (after warm-up), run back to back as in training.
    pub steps: usize,
    pub images_per_sec: f64,
    pub step_ms_median: f64,
    /// Per-phase medians over the profiled steps (device synchronised between phases).
    pub phases_ms: BTreeMap<&'static str, f64>,
    /// Forward stages (layer, stage, median ms), in order.
    pub forward_stages_ms: Vec<(String, f64)>,
}

/// `alexnet bench-train`: what to run, on whichever device `on_device` opens.
pub struct BenchJob {
    pub pipeline: Pipeline,
    pub data: Arc<LoaderData>,
    pub steps: usize,
    pub warmup: usize,
    pub profile_steps: usize,
}

impl super::device::DeviceJob for BenchJob {
    type Output = Result<BenchReport, LoaderError>;
    fn run<D: TrainDevice>(self, dev: D, device_name: String) -> Self::Output {
        eprintln!(
            "benchmarking {} training steps of {} (+{} warm-up, {} profiled) on {device_name}",
            self.steps, self.pipeline.loader.batch_size, self.warmup, self.profile_steps,
        );
        let (steps, warmup, profile) = (self.steps, self.warmup, self.profile_steps);
        run(&dev, &self.pipeline, self.data, steps, warmup, profile)
    }
}

/// Runs `warmup + steps` plain training steps, then `profile_steps` synchronised ones.
pub fn run<D: TrainDevice>(
    dev: &D,
    pipeline: &Pipeline,
    data: Arc<LoaderData>,
    steps: usize,
    warmup: usize,
    profile_steps: usize,
) -> Result<BenchReport, LoaderError> {
    let loader_cfg = &pipeline.loader;
    let spec = Spec::new(
        &pipeline.model,
        loader_cfg.crop_size as usize,
        data.classes.len(),
    )
    .map_err(|e| LoaderError::Settings(e.to_string()))?;
    let mut model = AlexNet::<f32, D>::new(dev, spec, pipeline.train.seed);
    let t = &pipeline.train;
    let mut sgd = Sgd::new(dev, &model, t.momentum, t.weight_decay);
    data.check_crop(loader_cfg.crop_size)?;
    let mut input = InputStage::new(dev, &data, loader_cfg);
    let mut loader = Loader::start(data.clone(), LoaderOptions::train(loader_cfg, Output::U8))?;
    let lr = t.learning_rate;
    let seed = t.seed;

    let mut step_times = Vec::with_capacity(steps);
    let mut timed_started = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            dev.synchronize();
            timed_started = Instant::now();
        }
        let started = Instant::now();
        let batch = loader.next().expect("the training stream is endless")?;
        let x = input.prepare(dev, &batch);
        let masks = DropoutMasks::draw(dev, &model.spec, seed, i as u64, batch.len());
        let (loss, _) = train_step(&mut model, &mut sgd, x, &batch.labels, masks.as_ref(), lr);
        if i >= warmup {
            step_times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        assert!(loss.is_finite(), "loss {loss} in benchmark step {i}");
        loader.recycle(batch);
    }
    dev.synchronize();
    let timed = timed_started.elapsed().as_secs_f64();
    let batch_size = loader_cfg.batch_size;

    let mut phases: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut stages: Vec<(String, Vec<f64>)> = Vec::new();
    for i in 0..profile_steps {
        let batch = loader.next().expect("the training stream is endless")?;
        let mut clock = Instant::now();
        let mut lap = |dev: &D| {
            dev.synchronize();
            let ms = clock.elapsed().as_secs_f64() * 1e3;
            clock = Instant::now();
            ms
        };
        let x = input.prepare(dev, &batch);
        let masks = DropoutMasks::draw(dev, &model.spec, seed, i as u64, batch.len());
        phases
            .entry("1 upload+normalise")
            .or_default()
            .push(lap(dev));
        let mut stage_index = 0;
        let mut observe = |layer: &'static str, stage: &'static str| {
            let ms = lap(dev);
            let name = if stage.is_empty() {
                layer.to_string()
            } else {
                format!("{layer} {stage}")
            };
            if stages.len() <= stage_index {
                stages.push((name, Vec::new()));
            }
            stages[stage_index].1.push(ms);
            stage_index += 1;
        };
        let logits =
            model.forward_observed(x.traced(Gradients::leaky()), masks.as_ref(), &mut observe);
        let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
        let labels = dev.tensor_from_vec(labels, (batch.len(),));
        let loss = logits
            .log_softmax::<Axis<1>>()
            .select(labels)
            .mean()
            .negate();
        phases.entry("2 forward+loss").or_default().push(
            stages[..stage_index]
                .iter()
                .map(|s| *s.1.last().unwrap())
                .sum::<f64>()
                + lap(dev),
        );
        let grads = loss.backward();
        phases.entry("3 backward").or_default().push(lap(dev));
        sgd.step(&mut model, &grads, lr);
        phases.entry("4 sgd update").or_default().push(lap(dev));
        loader.recycle(batch);
    }

    Ok(BenchReport {
        batch_size,
        steps,
        images_per_sec: (steps * batch_size) as f64 / timed,
        step_ms_median: median(&mut step_times),
        phases_ms: phases
            .into_iter()
            .map(|(k, mut v)| (k, median(&mut v)))
            .collect(),
        forward_stages_ms: stages
            .into_iter()
            .map(|(k, mut v)| (k, median(&mut v)))
            .collect(),
    })
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
