//! Data-parallel training on the CPU: several `alexnet train` processes launched the way
//! torchrun launches them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), meeting
//! over the control plane and summing gradients through it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `alexnet args…` as rank `rank` of `size`, started the way torchrun starts it.
fn rank(args: &[&str], rank: usize, size: usize, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alexnet"));
    cmd.args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", size.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("ALEXNET_DIST_TIMEOUT", "60")
        .env("ALEXNET_DIST_CHECK_EVERY", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("starting a rank")
}

/// Runs `size` ranks of `args` and returns each one's exit code and stderr.
fn job(args: &[&str], size: usize, extra: &[(&str, &str)]) -> Vec<(Option<i32>, String)> {
    let port = free_port();
    let children: Vec<Child> = (0..size)
        .map(|r| rank(args, r, size, port, extra))
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect()
}

fn assert_all_ok(results: &[(Option<i32>, String)]) {
    for (r, (code, stderr)) in results.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {r} failed:\n{stderr}");
    }
}

/// Each step's loss from a run's `steps.csv`.
fn losses(run: &Path) -> Vec<f64> {
    read(&run.join("steps.csv"))
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect()
}

/// The tiny pipeline at a flat learning rate (high enough that a wrongly scaled gradient shows in the losses) for `epochs` epochs (about four steps each).
fn setup(dir: &Path, epochs: u64, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    tiny_setup(
        dir,
        &format!("epochs = {epochs}\nlearning_rate = 0.2\nlr_patience = 1000\n{extra}"),
    )
}

#[test]
fn two_and_three_cpu_ranks_follow_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 5, "checkpoint_every = 3");
    let alone = dir.path().join("alone");
    run_ok(&train_args(&data, &alone, &pipeline));
    let expected = losses(&alone);
    assert!(expected.len() >= 20, "{} steps", expected.len());

    for size in [2, 3] {
        let shared = dir.path().join(format!("ranks-{size}"));
        let results = job(&train_args(&data, &shared, &pipeline), size, &[]);
        assert_all_ok(&results);
        let got = losses(&shared);
        assert_eq!(got.len(), expected.len(), "{size} ranks");
        for (step, (a, b)) in expected.iter().zip(&got).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs(),
                "{size} ranks, step {}: loss {b} where one process had {a}",
                step + 1
            );
        }
        // Rank 0 reports; the others stay quiet.
        assert!(
            results[0].1.contains("data-parallel over"),
            "{}",
            results[0].1
        );
        for (_, stderr) in &results[1..] {
            assert!(stderr.trim().is_empty(), "{stderr}");
        }
        // One set of checkpoints and logs, as one process writes them.
        let names = |run: &Path| -> Vec<String> {
            let mut n: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&shared), names(&alone));
        let val = |run: &Path| -> Vec<String> {
            read(&run.join("metrics.csv"))
                .lines()
                .map(|l| l.split(',').take(8).skip(5).collect::<Vec<_>>().join(","))
                .collect()
        };
        // Validation counts are whole numbers: the same images right and wrong.
        let (a, b) = (val(&alone), val(&shared));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b).skip(1) {
            let errors = |s: &str| -> Vec<f64> {
                s.split(',').skip(1).map(|v| v.parse().unwrap()).collect()
            };
            assert_eq!(errors(x), errors(y), "validation errors (top-1, top-5)");
        }
    }
}

#[test]
fn a_run_resumes_on_another_number_of_ranks() {
    // The state and the stream are the whole job's: two ranks stopped at step 6, then one
    // process and then three ranks continue the same run.
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 4, "");
    let alone = dir.path().join("alone");
    run_ok(&train_args(&data, &alone, &pipeline));
    let run_dir = dir.path().join("run");
    let mut first = train_args(&data, &run_dir, &pipeline);
    first.extend(["--stop-after-steps", "6"]);
    for (code, stderr) in job(&first, 2, &[]) {
        assert_eq!(code, Some(130), "{stderr}");
    }
    let mut second = train_args(&data, &run_dir, &pipeline);
    second.extend(["--resume", "--stop-after-steps", "11"]);
    assert_eq!(run(&second).status.code(), Some(130));
    let mut third = train_args(&data, &run_dir, &pipeline);
    third.push("--resume");
    assert_all_ok(&job(&third, 3, &[]));
    let (expected, got) = (losses(&alone), losses(&run_dir));
    assert_eq!(got.len(), expected.len());
    for (step, (a, b)) in expected.iter().zip(&got).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs(),
            "step {}: loss {b} where one process had {a}",
            step + 1
        );
    }
}

#[test]
fn one_rank_through_the_launcher_equals_the_plain_run() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 2, "");
    let alone = dir.path().join("alone");
    run_ok(&train_args(&data, &alone, &pipeline));
    let launched = dir.path().join("launched");
    assert_all_ok(&job(&train_args(&data, &launched, &pipeline), 1, &[]));
    assert_eq!(losses(&alone), losses(&launched));
}

