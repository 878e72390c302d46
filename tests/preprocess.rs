//! Runs `alexnet sample`, `alexnet preprocess` and `alexnet export` as a user would.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use alexnet::files::read_npy_f32;
use alexnet::shards::{read_rejects, Manifest, Shard, Split, SplitReader, REJECTS_FILE};
use common::*;

fn preprocess(src: &Path, out: &Path, jobs: &str) -> String {
    preprocess_sample(src, out, jobs)
}

#[test]
fn sample_data_is_preprocessed_with_rejects_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = small_sample(dir.path(), &[]);
    let out = dir.path().join("shards");
    let stdout = preprocess(&src, &out, "2");

    let manifest = Manifest::read(&out).unwrap();
    assert_eq!(manifest.image_size, 128);
    assert_eq!(manifest.classes.len(), 4);
    let train = manifest.split(Split::Train).unwrap();
    let val = manifest.split(Split::Val).unwrap();
    // 4 × 10 regular images + 6 edge cases, of which the truncated and the empty file fail.
    assert_eq!((train.inputs, train.images, train.rejected), (46, 44, 2));
    assert_eq!((val.inputs, val.images, val.rejected), (13, 12, 1));
    assert_eq!(manifest.rejected, 3);
    assert_eq!(train.classes, 4);
    assert_eq!(train.shard_records.iter().sum::<u64>(), train.images);

    // Every reject is listed with its reason, and the summary counts them.
    let rejects = read_rejects(&out.join(REJECTS_FILE)).unwrap();
    let mut reasons: Vec<_> = rejects
        .iter()
        .map(|(split, r)| (split.name(), r.reason.as_str()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("train", "empty"),
            ("train", "truncated"),
            ("val", "truncated")
        ]
    );
    assert!(
        stdout.contains("train rejects: empty 1, truncated 1"),
        "{stdout}"
    );

    // The unusual but valid files were stored; the PNG was recognised by content.
    let reader = SplitReader::open(&out, Split::Train).unwrap();
    let rows = reader.read_index().unwrap();
    assert_eq!(rows.len(), 44);
    let formats: Vec<_> = rows.iter().map(|r| r.source_format.as_str()).collect();
    assert_eq!(formats.iter().filter(|f| **f == "png").count(), 1);
    assert!(formats.iter().all(|f| *f == "png" || *f == "jpg"));
    // Train order: by class, then file name; labels agree with wnids.
    for pair in rows.windows(2) {
        assert!(pair[0].label <= pair[1].label);
        if pair[0].label == pair[1].label {
            let name = |p: &str| p.rsplit('/').next().unwrap().to_string();
            assert!(name(&pair[0].source_path) < name(&pair[1].source_path));
        }
    }
    for row in &rows {
        assert_eq!(manifest.classes[row.label as usize].wnid, row.wnid);
        assert!(row.source_path.starts_with(&format!("train/{}/", row.wnid)));
    }
    // Records match their checksums.
    let mut i = 0;
    for shard in reader.shards() {
        for local in 0..shard.len() {
            shard.verify(local, rows[i].checksum).unwrap();
            i += 1;
        }
    }

    // The mean image is the mean of the stored training records (and of nothing else).
    let (shape, mean) = read_npy_f32(&out.join("mean.npy")).unwrap();
    assert_eq!(shape, [128, 128, 3]);
    let mut sums = vec![0u64; 128 * 128 * 3];
    for i in 0..reader.len() {
        for (sum, &v) in sums.iter_mut().zip(reader.record(i)) {
            *sum += v as u64;
        }
    }
    let expected: Vec<f32> = sums
        .iter()
        .map(|&s| (s as f64 / reader.len() as f64) as f32)
        .collect();
    assert!(
        mean == expected,
        "mean.npy is not the mean of the training records"
    );
    let avg: f64 = mean.iter().map(|&v| v as f64).sum::<f64>() / mean.len() as f64;
    let channel_avg: f64 = manifest.mean.channel_mean.iter().sum::<f64>() / 3.0;
    assert!((avg - channel_avg).abs() < 1e-3, "{avg} vs {channel_avg}");
    assert!(manifest.mean.channel_std.iter().all(|&s| s > 5.0));
}

#[test]
fn output_is_identical_whatever_the_number_of_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let src = small_sample(dir.path(), &[]);
    let one = dir.path().join("one");
    let three = dir.path().join("three");
    preprocess(&src, &one, "1");
    preprocess(&src, &three, "3");
    assert_same_tree(&one, &three);
}

