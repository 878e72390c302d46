//! `alexnet preprocess --part I/N` and `--merge`: a job split over processes (standing in for
//! machines) gives exactly what one machine writes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A sample dataset and a pipeline with small shards, so that three parts get several each.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let src = dir.join("src");
    run_ok(&[
        "sample",
        "--out",
        s(&src),
        "--classes",
        "4",
        "--train-per-class",
        "30",
        "--val-per-class",
        "6",
        "--min-side",
        "64",
        "--max-side",
        "500",
    ]);
    let pipeline = dir.join("parts.toml");
    std::fs::write(
        &pipeline,
        "name = \"parts\"\n[preprocess]\nimage_size = 64\nshard_images = 8\n[loader]\ncrop_size = 56\n",
    )
    .unwrap();
    (src, pipeline)
}

fn args<'a>(src: &'a Path, out: &'a Path, pipeline: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = preprocess_with(src, out, pipeline, &["--jobs", "1"]);
    args.extend_from_slice(extra);
    args
}

fn spawn(args: &[&str]) -> Child {
    bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Parts 0/2 and 1/2 run each in a directory of its own (as on two machines); returns where
/// part `i`'s output is.
fn two_parts_on_their_own(dir: &Path, src: &Path, pipeline: &Path) -> impl Fn(usize) -> PathBuf {
    let dir = dir.to_path_buf();
    let own = move |i: usize| dir.join(format!("machine-{i}"));
    for (i, part) in ["0/2", "1/2"].iter().enumerate() {
        run_ok(&args(src, &own(i), pipeline, &["--part", part]));
    }
    own
}

fn single_machine(dir: &Path, src: &Path, pipeline: &Path) -> PathBuf {
    let out = dir.join("single");
    run_ok(&args(src, &out, pipeline, &[]));
    out
}

#[test]
fn parts_running_at_once_in_one_directory_give_the_single_machine_result() {
    let dir = tempfile::tempdir().unwrap();
    let (src, pipeline) = setup(dir.path());
    let reference = single_machine(dir.path(), &src, &pipeline);
    let out = dir.path().join("shared");
    let parts = ["0/3", "1/3", "2/3"];
    let children: Vec<Child> = parts
        .iter()
        .map(|part| spawn(&args(&src, &out, &pipeline, &["--part", part])))
        .collect();
    let mut said = String::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        said.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    // Exactly one of them merged, whichever finished last.
    assert_eq!(
        said.matches("was the last to finish: merged all 3 parts")
            .count(),
        1,
        "{said}"
    );
    assert_same_tree(&reference, &out);
}

#[test]
fn a_killed_part_run_again_finishes_the_job_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (src, pipeline) = setup(dir.path());
    let reference = single_machine(dir.path(), &src, &pipeline);
    let out = dir.path().join("shared");
    run_ok(&args(&src, &out, &pipeline, &["--part", "0/2"]));
    // Part 1 dies (SIGKILL) once it has finished a shard of its own.
    let mut child = spawn(&args(&src, &out, &pipeline, &["--part", "1/2"]));
    let started = Instant::now();
    while !out.join("train/shard-00001.done.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "part 1 never wrote a shard"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !out.join("manifest.json").exists(),
        "not complete without part 1"
    );
    // Its lock died with it; run again, it resumes, finishes last and merges.
    let said = run_ok(&args(&src, &out, &pipeline, &["--part", "1/2"]));
    assert!(said.contains("merged all 2 parts"), "{said}");
    assert_same_tree(&reference, &out);
}

#[test]
fn per_part_directories_copied_together_merge_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (src, pipeline) = setup(dir.path());
    let reference = single_machine(dir.path(), &src, &pipeline);
    let merged = dir.path().join("merged");
    for (i, part) in ["0/3", "1/3", "2/3"].iter().enumerate() {
        let own = dir.path().join(format!("machine-{i}"));
        let said = run_ok(&args(&src, &own, &pipeline, &["--part", part]));
        assert!(said.contains("have not finished"), "{said}");
        copy_tree(&own, &merged);
        if i == 1 {
            // Two of three parts: the merge names the missing one.
            let err = run_err(&args(&src, &merged, &pipeline, &["--merge"]));
            assert!(err.contains("parts 2/3 have not finished"), "{err}");
        }
    }
    let said = run_ok(&args(&src, &merged, &pipeline, &["--merge"]));
    assert!(said.contains("merged 3 parts"), "{said}");
    assert_same_tree(&reference, &merged);
    // Merging again is a no-op.
    let said = run_ok(&args(&src, &merged, &pipeline, &["--merge"]));
    assert!(said.contains("already complete"), "{said}");
}

