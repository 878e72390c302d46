//! `alexnet evaluate` on a tiny trained run.

mod common;

use std::path::{Path, PathBuf};

use alexnet::files::read_parquet;
use alexnet::model::checkpoint::TensorFile;
use alexnet::shards::Manifest;
use arrow_array::{Array, ListArray, StringArray, UInt32Array};
use common::*;
use serde_json::Value;

/// Trains the tiny network for one epoch; returns (data, pipeline, run).
fn trained_run(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (data, pipeline) = tiny_setup(dir, "epochs = 2");
    let run_dir = dir.join("run");
    run_ok(&train_args(&data, &run_dir, &pipeline));
    (data, pipeline, run_dir)
}

fn evaluate(data: &Path, run_dir: &Path, extra: &[&str]) -> std::process::Output {
    run(&evaluate_args(data, run_dir, extra))
}

fn report(run_dir: &Path) -> Value {
    serde_json::from_str(&read(&run_dir.join("eval/report.json"))).unwrap()
}

#[test]
fn report_predictions_and_plots_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, run_dir) = trained_run(dir.path());
    let out = evaluate(&data, &run_dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The paper's Table 2 row beside ours.
    assert!(
        stdout.contains("40.7%") && stdout.contains("18.2%"),
        "{stdout}"
    );
    assert!(
        stdout.contains("10 crops") && stdout.contains("centre crop"),
        "{stdout}"
    );

    let r = report(&run_dir);
    let manifest: Manifest = serde_json::from_str(&read(&data.join("manifest.json"))).unwrap();
    let val_images = manifest.splits[&alexnet::shards::Split::Val].images;
    assert_eq!(r["images"].as_u64().unwrap(), val_images);
    assert_eq!(r["views_per_image"], 10);
    assert_eq!(r["classes"], 4);
    for protocol in ["center", "ten_crop"] {
        let top1 = r[protocol]["top1_error"].as_f64().unwrap();
        let top5 = r[protocol]["top5_error"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&top1) && (0.0..=1.0).contains(&top5),
            "{r}"
        );
        assert!(
            top5 <= top1,
            "{protocol}: top-5 error {top5} > top-1 error {top1}"
        );
    }
    // Four classes: the true class is always among the top five.
    assert_eq!(r["ten_crop"]["top5_error"].as_f64().unwrap(), 0.0);
    let per_class = r["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 4);
    let counted: u64 = per_class
        .iter()
        .map(|c| c["images"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, val_images);
    let correct: f64 = per_class
        .iter()
        .map(|c| c["ten_crop_top1_accuracy"].as_f64().unwrap() * c["images"].as_f64().unwrap())
        .sum();
    let top1 = r["ten_crop"]["top1_error"].as_f64().unwrap();
    assert!((1.0 - correct / val_images as f64 - top1).abs() < 1e-9);
    assert!(r["checkpoint"].as_str().unwrap().ends_with(".safetensors"));
    assert_eq!(r["epoch"], 2);
    assert!(r["images_per_sec"].as_f64().unwrap() > 0.0);

    // One prediction row per validation image, in the shards' order, labels as the index.
    let batches = read_parquet(&run_dir.join("eval/predictions.parquet")).unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, val_images);
    let b = &batches[0];
    let col = |name: &str| {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("column {name}"))
    };
    let paths = col("source_path")
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert!(paths.value(0).starts_with("val/"), "{}", paths.value(0));
    let labels = col("label").as_any().downcast_ref::<UInt32Array>().unwrap();
    let top5 = col("top5_labels")
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    let probs = col("top5_probs")
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    for i in 0..b.num_rows() {
        assert!(labels.value(i) < 4);
        assert_eq!(top5.value(i).len(), 4, "four classes, all ranked");
        let p = probs.value(i);
        let p = p
            .as_any()
            .downcast_ref::<arrow_array::Float32Array>()
            .unwrap();
        let sum: f32 = p.values().iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "probabilities of all 4 classes sum to 1: {sum}"
        );
        assert!(
            p.values().windows(2).all(|w| w[0] >= w[1]),
            "sorted, most probable first"
        );
    }

    for png in [
        "per_class.png",
        "loss.png",
        "error.png",
        "learning_rate.png",
    ] {
        let image = image::open(run_dir.join("eval").join(png)).unwrap();
        assert!(image.width() > 100 && image.height() > 100, "{png}");
    }
}

#[test]
fn a_pytorch_style_checkpoint_evaluates_to_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline, run_dir) = trained_run(dir.path());
    assert!(evaluate(&data, &run_dir, &[]).status.success());
    let ours = report(&run_dir);

    // What `torch.save_file(model.state_dict())` holds: the weights under PyTorch's names,
    // no momentum, no metadata (not even our checksums).
    let mut file = TensorFile::read(&latest_checkpoint(&run_dir)).unwrap();
    file.tensors
        .retain(|name, _| !name.starts_with("momentum."));
    let foreign = dir.path().join("torch.safetensors");
    write_foreign_checkpoint(&foreign, &file);
    let elsewhere = dir.path().join("elsewhere");
    let out = evaluate(
        &data,
        &elsewhere,
        &["--checkpoint", s(&foreign), "--pipeline", s(&pipeline)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = report(&elsewhere);
    assert_eq!(ours["ten_crop"], theirs["ten_crop"]);
    assert_eq!(ours["center"], theirs["center"]);
    assert_eq!(theirs["epoch"], Value::Null);
}

#[test]
fn broken_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pipeline, run_dir) = trained_run(dir.path());
    let original = TensorFile::read(&latest_checkpoint(&run_dir)).unwrap();
    let args = |path: &Path| {
        let mut out = evaluate(
            &data,
            &run_dir,
            &["--checkpoint", s(path), "--pipeline", s(&pipeline)],
        );
        assert!(!out.status.success());
        String::from_utf8(std::mem::take(&mut out.stderr)).unwrap()
    };

    let mut missing = original.clone();
    missing.tensors.remove("classifier.6.bias");
    let path = dir.path().join("missing.safetensors");
    missing.write(&path).unwrap();
    let err = args(&path);
    assert!(
        err.contains("classifier.6.bias") && err.contains("missing.safetensors"),
        "{err}"
    );

    let mut reshaped = original.clone();
    reshaped.tensors.insert(
        "features.4.weight".into(),
        (vec![8, 4, 3, 3], vec![0.0; 288]),
    );
    let path = dir.path().join("reshaped.safetensors");
    reshaped.write(&path).unwrap();
    let err = args(&path);
    assert!(
        err.contains("features.4.weight") && err.contains("[8, 4, 5, 5]"),
        "{err}"
    );

    let path = dir.path().join("garbage.safetensors");
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    let err = args(&path);
    assert!(err.contains("garbage.safetensors"), "{err}");

    // A run without checkpoints.
    let empty = dir.path().join("empty-run");
    let out = evaluate(&data, &empty, &["--pipeline", s(&pipeline)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no checkpoints"), "{err}");
}
