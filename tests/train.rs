//! `alexnet train` end to end on a tiny generated dataset and a tiny network.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use alexnet::model::checkpoint::TensorFile;
use common::*;

/// A log without its timing columns (the last `timing` ones), which differ between runs.
fn without_timing(path: &Path, timing: usize) -> Vec<String> {
    read(path)
        .lines()
        .map(|l| l.rsplitn(timing + 1, ',').nth(timing).unwrap().to_string())
        .collect()
}

fn metrics_without_timing(run: &Path) -> Vec<String> {
    without_timing(&run.join("metrics.csv"), 2)
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_run_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // With a warm-up that the interruption falls into, so that the resumed run must continue
    // the ramp where it stopped.
    let (data, pipeline) = tiny_setup(dir.path(), "lr_warmup_epochs = 2");

    let whole = dir.path().join("whole");
    let out = run_ok(&train_args(&data, &whole, &pipeline));
    assert!(out.is_empty(), "train reports on stderr: {out}");

    // Interrupted mid-epoch (6 steps: epoch 2 of 4-step epochs), then resumed with the run's
    // own saved pipeline.
    let split = dir.path().join("split");
    let mut args = train_args(&data, &split, &pipeline);
    args.extend(["--stop-after-steps", "6"]);
    let first = run(&args);
    assert_eq!(first.status.code(), Some(130), "{first:?}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(split
        .join("checkpoints/step-000000006.safetensors")
        .exists());
    run_ok(&["train", "--data", s(&data), "--run", s(&split), "--resume"]);

    // steps.csv: everything but each step's time.
    assert_eq!(
        without_timing(&whole.join("steps.csv"), 1),
        without_timing(&split.join("steps.csv"), 1)
    );
    assert_eq!(
        metrics_without_timing(&whole),
        metrics_without_timing(&split)
    );
    let steps = read(&whole.join("steps.csv")).lines().count() - 1;
    assert!(steps >= 9, "three epochs of the tiny data: {steps} steps");
    assert_eq!(read(&whole.join("metrics.csv")).lines().count(), 1 + 3);

    // The final weights and momentum agree bit for bit.
    let a = TensorFile::read(&latest_checkpoint(&whole)).unwrap();
    let b = TensorFile::read(&latest_checkpoint(&split)).unwrap();
    assert_eq!(a.tensors, b.tensors);
    assert_eq!(a.metadata.get("classes"), b.metadata.get("classes"));
    // keep_checkpoints = 2
    assert_eq!(
        std::fs::read_dir(whole.join("checkpoints"))
            .unwrap()
            .count(),
        2
    );
    // The resolved pipeline is saved with the run.
    assert!(read(&whole.join("pipeline.toml")).contains("conv_channels = ["));
}

#[test]
fn checkpoints_use_pytorch_names_and_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "epochs = 1");
    let run_dir = dir.path().join("run");
    run_ok(&train_args(&data, &run_dir, &pipeline));
    let file = TensorFile::read(&latest_checkpoint(&run_dir)).unwrap();
    let shape = |name: &str| file.tensors[name].0.clone();
    // 4 classes; tiny widths [4, 8, 8, 8, 8]; 64 px input → 15 → 7 → 7 → 3 → 3 → 1.
    assert_eq!(shape("features.0.weight"), [4, 3, 11, 11]);
    assert_eq!(shape("features.0.bias"), [4]);
    assert_eq!(shape("features.4.weight"), [8, 4, 5, 5]);
    assert_eq!(shape("features.8.weight"), [8, 8, 3, 3]);
    assert_eq!(shape("features.10.weight"), [8, 8, 3, 3]);
    assert_eq!(shape("features.12.weight"), [8, 8, 3, 3]);
    assert_eq!(shape("classifier.1.weight"), [16, 8]);
    assert_eq!(shape("classifier.4.weight"), [16, 16]);
    assert_eq!(shape("classifier.6.weight"), [4, 16]);
    assert_eq!(shape("momentum.classifier.6.weight"), [4, 16]);
    assert_eq!(file.tensors.len(), 2 * 16);
    let state: serde_json::Value = serde_json::from_str(&file.metadata["state"]).unwrap();
    assert_eq!(state["epoch"], 1);
    assert_eq!(state["sample"], 0);
}

