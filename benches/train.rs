//! Training step time on the CPU: the paper's full AlexNet at batch 16, and the sample
//! pipeline's narrow net at its batch of 64 (images/s = batch / step time).
//! Inputs are random normalised crops already in memory; `alexnet bench-train` measures the
//! same step with the loader feeding it.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use alexnet::config::Pipeline;
use alexnet::device::cpu;
use alexnet::engine::dfdx_train_step;
use alexnet::engine::sgd::Sgd;
use alexnet::model::{AlexNet, DropoutMasks, Spec};

fn bench_step(
    c: &mut Criterion,
    name: &str,
    dev: Cpu,
    pipeline: &Pipeline,
    classes: usize,
    batch: usize,
) {
    let crop = pipeline.loader.crop_size as usize;
    let spec = Spec::new(&pipeline.model, crop, classes).unwrap();
    let mut model = AlexNet::<f32, Cpu>::new(&dev, spec, 0);
    let mut sgd = Sgd::new(&dev, &model, 0.9, 5e-4);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let pixels: Vec<f32> = (0..batch * crop * crop * 3)
        .map(|_| rng.random_range(-120.0..120.0))
        .collect();
    let x = dev.tensor_from_vec(pixels, (batch, crop * crop, 3));
    let labels: Vec<u32> = (0..batch).map(|i| (i % classes) as u32).collect();
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(batch as u64));
    let mut step = 0u64;
    group.bench_function(name, |b| {
        b.iter(|| {
            let masks = DropoutMasks::draw(&dev, &model.spec, 0, step, batch);
            step += 1;
            let (loss, _) = dfdx_train_step(
                &mut model,
                &mut sgd,
                x.clone(),
                &labels,
                masks.as_ref(),
                1e-4,
                &mut |_| {},
            );
            assert!(loss.is_finite());
        })
    });
    group.finish();
}

fn steps(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let paper = Pipeline::load(&root.join("pipelines/alexnet.toml")).unwrap();
    let sample = Pipeline::load(&root.join("pipelines/sample.toml")).unwrap();
    // The device as training opens it (tensor cache on), and once without the cache, which
    // is what CPU training ran with before: every step's tensors were fresh pages.
    let uncached = || {
        dfdx::flush_denormals_to_zero();
        Cpu::default()
    };
    bench_step(c, "sample_net_batch64", cpu(), &sample, 10, 64);
    bench_step(
        c,
        "sample_net_batch64_no_cache",
        uncached(),
        &sample,
        10,
        64,
    );
    bench_step(c, "alexnet_batch16", cpu(), &paper, 1000, 16);
}

criterion_group!(benches, steps);
criterion_main!(benches);
