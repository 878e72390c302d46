//! Runs `alexnet bench-loader` and `alexnet contact-sheet` on preprocessed sample data.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn sample_shards(dir: &Path) -> PathBuf {
    let src = small_sample(dir, &[]);
    let out = dir.join("shards");
    preprocess_sample(&src, &out, "2");
    out
}

fn bench(data: &Path, extra: &[&str]) -> serde_json::Value {
    let pipeline = repo_file("pipelines/sample.toml");
    let mut args = vec![
        "bench-loader",
        "--data",
        s(data),
        "--pipeline",
        s(&pipeline),
        "--batches",
        "6",
        "--batch-size",
        "16",
    ];
    args.extend_from_slice(extra);
    let stdout = run_ok(&args);
    let last = stdout
        .lines()
        .last()
        .expect("bench-loader prints a JSON line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

#[test]
fn bench_loader_reports_rate_and_a_checksum_independent_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_shards(dir.path());
    for output in ["u8", "f32"] {
        let one = bench(&data, &["--threads", "1", "--output", output]);
        let two = bench(
            &data,
            &[
                "--threads",
                "2",
                "--output",
                output,
                "--baseline",
                "--verify",
            ],
        );
        assert_eq!(one["checksum"], two["checksum"], "{output}");
        assert_eq!(one["images"], 6 * 16);
        assert!(one["images_per_sec"].as_f64().unwrap() > 0.0);
        assert!(two["bare_loop_images_per_sec"].as_f64().unwrap() > 0.0);
        assert_eq!(two["crop_size"], 112);
    }
    let other_seed = bench(&data, &["--seed", "5"]);
    assert_ne!(other_seed["checksum"], bench(&data, &[])["checksum"]);
}

#[test]
fn crop_larger_than_the_stored_images_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_shards(dir.path());
    // The paper's pipeline crops 224 from 256; the sample shards store 128.
    let err = run_err(&["bench-loader", "--data", s(&data), "--batches", "1"]);
    assert!(err.contains("crop size 224"), "{err}");
    let err = run_err(&[
        "bench-loader",
        "--data",
        s(&dir.path().join("missing")),
        "--batches",
        "1",
    ]);
    assert!(err.contains("manifest.json"), "{err}");
}

#[test]
fn contact_sheet_is_a_png_grid() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_shards(dir.path());
    let png = dir.path().join("sheet.png");
    run_ok(&[
        "contact-sheet",
        "--data",
        s(&data),
        "--out",
        s(&png),
        "--count",
        "9",
        "--pipeline",
        s(&repo_file("pipelines/sample.toml")),
    ]);
    let sheet = image::open(&png).unwrap().into_rgb8();
    // 3 × 3 cells of 112-pixel crops, 4-pixel gaps, a label line under each crop.
    assert_eq!(sheet.width(), 4 + 3 * (112 + 4));
    assert!(sheet.height() > 4 + 3 * (112 + 4));
    // Each cell's label is drawn in light text under its crop, inside the cell's width.
    let cell_h = (sheet.height() - 4) / 3;
    for row in 0..3 {
        for column in 0..3 {
            let (x0, y0) = (4 + column * 116, 4 + row * cell_h);
            let lit = (y0 + 112..y0 + cell_h - 4)
                .flat_map(|y| (x0..x0 + 112).map(move |x| (x, y)))
                .filter(|&(x, y)| sheet.get_pixel(x, y).0.iter().all(|&c| c > 150))
                .count();
            assert!(lit > 20, "cell ({row}, {column}): {lit} label pixels");
            // Nothing of the label spills into the gap to the next cell.
            for y in y0 + 112..y0 + cell_h - 4 {
                for x in x0 + 112..x0 + 116 {
                    assert_eq!(sheet.get_pixel(x, y).0, [24, 24, 24], "({x}, {y})");
                }
            }
        }
    }
}