#[test]
fn val_folders_and_flat_val_with_csv_give_the_same_labels() {
    let dir = tempfile::tempdir().unwrap();
    let flat = small_sample(&dir.path().join("flat"), &[]);
    let folders = small_sample(&dir.path().join("folders"), &["--val-folders"]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    preprocess(&flat, &a, "2");
    preprocess(&folders, &b, "2");
    let rows = |out: &Path| {
        SplitReader::open(out, Split::Val)
            .unwrap()
            .read_index()
            .unwrap()
            .into_iter()
            .map(|r| {
                let name = r.source_path.rsplit('/').next().unwrap().to_string();
                (name, r.label, r.checksum)
            })
            .collect::<Vec<_>>()
    };
    let (ra, rb) = (rows(&a), rows(&b));
    assert_eq!(ra.len(), 12);
    assert_eq!(ra, rb);
    // Ordered by file name.
    assert!(ra.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn rerunning_a_complete_directory_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = small_sample(dir.path(), &[]);
    let out = dir.path().join("shards");
    preprocess(&src, &out, "2");
    let before = tree(&out);
    let stdout = preprocess(&src, &out, "1");
    assert!(stdout.contains("already complete"), "{stdout}");
    assert!(before == tree(&out));
}

#[test]
fn different_settings_or_a_foreign_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = small_sample(dir.path(), &[]);
    let out = dir.path().join("shards");
    preprocess(&src, &out, "2");
    // The paper's pipeline stores 256×256: not the same dataset.
    let err = run_err(&[
        "preprocess",
        "--input",
        s(&src),
        "--output",
        s(&out),
        "--jobs",
        "2",
    ]);
    assert!(err.contains("different settings"), "{err}");
    assert!(err.contains("image_size"), "{err}");

    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let err = run_err(&["preprocess", "--input", s(&src), "--output", s(&foreign)]);
    assert!(err.contains("not a dataset this tool made"), "{err}");
}

#[test]
fn input_problems_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = small_sample(dir.path(), &[]);
    std::fs::remove_file(src.join("LOC_val_solution.csv")).unwrap();
    let out = dir.path().join("out");
    let err = run_err(&["preprocess", "--input", s(&src), "--output", s(&out)]);
    assert!(err.contains("LOC_val_solution.csv"), "{err}");

    let err = run_err(&[
        "preprocess",
        "--input",
        s(&dir.path().join("nowhere")),
        "--output",
        s(&out),
    ]);
    assert!(err.contains("train"), "{err}");
}

#[test]
fn export_writes_the_stored_pixels_as_png() {
    let dir = tempfile::tempdir().unwrap();
    let src = small_sample(dir.path(), &[]);
    let out = dir.path().join("shards");
    preprocess(&src, &out, "2");
    let export = dir.path().join("export");
    run_ok(&[
        "export",
        "--data",
        s(&out),
        "--split",
        "val",
        "--out",
        s(&export),
    ]);
    let csv = std::fs::read_to_string(export.join("val/index.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "index,source_path,label");
    assert_eq!(lines.len(), 13);
    let reader = SplitReader::open(&out, Split::Val).unwrap();
    let rows = reader.read_index().unwrap();
    for (i, line) in lines[1..].iter().enumerate() {
        assert_eq!(
            *line,
            format!("{i},{},{}", rows[i].source_path, rows[i].label)
        );
        let png = image::open(export.join(format!("val/{i}.png")))
            .unwrap()
            .into_rgb8();
        assert_eq!(png.dimensions(), (128, 128));
        assert_eq!(png.as_raw().as_slice(), reader.record(i));
    }
}

#[test]
fn damaged_shard_is_reported_by_name_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let src = small_sample(dir.path(), &[]);
    let out = dir.path().join("shards");
    preprocess(&src, &out, "2");
    let shard = out.join("train/shard-00000.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let err = run_err(&[
        "export",
        "--data",
        s(&out),
        "--split",
        "train",
        "--out",
        s(&dir.path().join("x")),
    ]);
    assert!(err.contains("shard-00000.bin"), "{err}");
    assert!(err.contains("alexnet preprocess"), "{err}");
}

/// Kills a run with SIGKILL at several points and checks that no incomplete shard ever looks
/// complete, and that re-running finishes byte-identical to an uninterrupted run.
#[test]
fn killed_run_resumes_to_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    // Larger photos and more of them, so that a run lasts long enough to be interrupted.
    let src = dir.path().join("src");
    run_ok(&[
        "sample",
        "--out",
        s(&src),
        "--classes",
        "4",
        "--train-per-class",
        "60",
        "--val-per-class",
        "8",
        "--min-side",
        "300",
        "--max-side",
        "900",
    ]);
    let reference = dir.path().join("reference");
    preprocess(&src, &reference, "2");

    let mut interrupted = 0;
    // Kill after the first shard receipt appears, then at growing delays.
    for (attempt, extra_delay_ms) in [0u64, 150, 400, 900].into_iter().enumerate() {
        let out = dir.path().join(format!("killed-{attempt}"));
        let mut child = bin()
            .args(preprocess_args(&src, &out, "1"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !out.join("train/shard-00000.done.json").exists()
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(extra_delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if !out.join("manifest.json").exists() {
            interrupted += 1;
        }
        // Whatever carries a final name is complete and valid.
        for split in ["train", "val"] {
            let Ok(entries) = std::fs::read_dir(out.join(split)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "bin") {
                    Shard::open(&path).unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
        let stdout = preprocess(&src, &out, "2");
        if attempt == 0 {
            assert!(stdout.contains("reused"), "{stdout}");
        }
        assert_same_tree(&reference, &out);
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} runs were interrupted before finishing"
    );
}