#[test]
fn runs_are_not_overwritten_and_resume_checks_what_it_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "");
    let run_dir = dir.path().join("run");
    let mut args = train_args(&data, &run_dir, &pipeline);
    args.extend(["--stop-after-steps", "1"]);
    assert_eq!(run(&args).status.code(), Some(130));

    // Starting again in the same directory would destroy the run.
    let err = run_err(&train_args(&data, &run_dir, &pipeline));
    assert!(err.contains("already holds a training run"), "{err}");
    assert!(err.contains("--resume"), "{err}");

    // Nothing to resume in a fresh directory.
    let fresh = dir.path().join("fresh");
    let mut args = train_args(&data, &fresh, &pipeline);
    args.push("--resume");
    let err = run_err(&args);
    assert!(err.contains("nothing to resume"), "{err}");

    // A different network cannot continue this run.
    let wider = dir.path().join("wider.toml");
    std::fs::write(
        &wider,
        read(&pipeline).replace("fc_units = 16", "fc_units = 32"),
    )
    .unwrap();
    let mut args = train_args(&data, &run_dir, &wider);
    args.push("--resume");
    let err = run_err(&args);
    assert!(err.contains("[model]"), "{err}");
    assert!(err.contains("model.fc_units = 16 and 32"), "{err}");
    assert!(err.contains("omit --pipeline"), "{err}");

    // The same edit in the run's own pipeline.toml, resumed without --pipeline: the advice
    // to omit --pipeline would not help (it was omitted).
    let own = run_dir.join("pipeline.toml");
    std::fs::write(&own, read(&own).replace("fc_units = 16", "fc_units = 32")).unwrap();
    let err = run_err(&[
        "train",
        "--data",
        s(&data),
        "--run",
        s(&run_dir),
        "--device",
        "cpu",
        "--resume",
    ]);
    assert!(
        err.contains("was edited") && !err.contains("omit --pipeline"),
        "{err}"
    );

    // Missing shards name the directory.
    let missing = dir.path().join("no-such-shards");
    let err = run_err(&train_args(&missing, &dir.path().join("r2"), &pipeline));
    assert!(err.contains("no-such-shards"), "{err}");
}

#[test]
fn a_diverging_loss_stops_the_run_without_saving_the_diverged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "learning_rate = 1e30\ncheckpoint_every = 1");
    let run_dir = dir.path().join("run");
    let err = run_err(&train_args(&data, &run_dir, &pipeline));
    assert!(err.contains("diverged"), "{err}");
    // The first update already ruins the weights, so even the checkpoint due after step 1
    // is refused: the weights are tried on that step's batch before they are saved.
    assert!(err.contains("No checkpoint was written yet"), "{err}");
    let saved = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(saved, 0);
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_with_130() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "epochs = 1000");
    let run_dir = dir.path().join("run");
    let child = bin()
        .args(train_args(&data, &run_dir, &pipeline))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until training is under way.
    let started = Instant::now();
    let steps = run_dir.join("steps.csv");
    while std::fs::read_to_string(&steps).map_or(0, |t| t.lines().count()) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("saved"), "{stderr}");
    let last = latest_checkpoint(&run_dir);
    let state: serde_json::Value =
        serde_json::from_str(&TensorFile::read(&last).unwrap().metadata["state"]).unwrap();
    let saved_step = state["step"].as_u64().unwrap();
    assert!(saved_step >= 2, "{state}");
    assert!(last.ends_with(format!("step-{saved_step:09}.safetensors")));
}

