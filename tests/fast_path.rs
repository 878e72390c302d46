//! The fast path through the real binary on the CPU (host kernels): everything around the
//! kernels — the join to dfdx, parameter ownership, SGD, checkpoints, resume, evaluation —
//! is the same code the GPU runs.

mod common;

use std::path::Path;

use alexnet::model::checkpoint::TensorFile;
use common::*;

/// (step, loss) of every step of a run.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    read(&run.join("steps.csv"))
        .lines()
        .skip(1)
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (fields[0].parse().unwrap(), fields[2].parse().unwrap())
        })
        .collect()
}

fn train(
    data: &Path,
    run: &Path,
    pipeline: &Path,
    engine: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = train_args(data, run, pipeline);
    args.extend(["--engine", engine]);
    args.extend_from_slice(extra);
    common::run(&args)
}

#[test]
fn the_fast_path_trains_like_the_dfdx_path() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "epochs = 2");
    let (fast, reference) = (dir.path().join("fast"), dir.path().join("dfdx"));
    let out = train(&data, &fast, &pipeline, "fast", &[]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("with the fast path"), "{stderr}");
    assert!(train(&data, &reference, &pipeline, "dfdx", &[])
        .status
        .success());

    let (a, b) = (losses(&fast), losses(&reference));
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 6, "{} steps", a.len());
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-3 * y.abs(),
            "step {step}: fast {x} vs dfdx {y}"
        );
    }
    // Each side's weights are exported in the same names and layouts, and agree.
    let a = TensorFile::read(&latest_checkpoint(&fast)).unwrap();
    let b = TensorFile::read(&latest_checkpoint(&reference)).unwrap();
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (name, (shape_a, ta)) in &a.tensors {
        let (shape_b, tb) = &b.tensors[name];
        assert_eq!(shape_a, shape_b, "{name}");
        let diff: f64 = ta
            .iter()
            .zip(tb)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum();
        let norm: f64 = tb.iter().map(|y| (*y as f64).powi(2)).sum();
        assert!(
            diff.sqrt() <= 1e-3 * norm.sqrt().max(1e-12),
            "{name}: {diff} vs {norm}"
        );
    }
}

/// Trains `tiny_setup`'s run (with `extra` in its pipeline) whole, and again stopped after
/// `stop` steps and resumed with a plain `--resume` plus `resume_args`. Returns both runs'
/// directories and the resuming process's output.
fn whole_and_resumed(
    dir: &Path,
    extra: &str,
    stop: &str,
    resume_args: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::process::Output) {
    let (data, pipeline) = tiny_setup(dir, extra);
    let whole = dir.join("whole");
    assert!(train(&data, &whole, &pipeline, "fast", &[])
        .status
        .success());
    let split = dir.join("split");
    let first = train(
        &data,
        &split,
        &pipeline,
        "fast",
        &["--stop-after-steps", stop],
    );
    assert_eq!(first.status.code(), Some(130), "{first:?}");
    let mut args = vec![
        "train",
        "--data",
        s(&data),
        "--run",
        s(&split),
        "--resume",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(resume_args);
    let out = common::run(&args);
    assert!(out.status.success(), "{out:?}");
    assert!(
        losses(&whole).len() > stop.parse().unwrap(),
        "{:?}",
        losses(&whole)
    );
    (whole, split, out)
}

/// Two runs alike bit for bit: every step's loss, and the latest checkpoint's weights and
/// momentum.
fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(losses(a), losses(b));
    let x = TensorFile::read(&latest_checkpoint(a)).unwrap();
    let y = TensorFile::read(&latest_checkpoint(b)).unwrap();
    assert_eq!(x.tensors, y.tensors, "weights and momentum, bit for bit");
}

/// `whole_and_resumed`, checking that both runs end alike, losses and checkpoints bit for bit.
/// Returns the resumed run's directory and the resuming process's output.
fn stop_and_resume(
    dir: &Path,
    stop: &str,
    resume_args: &[&str],
) -> (std::path::PathBuf, std::process::Output) {
    let (whole, split, out) = whole_and_resumed(dir, "", stop, resume_args);
    assert_same_run(&whole, &split);
    (split, out)
}

#[test]
fn a_resumed_fast_path_run_repeats_the_uninterrupted_run_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = stop_and_resume(dir.path(), "6", &[]);
    // The run's saved pipeline keeps the engine, so a plain --resume stays on the fast path.
    assert!(String::from_utf8_lossy(&out.stderr).contains("with the fast path"));
}