/// With `--graphs on`, a rank replays its forward pass but runs its backward pass directly,
/// summing each layer's gradients as they are written — even a job of one rank, whose sums
/// are the collective a one-rank launch is there to exercise (replaying the pass skipped
/// them) — and still repeats the plain run.
#[test]
fn a_rank_with_graphs_sums_its_gradients_instead_of_replaying_its_backward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 1, "");
    let alone = dir.path().join("alone");
    let mut args = train_args(&data, &alone, &pipeline);
    args.extend(["--graphs", "on"]);
    let out = run(&args);
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8_lossy(&out.stderr).into_owned();
    let launched = dir.path().join("launched");
    let mut args = train_args(&data, &launched, &pipeline);
    args.extend(["--graphs", "on"]);
    let results = job(&args, 1, &[]);
    assert_all_ok(&results);
    assert_eq!(losses(&alone), losses(&launched));
    // Alone: training's forward and backward passes recorded; as a rank, the forward pass.
    let epoch_line = |stderr: &str| {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("  passes (compute.graphs)"));
        line.unwrap_or_else(|| panic!("no passes line in {stderr}"))
            .to_string()
    };
    assert!(epoch_line(&out).contains(" 2 recorded"), "{out}");
    let rank = &results[0].1;
    assert!(epoch_line(rank).contains(" 1 recorded"), "{rank}");
}

#[test]
fn evaluation_shared_by_ranks_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 2, "");
    let alone = dir.path().join("alone");
    run_ok(&train_args(&data, &alone, &pipeline));
    let shared = dir.path().join("shared");
    copy_tree(&alone, &shared);
    run_ok(&evaluate_args(&data, &alone, &[]));
    let args = evaluate_args(&data, &shared, &[]);
    let results = job(&args, 3, &[]);
    assert_all_ok(&results);
    let report = |run: &Path| -> serde_json::Value {
        serde_json::from_str(&read(&run.join("eval/report.json"))).unwrap()
    };
    let (a, b) = (report(&alone), report(&shared));
    assert_eq!(a["images"], b["images"]);
    for protocol in ["center", "ten_crop"] {
        for key in ["top1_error", "top5_error"] {
            assert_eq!(a[protocol][key], b[protocol][key], "{protocol} {key}");
        }
        let loss = |r: &serde_json::Value| r[protocol]["loss"].as_f64().unwrap();
        assert!(
            (loss(&a) - loss(&b)).abs() <= 1e-9 * loss(&a),
            "{protocol} loss"
        );
    }
    assert_eq!(a["per_class"], b["per_class"]);
    assert!(shared.join("eval/predictions.parquet").exists());
}

