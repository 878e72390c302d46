//! Helpers for tests that run the real `alexnet` binary on generated data.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_alexnet"))
}

/// Runs the binary and returns its output, whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("running alexnet")
}

/// Runs the binary and fails the test, printing both streams, unless it succeeds.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "alexnet {} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the binary, expects failure, and returns stderr.
pub fn run_err(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "alexnet {} should have failed\n--- stdout\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A small sample dataset (with every edge case) generated into `dir/src`.
pub fn small_sample(dir: &Path, extra: &[&str]) -> PathBuf {
    let src = dir.join("src");
    let mut args = vec![
        "sample",
        "--out",
        s(&src),
        "--classes",
        "4",
        "--train-per-class",
        "10",
        "--val-per-class",
        "3",
        "--max-side",
        "400",
    ];
    args.extend_from_slice(extra);
    run_ok(&args);
    src
}

/// Arguments of `alexnet preprocess` with the sample pipeline.
pub fn preprocess_args(src: &Path, out: &Path, jobs: &str) -> Vec<String> {
    let pipeline = repo_file("pipelines/sample.toml");
    preprocess_with(src, out, &pipeline, &["--jobs", jobs])
        .into_iter()
        .map(String::from)
        .collect()
}

/// Runs `alexnet preprocess` with the sample pipeline; returns stdout.
pub fn preprocess_sample(src: &Path, out: &Path, jobs: &str) -> String {
    let args = preprocess_args(src, out, jobs);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Every file under `root`, by relative path, with its bytes.
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Asserts two directory trees hold the same files with the same bytes, naming the first
/// difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    let names_a: Vec<_> = ta.keys().collect();
    let names_b: Vec<_> = tb.keys().collect();
    assert_eq!(names_a, names_b, "file lists differ");
    for (name, bytes) in &ta {
        assert!(
            bytes == &tb[name],
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// A network just big enough for AlexNet's layer structure (64 px crops), on 72 px images.
pub const TINY_PIPELINE: &str = r#"
name = "tiny"
[preprocess]
image_size = 72
shard_images = 16
[loader]
crop_size = 64
batch_size = 8
threads = 2
[model]
conv_channels = [4, 8, 8, 8, 8]
fc_units = 16
init_std = 0.05
init_bias = 0.1
[train]
epochs = 3
checkpoint_every = 0
keep_checkpoints = 2
"#;

/// Shards of a small sample dataset, and the tiny pipeline (with `extra` TOML lines replacing
/// keys of the `[train]` section) written next to them.
pub fn tiny_setup(dir: &Path, train_overrides: &str) -> (PathBuf, PathBuf) {
    let pipeline = dir.join("tiny.toml");
    let mut text = TINY_PIPELINE.to_string();
    for line in train_overrides.lines().filter(|l| !l.trim().is_empty()) {
        let key = line.split('=').next().unwrap().trim();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| l.split('=').next().unwrap().trim() != key)
            .collect();
        text = kept.join("\n") + "\n" + line + "\n";
    }
    std::fs::write(&pipeline, text).unwrap();
    let src = small_sample(dir, &[]);
    let data = dir.join("shards");
    run_ok(&preprocess_with(&src, &data, &pipeline, &[]));
    (data, pipeline)
}

pub fn train_args<'a>(data: &'a Path, run: &'a Path, pipeline: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        s(data),
        "--run",
        s(run),
        "--pipeline",
        s(pipeline),
        "--device",
        "cpu",
    ]
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The newest checkpoint of a run.
pub fn latest_checkpoint(run: &Path) -> PathBuf {
    let mut all: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    all.sort();
    all.pop().expect("a checkpoint")
}

/// Writes `file`'s tensors as a PyTorch user would (`safetensors` with no metadata at all:
/// no checksums, no training state), with the `safetensors` crate rather than our writer.
pub fn write_foreign_checkpoint(path: &Path, file: &alexnet::model::checkpoint::TensorFile) {
    write_safetensors(path, file, &[]);
}

/// `file`'s tensors as a safetensors file with exactly `metadata`, written by the `safetensors`
/// crate (no checksums added).
pub fn write_safetensors(
    path: &Path,
    file: &alexnet::model::checkpoint::TensorFile,
    metadata: &[(&str, &str)],
) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = file
        .tensors
        .iter()
        .map(|(name, (shape, data))| {
            let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), raw, shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(name, raw, shape)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::tensor::Dtype::F32,
                shape.clone(),
                raw,
            )
            .unwrap();
            (name.clone(), view)
        })
        .collect();
    let metadata = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::HashMap<_, _>>()
    });
    std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
}

/// Overwrites `len` bytes of `path` at `offset` in place (same inode, as a failing disk
/// would), with `f` applied to each.
pub fn damage(path: &Path, offset: usize, len: usize, f: impl Fn(u8) -> u8) {
    let mut bytes = std::fs::read(path).unwrap();
    for b in &mut bytes[offset..offset + len] {
        *b = f(*b);
    }
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&bytes).unwrap();
}

/// `cp -r`: a copy of a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in tree(from) {
        let path = to.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Asserts that the output of a failed command does not show a panic.
pub fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "a panic instead of an error message:\n{stderr}"
    );
}

/// `alexnet evaluate --data DATA --run RUN --device cpu` and `extra`.
pub fn evaluate_args<'a>(data: &'a Path, run_dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "evaluate",
        "--data",
        s(data),
        "--run",
        s(run_dir),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    args
}

/// `alexnet preprocess --input SRC --output OUT --pipeline PIPELINE` and `extra`.
pub fn preprocess_with<'a>(
    src: &'a Path,
    out: &'a Path,
    pipeline: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "preprocess",
        "--input",
        s(src),
        "--output",
        s(out),
        "--pipeline",
        s(pipeline),
    ];
    args.extend_from_slice(extra);
    args
}