/// Channels-last activations change where values live, not what is computed: on the host
/// kernels a run in NHWC repeats a run in NCHW bit for bit, and its checkpoints keep the same
/// names and layouts (filters OIHW in both).
#[test]
fn a_channels_last_run_trains_exactly_as_a_channels_first_run() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "");
    let (first, last) = (dir.path().join("nchw"), dir.path().join("nhwc"));
    let out = train(&data, &first, &pipeline, "fast", &["--layout", "nchw"]);
    assert!(out.status.success(), "{out:?}");
    let out = train(&data, &last, &pipeline, "fast", &["--layout", "nhwc"]);
    assert!(out.status.success(), "{out:?}");
    assert!(read(&last.join("pipeline.toml")).contains("layout = \"nhwc\""));
    assert!(losses(&first).len() >= 3);
    assert_same_run(&first, &last);
}

/// `--graphs on`: the host kernels record each pass as a trace and check every replay
/// against it (a per-step value inside a replayed pass fails the run), and the run repeats a
/// run without replaying bit for bit. The epoch lines say how the passes ran: training's two
/// passes are recorded at the second step; validation's forward passes (a full and a short
/// last batch, without dropout: keys of their own) when seen again, in the second epoch.
#[test]
fn a_run_replaying_its_passes_repeats_a_run_launching_them_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "epochs = 2");
    let (off, on) = (dir.path().join("off"), dir.path().join("on"));
    let out = train(&data, &off, &pipeline, "fast", &["--graphs", "off"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("compute.graphs"), "{stderr}");
    let out = train(&data, &on, &pipeline, "fast", &["--graphs", "on"]);
    assert!(out.status.success(), "{out:?}");
    assert!(read(&on.join("pipeline.toml")).contains("graphs = \"on\""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let passes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("  passes (compute.graphs)"))
        .collect();
    assert_eq!(passes.len(), 2, "one line per epoch: {stderr}");
    assert!(passes[0].contains("2 recorded"), "{stderr}");
    assert!(passes[1].contains("4 recorded"), "{stderr}");
    // And once in the run's summary.
    assert!(
        stderr.contains("\npasses (compute.graphs): 4 recorded, 16 replayed"),
        "{stderr}"
    );
    assert!(!stderr.contains("recording failed"), "{stderr}");
    assert!(losses(&off).len() >= 6);
    assert_same_run(&off, &on);
}

/// The layout may change when a run is resumed (checkpoints are the same in both): a run
/// stopped in NCHW and resumed in NHWC repeats the uninterrupted run bit for bit on the host.
#[test]
fn a_run_stopped_in_nchw_resumes_in_nhwc_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (split, _) = stop_and_resume(dir.path(), "4", &["--layout", "nhwc"]);
    assert!(read(&split.join("pipeline.toml")).contains("layout = \"nhwc\""));
}

/// The precision may change when a run is resumed (master weights, momentum and checkpoints
/// are f32 in every precision): a run stopped in tf32 and resumed in bf16 — emulated by the
/// host kernels, which round every stored activation as a GPU's bf16 buffers do — repeats the
/// uninterrupted run up to the stop and then tracks it, and its checkpoints keep their names
/// and shapes.
#[test]
fn a_run_resumed_in_bf16_tracks_the_fp32_run() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, split, _) =
        whole_and_resumed(dir.path(), "epochs = 2", "2", &["--precision", "bf16"]);
    assert!(read(&split.join("pipeline.toml")).contains("precision = \"bf16\""));

    let (a, b) = (losses(&whole), losses(&split));
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 6, "{} steps", a.len());
    assert_eq!(a[..2], b[..2], "the same steps before the stop");
    let mut differ = false;
    for ((step, x), (_, y)) in a.iter().zip(&b).skip(2) {
        assert!(
            (x - y).abs() <= 2e-2 * x.abs(),
            "step {step}: fp32 {x} vs bf16 {y}"
        );
        differ |= x != y;
    }
    assert!(differ, "bf16 rounding changed nothing: {b:?}");
    let a = TensorFile::read(&latest_checkpoint(&whole)).unwrap();
    let b = TensorFile::read(&latest_checkpoint(&split)).unwrap();
    for (name, (shape, values)) in &a.tensors {
        let (other_shape, other) = &b.tensors[name];
        assert_eq!(shape, other_shape, "{name}");
        assert!(other.iter().all(|v| v.is_finite()), "{name}");
        assert_ne!(values, other, "{name}: bf16 steps left it as fp32 steps do");
    }
    assert_eq!(a.tensors.len(), b.tensors.len());
}

