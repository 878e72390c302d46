//! Checkpoints against the reference implementation of the format: the Python `safetensors`
//! package (with numpy). Skipped, with a message, where Python or the package is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use alexnet::model::checkpoint::TensorFile;
use common::*;
use serde_json::Value;

/// The Python interpreter, if it can import `safetensors.numpy`; otherwise says why the test
/// is skipped.
fn python_with_safetensors() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import numpy, safetensors.numpy"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if ok {
        Some("python3")
    } else {
        eprintln!(
            "skipped: needs python3 with numpy and safetensors \
             (python3 -m pip install numpy safetensors)"
        );
        None
    }
}

fn python(interpreter: &str, script: &str, args: &[&str]) -> String {
    let out = Command::new(interpreter)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn trained_run(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (data, pipeline) = tiny_setup(dir, "epochs = 1");
    let run_dir = dir.join("run");
    run_ok(&train_args(&data, &run_dir, &pipeline));
    (data, pipeline, run_dir)
}

fn evaluate(data: &Path, run_dir: &Path, extra: &[&str]) -> Value {
    run_ok(&evaluate_args(data, run_dir, extra));
    serde_json::from_str(&read(&run_dir.join("eval/report.json"))).unwrap()
}

/// Reads a checkpoint with `safetensors.numpy` and prints every tensor (dtype, shape, values)
/// and the metadata as JSON.
const DUMP: &str = r#"
import json, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
tensors = load_file(sys.argv[1])
with safe_open(sys.argv[1], framework="np") as f:
    metadata = f.metadata() or {}
print(json.dumps({
    "tensors": {name: {"dtype": str(t.dtype), "shape": list(t.shape),
                       "values": [float(v) for v in t.ravel()]}
                for name, t in tensors.items()},
    "metadata": metadata,
}))
"#;

#[test]
fn the_python_safetensors_package_reads_our_checkpoints() {
    let Some(py) = python_with_safetensors() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, _, run_dir) = trained_run(dir.path());
    let path = latest_checkpoint(&run_dir);
    let ours = TensorFile::read(&path).unwrap();
    let theirs: Value = serde_json::from_str(&python(py, DUMP, &[s(&path)])).unwrap();

    let tensors = theirs["tensors"].as_object().unwrap();
    let names: std::collections::BTreeSet<&String> = tensors.keys().collect();
    assert_eq!(names, ours.tensors.keys().collect());
    assert!(tensors.contains_key("features.0.weight"));
    assert!(tensors.contains_key("momentum.classifier.6.bias"));
    for (name, (shape, values)) in &ours.tensors {
        let tensor = &tensors[name];
        assert_eq!(tensor["dtype"], "float32", "{name}");
        let their_shape: Vec<usize> = serde_json::from_value(tensor["shape"].clone()).unwrap();
        assert_eq!(&their_shape, shape, "{name}");
        // Every float32 is exact as a JSON double, so the values must be bit-equal.
        let their_values: Vec<f32> = tensor["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(&their_values, values, "{name}");
    }
    // Our metadata (training state, checksums) is plain safetensors metadata to them.
    let metadata = theirs["metadata"].as_object().unwrap();
    for (key, value) in &ours.metadata {
        assert_eq!(metadata[key], Value::String(value.clone()), "{key}");
    }
    assert!(metadata.contains_key("state"));
}

/// What a PyTorch user would write: the weights only, under PyTorch's names, saved by the
/// library (no metadata at all).
const RESAVE: &str = r#"
import sys
from safetensors.numpy import load_file, save_file
state = {k: v for k, v in load_file(sys.argv[1]).items() if not k.startswith("momentum.")}
save_file(state, sys.argv[2])
"#;

#[test]
fn a_checkpoint_saved_by_the_python_safetensors_package_evaluates_to_the_same_numbers() {
    let Some(py) = python_with_safetensors() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline, run_dir) = trained_run(dir.path());
    let ours = evaluate(&data, &run_dir, &[]);

    let foreign = dir.path().join("numpy.safetensors");
    python(py, RESAVE, &[s(&latest_checkpoint(&run_dir)), s(&foreign)]);
    let file = TensorFile::read(&foreign).unwrap();
    assert!(file.metadata.is_empty());
    assert!(file
        .tensors
        .keys()
        .all(|name| !name.starts_with("momentum.")));

    let elsewhere = dir.path().join("elsewhere");
    let theirs = evaluate(
        &data,
        &elsewhere,
        &["--checkpoint", s(&foreign), "--pipeline", s(&pipeline)],
    );
    assert_eq!(ours["center"], theirs["center"]);
    assert_eq!(ours["ten_crop"], theirs["ten_crop"]);

    // A NaN saved by the library is refused like one of ours would be.
    let poisoned = dir.path().join("nan.safetensors");
    let poison = r#"
import sys, numpy as np
from safetensors.numpy import load_file, save_file
state = load_file(sys.argv[1])
state["features.0.weight"].flat[3] = np.nan
save_file(state, sys.argv[2])
"#;
    python(py, poison, &[s(&foreign), s(&poisoned)]);
    let err = run_err(&evaluate_args(
        &data,
        &dir.path().join("poisoned"),
        &["--checkpoint", s(&poisoned), "--pipeline", s(&pipeline)],
    ));
    assert!(
        err.contains("features.0.weight") && err.contains("nan.safetensors"),
        "{err}"
    );
}
