//! Training throughput with the loader feeding the device, and where a step's time goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::conv_path::ConvPath;
use super::sgd::Sgd;
use crate::config::Pipeline;
use crate::fast::FastDevice;
use crate::loader::{Loader, LoaderData, LoaderError, LoaderOptions, Output};
use crate::model::{AlexNet, DropoutMasks, Spec};

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub batch_size: usize,
    /// Which path the convolutional part took.
    pub path: String,
    /// Timed steps (after warm-up), run back to back as in training.
    pub steps: usize,
    pub images_per_sec: f64,
    pub step_ms_median: f64,
    /// Per-phase medians over the profiled steps (device synchronised between stages):
    /// 1 input, 2 forward, 3 backward, 4 update.
    pub phases_ms: BTreeMap<String, f64>,
    /// Every stage (phase-numbered name, median ms), in order.
    pub stages_ms: Vec<(String, f64)>,
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
    fn run<D: FastDevice>(self, dev: D, device_name: String) -> Self::Output {
        eprintln!(
            "benchmarking {} training steps of {} (+{} warm-up, {} profiled) on {device_name}",
            self.steps, self.pipeline.loader.batch_size, self.warmup, self.profile_steps,
        );
        let (steps, warmup, profile) = (self.steps, self.warmup, self.profile_steps);
        run(&dev, &self.pipeline, self.data, steps, warmup, profile)
    }
}

/// Runs `warmup + steps` plain training steps, then `profile_steps` synchronised ones.
pub fn run<D: FastDevice>(
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
    let mut path = ConvPath::new(
        dev,
        &pipeline.compute,
        &data,
        loader_cfg,
        &model,
        Some(&sgd),
    )
    .map_err(|e| LoaderError::Settings(e.to_string()))?;
    eprintln!("the convolutional part runs on {}", path.describe());
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
        let masks = DropoutMasks::draw(dev, &model.spec, seed, i as u64, batch.len());
        let (loss, _) = path.train_step(dev, &mut model, &mut sgd, &batch, masks.as_ref(), lr);
        if i >= warmup {
            step_times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        assert!(loss.is_finite(), "loss {loss} in benchmark step {i}");
        loader.recycle(batch);
    }
    dev.synchronize();
    let timed = timed_started.elapsed().as_secs_f64();
    let batch_size = loader_cfg.batch_size;

    let mut stages: Vec<(String, Vec<f64>)> = Vec::new();
    for i in 0..profile_steps {
        let batch = loader.next().expect("the training stream is endless")?;
        dev.synchronize();
        let mut clock = Instant::now();
        let mut stage_index = 0;
        let masks = DropoutMasks::draw(dev, &model.spec, seed, i as u64, batch.len());
        let mut observe = |name: &str| {
            dev.synchronize();
            let ms = clock.elapsed().as_secs_f64() * 1e3;
            clock = Instant::now();
            if stages.len() <= stage_index {
                stages.push((name.to_string(), Vec::new()));
            }
            stages[stage_index].1.push(ms);
            stage_index += 1;
        };
        let masks = masks.as_ref();
        path.train_step_observed(dev, &mut model, &mut sgd, &batch, masks, lr, &mut observe);
        loader.recycle(batch);
    }
    let stages_ms: Vec<(String, f64)> = stages
        .into_iter()
        .map(|(k, mut v)| (k, median(&mut v)))
        .collect();
    let mut phases_ms: BTreeMap<String, f64> = BTreeMap::new();
    for (name, ms) in &stages_ms {
        let phase = match name.chars().next() {
            Some('1') => "1 input",
            Some('2') => "2 forward+loss",
            Some('3') => "3 backward",
            _ => "4 sgd update",
        };
        *phases_ms.entry(phase.to_string()).or_default() += ms;
    }

    Ok(BenchReport {
        batch_size,
        path: path.describe(),
        steps,
        images_per_sec: (steps * batch_size) as f64 / timed,
        step_ms_median: median(&mut step_times),
        phases_ms,
        stages_ms,
    })
}
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