/// The trainer uploads u8 crops and normalises them on the device; that must equal the
/// loader's own f32 normalisation (mean image at the crop position, lighting, flips), for
/// training crops and for the ten evaluation crops, with either normalisation.
#[test]
fn device_normalisation_equals_the_loaders_f32_batches() {
    use alexnet::config::{Normalize, Pipeline};
    use alexnet::engine::input::InputStage;
    use alexnet::loader::{Loader, LoaderData, LoaderOptions, Mode, Output, Pixels};
    use alexnet::shards::Split;
    use dfdx::prelude::*;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "");
    let pipeline = Pipeline::load(&pipeline).unwrap();
    let loader_data = Arc::new(LoaderData::open(&data, Split::Train).unwrap());
    let dev = Cpu::default();
    for normalize in [Normalize::MeanImage, Normalize::Channel] {
        for mode in [Mode::Train, Mode::TenCrop] {
            let mut config = pipeline.loader.clone();
            config.normalize = normalize;
            let options = |output| {
                let mut o = LoaderOptions::train(&config, output);
                o.mode = mode;
                o.epochs = Some(1);
                o
            };
            let u8_batches = Loader::start(loader_data.clone(), options(Output::U8)).unwrap();
            let f32_batches = Loader::start(loader_data.clone(), options(Output::F32)).unwrap();
            let mut input = InputStage::new(&dev, &loader_data, &config);
            let mut compared = 0;
            for (a, b) in u8_batches.zip(f32_batches) {
                let (a, b) = (a.unwrap(), b.unwrap());
                let Pixels::F32(expected) = &b.pixels else {
                    unreachable!()
                };
                let got = input.prepare(&dev, &a).as_vec();
                assert_eq!(got.len(), expected.len());
                let worst = got
                    .iter()
                    .zip(expected)
                    .map(|(g, e)| (g - e).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-3,
                    "{normalize:?} {mode:?}: max difference {worst}"
                );
                compared += a.len();
            }
            let n = loader_data.len();
            let expected = if mode == Mode::Train { n / 8 * 8 } else { n };
            assert_eq!(compared, expected, "{mode:?}: every image once");
        }
    }
}

/// The paper's initialisation (weights N(0, 0.01²), biases of 1 behind FC layers of 4096 units)
/// on a few classes: the loss explodes in the first steps and the run stops, as it does on a
/// real 10-class dataset. The message names two remedies, and each lets the same run start
/// and finish: the warm-up it suggests, and Caffe's biases of 0.1.
#[test]
fn the_papers_initialisation_diverges_on_few_classes_and_the_printed_warm_up_lets_it_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tiny) = tiny_setup(dir.path(), "epochs = 2");
    let paper = read(&tiny)
        .replace("fc_units = 16", "fc_units = 4096")
        .replace("init_std = 0.05", "init_std = 0.01")
        .replace("init_bias = 0.1", "init_bias = 1.0");
    let pipeline = |name: &str, text: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let plain = pipeline("paper", &paper);
    let err = run_err(&train_args(&data, &dir.path().join("paper"), &plain));
    assert!(err.contains("diverged at step"), "{err}");
    assert!(err.contains("model.init_bias = 0.1"), "{err}");
    let warmup: f64 = err
        .split("train.lr_warmup_epochs = ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '\n']).next())
        .map(|n| n.trim_end_matches('.'))
        .unwrap_or_else(|| panic!("no warm-up suggested: {err}"))
        .parse()
        .unwrap();
    assert!(warmup > 0.0);

    // The last section of the file is [train].
    let warm = pipeline("warm", &format!("{paper}lr_warmup_epochs = {warmup}\n"));
    let caffe = pipeline(
        "caffe",
        &paper.replace("init_bias = 1.0", "init_bias = 0.1"),
    );
    for (name, path) in [("warm", &warm), ("caffe", &caffe)] {
        let run_dir = dir.path().join(name);
        run_ok(&train_args(&data, &run_dir, path));
        assert_eq!(read(&run_dir.join("metrics.csv")).lines().count(), 1 + 2);
    }

    // The warm-up's rates in steps.csv: rising step by step from a small fraction to 0.01.
    let rates: Vec<f64> = read(&dir.path().join("warm/steps.csv"))
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
        .collect();
    assert!(rates[0] <= 0.01 / 4.0, "{rates:?}");
    assert!(
        rates.windows(2).all(|w| w[0] < w[1] || w[1] == 0.01),
        "{rates:?}"
    );
    assert_eq!(*rates.last().unwrap(), 0.01, "{rates:?}");
    // The resolved pipeline saved with the run keeps the warm-up.
    let saved = read(&dir.path().join("warm/pipeline.toml"));
    assert!(
        saved.contains(&format!("lr_warmup_epochs = {warmup:?}")),
        "{saved}"
    );
}