#[test]
fn a_part_whose_inputs_changed_is_named_and_rerunning_it_fixes_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (src, pipeline) = setup(dir.path());
    let merged = dir.path().join("merged");
    let own = two_parts_on_their_own(dir.path(), &src, &pipeline);
    // An input of train shard 2 (part 0) changes after part 0 ran.
    let class = src
        .join("train")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let mut files: Vec<PathBuf> = class
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::copy(&files[0], &files[17]).unwrap(); // input 17 of the split is in shard 2
    copy_tree(&own(0), &merged);
    copy_tree(&own(1), &merged);
    let err = run_err(&args(&src, &merged, &pipeline, &["--merge"]));
    assert!(
        err.contains("train shard 2") && err.contains("input files changed"),
        "{err}"
    );
    assert!(err.contains("--part 0/2"), "{err}");
    // The advice, in the merged directory: part 0 again (it finishes last and merges).
    let said = run_ok(&args(&src, &merged, &pipeline, &["--part", "0/2"]));
    assert!(said.contains("merged all 2 parts"), "{said}");
    let fresh = single_machine(dir.path(), &src, &pipeline);
    assert_same_tree(&fresh, &merged);
}

#[test]
fn a_running_part_excludes_itself_and_whole_runs_but_not_other_parts() {
    use alexnet::lock::{DirLock, Mode, LOCK_FILE};
    let dir = tempfile::tempdir().unwrap();
    let (src, pipeline) = setup(dir.path());
    let out = dir.path().join("shared");
    std::fs::create_dir_all(&out).unwrap();
    // What a running part 1/3 holds: the directory shared, its own part exclusively.
    let part = alexnet::preprocess::Part { index: 1, count: 3 };
    let what = "`alexnet preprocess`";
    let _dir = DirLock::acquire_named(&out, LOCK_FILE, Mode::Shared, what).unwrap();
    let _part = DirLock::acquire_named(&out, &part.lock_name(), Mode::Exclusive, what).unwrap();
    let err = run_err(&args(&src, &out, &pipeline, &["--part", "1/3"]));
    assert!(
        err.contains("in use by another `alexnet preprocess`"),
        "{err}"
    );
    // The refused duplicate left the holder's name alone: the next refusal still names the
    // running holder (this process), not the duplicate that has exited.
    let err = run_err(&args(&src, &out, &pipeline, &[]));
    assert!(
        err.contains("in use by another `alexnet preprocess`"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {} ", std::process::id())),
        "{err}"
    );
    let said = run_ok(&args(&src, &out, &pipeline, &["--part", "0/3"]));
    assert!(said.contains("other parts are still running"), "{said}");
    let err = run_err(&args(
        &src,
        &dir.path().join("x"),
        &pipeline,
        &["--part", "3/3"],
    ));
    assert!(err.contains("0 <= I < N"), "{err}");
}

/// A damaged part file (`parts/part-1-of-2.sums`) got "re-run with the same arguments", which
/// failed the same way; the fix that works is running that part again, and the error says so.
#[test]
fn a_damaged_part_file_names_the_part_to_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let (src, pipeline) = setup(dir.path());
    let merged = dir.path().join("merged");
    let own = two_parts_on_their_own(dir.path(), &src, &pipeline);
    copy_tree(&own(0), &merged);
    copy_tree(&own(1), &merged);
    let sums = merged.join("parts/part-1-of-2.sums");
    let mut bytes = std::fs::read(&sums).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(&sums, bytes).unwrap();
    let err = run_err(&args(&src, &merged, &pipeline, &["--merge"]));
    assert!(
        err.contains("part-1-of-2.sums") && err.contains("--part 1/2"),
        "{err}"
    );
    // The advice works: part 1 again, in the merged directory, finishes last and merges.
    let said = run_ok(&args(&src, &merged, &pipeline, &["--part", "1/2"]));
    assert!(said.contains("merged all 2 parts"), "{said}");
    assert_same_tree(&single_machine(dir.path(), &src, &pipeline), &merged);
}

/// `--part 1/3` on an output a single run had finished said that the other parts had not
/// finished, and left `parts/` behind.
#[test]
fn a_part_in_a_finished_output_has_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (src, pipeline) = setup(dir.path());
    let out = single_machine(dir.path(), &src, &pipeline);
    let said = run_ok(&args(&src, &out, &pipeline, &["--part", "1/3"]));
    assert!(said.contains("already complete"), "{said}");
    assert!(!said.contains("have not finished"), "{said}");
    assert!(!out.join("parts").exists());
}