/// `check-fast --precision bf16` on the host: the kernels agree with themselves, and the
/// step — bf16 activations against dfdx's f32 and the f64 replay — holds to bf16's tolerance
/// while visibly differing from exact arithmetic (the rounding is applied).
#[test]
fn check_fast_passes_in_bf16() {
    let (out, results) = check_fast_on_the_sample_network("bf16", "nhwc", "off");
    let kinds = |kind: &str| results.iter().filter(move |r| r[0]["kind"] == kind).count();
    assert!(kinds("bf16_kernel") >= 20, "{out}");
    for r in &results {
        let name = r[0]["name"].as_str().unwrap();
        if name.starts_with("replayed d conv") {
            let error = r[0]["relative_error"].as_f64().unwrap();
            assert!(error > 1e-4 && error < 5e-2, "{name}: {error:e}\n{out}");
        }
    }
}

#[test]
fn a_fast_path_checkpoint_evaluates_the_same_on_either_path() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "epochs = 1");
    let run_dir = dir.path().join("run");
    assert!(train(&data, &run_dir, &pipeline, "fast", &[])
        .status
        .success());
    let mut reports = Vec::new();
    for engine in ["dfdx", "fast"] {
        run_ok(&evaluate_args(&data, &run_dir, &["--engine", engine]));
        let report: serde_json::Value =
            serde_json::from_str(&read(&run_dir.join("eval/report.json"))).unwrap();
        reports.push(report);
    }
    for key in ["center", "ten_crop"] {
        for metric in ["top1_error", "top5_error"] {
            assert_eq!(
                reports[0][key][metric], reports[1][key][metric],
                "{key} {metric}"
            );
        }
    }
}