#[test]
fn a_killed_rank_ends_the_others_with_a_clear_error_and_the_checkpoint_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 200, "checkpoint_every = 2");
    let run_dir = dir.path().join("run");
    let args = train_args(&data, &run_dir, &pipeline);
    let port = free_port();
    let root = rank(&args, 0, 2, port, &[("ALEXNET_DIST_TIMEOUT", "20")]);
    let mut other = rank(&args, 1, 2, port, &[("ALEXNET_DIST_TIMEOUT", "20")]);
    let started = Instant::now();
    while losses_so_far(&run_dir) < 5 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    other.kill().unwrap();
    let killed = Instant::now();
    let out = root.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "rank 0 took {:?} to notice",
        killed.elapsed()
    );
    assert!(
        stderr.contains("lost rank 1") && stderr.contains("ended or was killed"),
        "{stderr}"
    );
    assert_no_panic(&stderr);
    let _ = other.wait();
    // The last checkpoint is good: one process continues the run from it.
    let mut resume = train_args(&data, &run_dir, &pipeline);
    resume.extend(["--resume", "--epochs", "3"]);
    let status = run(&resume);
    assert!(
        status.status.success() || status.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// Steps logged so far (0 before the log exists).
fn losses_so_far(run: &Path) -> usize {
    std::fs::read_to_string(run.join("steps.csv"))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

/// Starts two ranks of `args` and returns once a few steps are logged in `run_dir`.
fn two_ranks_under_way(args: &[&str], run_dir: &Path) -> Vec<Child> {
    let port = free_port();
    let children: Vec<Child> = (0..2).map(|r| rank(args, r, 2, port, &[])).collect();
    let started = Instant::now();
    while losses_so_far(run_dir) < 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    children
}

/// Waits for every rank to exit with 130 (interrupted) and checks the checkpoint of the last
/// step logged; returns rank 0's stderr.
fn assert_stopped_and_saved(children: Vec<Child>, run_dir: &Path) -> String {
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (r, out) in outputs.iter().enumerate() {
        assert_eq!(
            out.status.code(),
            Some(130),
            "rank {r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let steps = losses_so_far(run_dir);
    assert!(run_dir
        .join(format!("checkpoints/step-{steps:09}.safetensors"))
        .exists());
    String::from_utf8_lossy(&outputs[0].stderr).into_owned()
}

#[test]
fn a_stop_asked_of_one_rank_stops_all_after_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 200, "");
    let run_dir = dir.path().join("run");
    let children = two_ranks_under_way(&train_args(&data, &run_dir, &pipeline), &run_dir);
    // Ctrl-C reaching one rank only (a launcher passes it to all; any one is enough).
    let pid = children[1].id() as libc::pid_t;
    // SAFETY: a plain signal to a child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let stderr = assert_stopped_and_saved(children, &run_dir);
    assert!(
        stderr.contains("another rank was asked to stop"),
        "{stderr}"
    );
    assert!(stderr.contains("continue with"), "{stderr}");
}

#[test]
fn ctrl_c_at_the_launcher_stops_every_rank_once() {
    // A terminal's Ctrl-C reaches every rank, and torchrun passes a SIGTERM on right after:
    // each rank must take the two as one request, save once and exit 130.
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 200, "");
    let run_dir = dir.path().join("run");
    let children = two_ranks_under_way(&train_args(&data, &run_dir, &pipeline), &run_dir);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        for child in &children {
            // SAFETY: a plain signal to a child this test started.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_stopped_and_saved(children, &run_dir);
}

/// Runs rank 0 with `args` and rank 1 with `other` and `env`, to the end of both.
fn two_ranks(args: &[&str], other: &[&str], env: &[(&str, &str)]) -> Vec<std::process::Output> {
    let port = free_port();
    let children = [rank(args, 0, 2, port, &[]), rank(other, 1, 2, port, env)];
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

#[test]
fn ranks_whose_weights_come_apart_stop_without_saving() {
    // One bit of one weight flips on rank 1 in the second step (16 updates a step), as faulty
    // memory would: the next comparison (every 2 steps here) must catch it.
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 3, "");
    let run_dir = dir.path().join("run");
    let args = train_args(&data, &run_dir, &pipeline);
    let outputs = two_ranks(&args, &args, &[("ALEXNET_HOST_FAULT", "flip=sgd@20")]);
    for out in &outputs {
        assert!(!out.status.success());
    }
    let stderr = String::from_utf8_lossy(&outputs[0].stderr);
    assert!(
        stderr.contains("the ranks' weights differ at step 2") && stderr.contains("rank 1: "),
        "{stderr}"
    );
    assert_no_panic(&stderr);
    assert!(!run_dir.join("checkpoints").exists() || latest_is_none(&run_dir));
}

fn latest_is_none(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn a_rank_that_cannot_start_stops_the_others_at_once() {
    // Rank 1 alone asks to resume a run that has no checkpoints: it fails before training, and
    // rank 0 hears why at once instead of waiting for the timeout.
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 2, "");
    let run_dir = dir.path().join("run");
    let args = train_args(&data, &run_dir, &pipeline);
    let mut resume = args.clone();
    resume.push("--resume");
    let started = Instant::now();
    let outputs = two_ranks(&args, &resume, &[]);
    assert!(started.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&outputs[0].stderr);
    assert!(!outputs[0].status.success());
    assert!(
        stderr.contains("rank 1 stopped") && stderr.contains("finds no checkpoints"),
        "{stderr}"
    );
    assert_no_panic(&stderr);
}

#[test]
fn ranks_started_with_different_commands_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 2, "");
    let run_dir = dir.path().join("run");
    let args = train_args(&data, &run_dir, &pipeline);
    let mut other = args.clone();
    other.extend(["--stop-after-steps", "3"]);
    for out in two_ranks(&args, &other, &[]) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("rank 1 runs") && stderr.contains("to step 3"),
            "{stderr}"
        );
    }
}

#[test]
fn ranks_that_never_arrive_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 1, "");
    let run_dir = dir.path().join("run");
    let results = job(
        &train_args(&data, &run_dir, &pipeline),
        1,
        &[("WORLD_SIZE", "3"), ("ALEXNET_DIST_TIMEOUT", "1")],
    );
    let (code, stderr) = &results[0];
    assert_ne!(*code, Some(0));
    assert!(
        stderr.contains("rank(s) 1, 2 of 3 did not arrive"),
        "{stderr}"
    );
}

#[test]
fn the_dfdx_engine_refuses_to_run_as_a_rank() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline) = setup(dir.path(), 1, "");
    let run_dir = dir.path().join("run");
    let mut args = train_args(&data, &run_dir, &pipeline);
    args.extend(["--engine", "dfdx"]);
    let results = job(&args, 1, &[]);
    let (code, stderr) = &results[0];
    assert_ne!(*code, Some(0));
    assert!(
        stderr.contains("data-parallel job runs on the fast engine"),
        "{stderr}"
    );
}