/// The paper's network at batch 2, where one conv4 ReLU input lies within rounding of 0 and the
/// two paths decide it differently: their conv gradients differ by ~4e-4, which failed the old
/// comparison with dfdx. `check-fast` now holds the gradients to the f64 replay of the fast
/// path's own backward pass and only reports the difference from dfdx.
#[test]
fn check_fast_passes_at_a_batch_where_the_paths_decide_a_relu_differently() {
    let out = run_ok(&[
        "check-fast",
        "--pipeline",
        s(&repo_file("pipelines/alexnet.toml")),
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--precision",
        "strict",
    ]);
    let json = out.lines().last().unwrap();
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    let results = report["results"].as_array().unwrap();
    // Kernels; logits; 16 gradients against dfdx; the head's 6 and the features' replayed; 10
    // replayed and 10 from exact decisions in the convolutions; 16 SGD updates.
    assert_eq!(results.len(), KERNEL_CASES + 1 + 16 + 7 + 10 + 10 + 16);
    assert!(!out.contains("FAIL"), "{out}");
    let error = |name: &str| {
        let (c, _) = results
            .iter()
            .map(|r| (&r[0], &r[1]))
            .find(|(c, _)| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {out}"));
        c["relative_error"].as_f64().unwrap()
    };
    // The kink is there, reported: dfdx and the fast path differ by far more than rounding...
    assert!(error("dfdx d features.4.weight") > 1e-4, "{out}");
    // ... and the replay from the fast path's own activations agrees to rounding.
    assert!(error("replayed d conv2.weight") < 1e-5, "{out}");
    // The fully connected part replays to rounding as well.
    assert!(error("replayed d classifier.1.weight") < 1e-5, "{out}");
    let decisions = report["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 8, "{out}");
}

/// `check-fast --layout nhwc` holds the channels-last kernels to the host's (which compute in
/// NCHW and transpose) and replays the step from activations recorded back in NCHW.
#[test]
fn check_fast_passes_with_channels_last_activations() {
    let (out, results) = check_fast_on_the_sample_network("strict", "nhwc", "off");
    for r in &results {
        let name = r[0]["name"].as_str().unwrap();
        if name.starts_with("replayed d conv") || name.starts_with("kernel ") {
            let error = r[0]["relative_error"].as_f64().unwrap();
            assert!(error < 1e-5, "{name}: {error:e}\n{out}");
        }
    }
}

/// `check-fast --graphs on` runs the step twice more — recorded, then replayed — and holds its
/// logits and all 16 gradients to the step run directly, exactly (on the host the replay is
/// also checked to make the recorded calls).
#[test]
fn check_fast_holds_replayed_passes_to_the_step_run_directly() {
    let (out, results) = check_fast_on_the_sample_network("bf16", "nhwc", "on");
    let recorded: Vec<_> = results
        .iter()
        .filter(|r| r[0]["kind"] == "recorded")
        .collect();
    assert_eq!(recorded.len(), 17, "{out}");
    for r in recorded {
        assert!(r[0]["name"]
            .as_str()
            .unwrap()
            .starts_with("recorded passes: "));
        assert_eq!(r[0]["relative_error"].as_f64(), Some(0.0), "{r}");
        assert_eq!(r[1].as_f64(), Some(0.0), "held exactly: {r}");
    }
}

/// `check-fast` of the sample pipeline at batch 3 on the CPU in `precision` and `layout`, with
/// `graphs` on or off, which must pass with every comparison there: its output and its results.
fn check_fast_on_the_sample_network(
    precision: &str,
    layout: &str,
    graphs: &str,
) -> (String, Vec<serde_json::Value>) {
    let out = run_ok(&[
        "check-fast",
        "--pipeline",
        s(&repo_file("pipelines/sample.toml")),
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--precision",
        precision,
        "--layout",
        layout,
        "--graphs",
        graphs,
    ]);
    assert!(!out.contains("FAIL"), "{out}");
    let report: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(report["precision"], precision);
    let results = report["results"].as_array().unwrap().clone();
    // With graphs, the logits and 16 gradients of the step replayed.
    let recorded = if graphs == "on" { 17 } else { 0 };
    assert_eq!(
        results.len(),
        KERNEL_CASES + 1 + 16 + 7 + 10 + 10 + 16 + recorded
    );
    (out, results)
}

/// `bench-train`'s profile puts every stage of the fast path beside the bytes it must move and
/// their time at the measured bandwidth: a stage the cost table misses (a renamed stage, a new
/// one) fails here. The dfdx path's stages have no floors.
#[test]
fn bench_train_puts_every_fast_path_stage_beside_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "");
    for engine in ["fast", "dfdx"] {
        let out = run_ok(&[
            "bench-train",
            "--data",
            s(&data),
            "--pipeline",
            s(&pipeline),
            "--device",
            "cpu",
            "--engine",
            engine,
            "--batch-size",
            "4",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--profile-steps",
            "1",
        ]);
        let report: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let stages: Vec<&str> = report["stages_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[0].as_str().unwrap())
            .collect();
        let floors = report["floors"].as_array().unwrap();
        if engine == "dfdx" {
            assert!(floors.is_empty(), "{out}");
            continue;
        }
        assert!(report["bandwidth_gbs"].as_f64().unwrap() > 0.0, "{out}");
        let floored: Vec<&str> = floors
            .iter()
            .map(|f| f["stage"].as_str().unwrap())
            .collect();
        assert_eq!(stages, floored, "{out}");
        assert!(stages.len() > 30, "{out}");
        for f in floors {
            assert!(f["megabytes"].as_f64().unwrap() > 0.0, "{f}");
            assert!(f["floor_ms"].as_f64().unwrap() > 0.0, "{f}");
        }
    }
}

/// Outputs of `check-fast`'s kernel cases (every kernel on the network's shapes).
const KERNEL_CASES: usize = 54;

/// `auto`, the default engine, takes the fast path on the CPU too (its host kernels are the
/// faster ones there); `--engine dfdx` still selects the reference.
#[test]
fn the_default_engine_on_the_cpu_is_the_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = tiny_setup(dir.path(), "");
    let stop = ["--stop-after-steps", "1"];
    let auto = dir.path().join("auto");
    let mut args = train_args(&data, &auto, &pipeline);
    args.extend(stop);
    let out = common::run(&args);
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("with the fast path (host kernels)"),
        "{stderr}"
    );

    let out = train(&data, &dir.path().join("dfdx"), &pipeline, "dfdx", &stop);
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("with dfdx ops"), "{stderr}");
}
