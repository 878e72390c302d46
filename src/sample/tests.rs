//! The sample generator's tests.
use super::encode::*;
use super::plan::*;
use super::render::*;
use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

fn small_options() -> SampleOptions {
    SampleOptions {
        classes: 3,
        train_per_class: 4,
        val_per_class: 3,
        min_side: 48,
        max_side: 160,
        seed: 7,
        val_layout: ValLayout::Flat,
        edge_cases: true,
    }
}

/// Every file under `root`, keyed by `/`-separated relative path.
fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                files.insert(rel.join("/"), fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

fn generate_tree(opts: &SampleOptions) -> (SampleSummary, BTreeMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sample");
    let summary = generate(&out, opts).unwrap();
    (summary, read_tree(&out))
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap()
}

fn decode(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory(bytes).unwrap()
}

/// (marker, payload) of every JPEG segment before the first scan.
fn jpeg_segments(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "not a JPEG");
    let mut segments = Vec::new();
    let mut at = 2;
    while at + 4 <= bytes.len() && bytes[at] == 0xFF {
        let marker = bytes[at + 1];
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        segments.push((marker, &bytes[at + 4..at + 2 + len]));
        if marker == 0xDA {
            break;
        }
        at += 2 + len;
    }
    segments
}

/// (SOF marker, number of components).
fn frame_info(bytes: &[u8]) -> (u8, u8) {
    jpeg_segments(bytes)
        .into_iter()
        .find(|(m, _)| matches!(m, 0xC0..=0xC2))
        .map(|(m, payload)| (m, payload[5]))
        .expect("no SOF segment")
}

fn edge_path(summary: &SampleSummary, kind: EdgeKind) -> &str {
    &summary
        .edge_cases
        .iter()
        .find(|e| e.kind == kind && e.path.starts_with("train/"))
        .unwrap()
        .path
}

fn job_for<'a>(plan: &'a Plan, path: &str) -> &'a Job {
    plan.jobs.iter().find(|j| j.rel_path == path).unwrap()
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    total as f64 / a.len() as f64
}

fn mean_abs_diff_f64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

/// Per-channel means of `block` x `block` tiles of an 8-bit image with
/// `channels` interleaved channels (partial tiles at the edges are dropped).
/// Averaging cancels the per-pixel noise, on which two lossy encodings
/// disagree most, and keeps what a downscaled training image shows.
fn block_means(pixels: &[u8], width: u32, channels: usize, block: usize) -> Vec<f64> {
    let width = width as usize;
    let height = pixels.len() / channels / width;
    let mut means = Vec::new();
    for by in 0..height / block {
        for bx in 0..width / block {
            for channel in 0..channels {
                let mut sum = 0u32;
                for y in by * block..(by + 1) * block {
                    for x in bx * block..(bx + 1) * block {
                        sum += u32::from(pixels[(y * width + x) * channels + channel]);
                    }
                }
                means.push(f64::from(sum) / (block * block) as f64);
            }
        }
    }
    means
}

#[test]
fn same_options_give_identical_bytes_and_seeds_differ() {
    let opts = small_options();
    let (summary_a, a) = generate_tree(&opts);
    let (summary_b, b) = generate_tree(&opts);
    assert_eq!(a, b);
    assert_eq!(summary_a.bytes, summary_b.bytes);

    // Also independent of the thread count.
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (_, c) = single.install(|| generate_tree(&opts));
    assert_eq!(a, c);

    let (_, other) = generate_tree(&SampleOptions { seed: 8, ..opts });
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        other.keys().collect::<Vec<_>>()
    );
    let differing = a
        .iter()
        .filter(|(path, bytes)| other[*path] != **bytes)
        .count();
    // Everything but the synset mapping and the empty file changes.
    assert!(differing >= a.len() - 2, "only {differing} files differ");
}

#[test]
fn layout_and_counts_match_summary() {
    let opts = small_options();
    let (summary, files) = generate_tree(&opts);
    let wnids = class_wnids(opts.classes);

    assert_eq!(summary.classes, 3);
    assert_eq!(summary.train_files, 3 * 4 + EdgeKind::ALL.len());
    assert_eq!(summary.val_files, 3 * 3 + 1);
    assert_eq!(
        summary.bytes,
        files.values().map(|f| f.len() as u64).sum::<u64>()
    );

    let train: Vec<&String> = files.keys().filter(|p| p.starts_with("train/")).collect();
    let val: Vec<&String> = files.keys().filter(|p| p.starts_with("val/")).collect();
    assert_eq!(train.len(), summary.train_files);
    assert_eq!(val.len(), summary.val_files);
    assert_eq!(files.len(), train.len() + val.len() + 2);

    for path in &train {
        let parts: Vec<&str> = path.split('/').collect();
        assert_eq!(parts.len(), 3, "{path}");
        assert!(wnids.iter().any(|w| w == parts[1]), "{path}");
        let number = parts[2]
            .strip_prefix(&format!("{}_", parts[1]))
            .and_then(|rest| rest.strip_suffix(".JPEG"))
            .unwrap_or_else(|| panic!("bad train name {path}"));
        number.parse::<usize>().unwrap();
        assert!(!number.starts_with('0') || number == "0", "{path}");
    }
    for w in &wnids {
        for n in 0..opts.train_per_class {
            assert!(files.contains_key(&format!("train/{w}/{w}_{n}.JPEG")));
        }
    }
    for number in 1..=summary.val_files {
        assert!(files.contains_key(&format!("val/ILSVRC2012_val_{number:08}.JPEG")));
    }

    let mapping = String::from_utf8(files["LOC_synset_mapping.txt"].clone()).unwrap();
    let lines: Vec<&str> = mapping.lines().collect();
    assert_eq!(lines.len(), 3);
    for (line, (w, name)) in lines.iter().zip(wnids.iter().zip(class_names(3))) {
        assert_eq!(*line, format!("{w} {name}"));
    }
    assert!(files.keys().all(|p| !p.contains(".tmp")));
}

#[test]
fn val_csv_labels_existing_files_with_boxes_inside() {
    let opts = small_options();
    let (summary, files) = generate_tree(&opts);
    let wnids = class_wnids(opts.classes);
    let csv = String::from_utf8(files["LOC_val_solution.csv"].clone()).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("ImageId,PredictionString"));

    let mut labels = Vec::new();
    let mut seen = BTreeSet::new();
    for line in lines {
        let (id, prediction) = line.split_once(',').unwrap();
        assert!(seen.insert(id.to_string()), "duplicate row {id}");
        let bytes = &files[&format!("val/{id}.JPEG")];
        let (width, height) = dimensions(bytes);
        let fields: Vec<&str> = prediction.split(' ').collect();
        assert_eq!(fields.len() % 5, 0, "{line}");
        for entry in fields.chunks(5) {
            assert!(wnids.iter().any(|w| w == entry[0]), "{line}");
            assert_eq!(entry[0], fields[0], "mixed labels in {line}");
            let b: Vec<u32> = entry[1..].iter().map(|v| v.parse().unwrap()).collect();
            assert!(b[0] <= b[2] && b[2] < width, "{line} in {width}x{height}");
            assert!(b[1] <= b[3] && b[3] < height, "{line} in {width}x{height}");
        }
        labels.push(fields[0].to_string());
    }
    assert_eq!(seen.len(), summary.val_files);
    // Interleaved like ImageNet, not grouped by class.
    let mut sorted = labels.clone();
    sorted.sort();
    assert_ne!(labels, sorted);
}

#[test]
fn folder_layout_puts_val_images_under_their_wnid() {
    let opts = SampleOptions {
        val_layout: ValLayout::Folders,
        edge_cases: false,
        ..small_options()
    };
    let (summary, files) = generate_tree(&opts);
    assert_eq!(summary.val_files, 9);
    assert!(summary.edge_cases.is_empty());
    assert!(!files.contains_key("LOC_val_solution.csv"));
    let val: Vec<&String> = files.keys().filter(|p| p.starts_with("val/")).collect();
    assert_eq!(val.len(), 9);
    for w in class_wnids(3) {
        let in_class = val
            .iter()
            .filter(|p| p.starts_with(&format!("val/{w}/ILSVRC2012_val_")))
            .count();
        assert_eq!(in_class, 3);
    }
}

#[test]
fn edge_cases_have_their_promised_properties() {
    let opts = small_options();
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), &opts).unwrap();
    let files = read_tree(dir.path());
    let plan = plan_jobs(&opts);
    assert_eq!(summary.edge_cases.len(), EdgeKind::ALL.len() + 1);

    for edge in &summary.edge_cases {
        let bytes = &files[&edge.path];
        assert!(edge.path.ends_with(".JPEG"));
        match edge.kind {
            EdgeKind::Grayscale => {
                assert_eq!(frame_info(bytes), (0xC0, 1));
                assert_eq!(decode(bytes).color(), image::ColorType::L8);
            }
            EdgeKind::Cmyk => {
                assert_eq!(frame_info(bytes), (0xC0, 4));
                let adobe = jpeg_segments(bytes)
                    .into_iter()
                    .any(|(m, p)| m == 0xEE && p.starts_with(b"Adobe"));
                assert!(adobe, "no Adobe APP14 marker");
            }
            EdgeKind::Progressive => {
                assert_eq!(frame_info(bytes), (0xC2, 3));
                decode(bytes);
            }
            EdgeKind::PngNamedJpeg => {
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
                assert_eq!(decode(bytes).color(), image::ColorType::Rgb8);
            }
            EdgeKind::Truncated => {
                assert!(!bytes.ends_with(&[0xFF, 0xD9]));
                let (width, height) = dimensions(bytes);
                assert!(width.min(height) >= TRUNCATED_MIN_SIDE);
                // A prefix of 40-60 % of the complete file.
                let job = job_for(&plan, &edge.path);
                let (image, mut rng) = render_job(&opts, job);
                let full = encode(&image.canvas, Encoding::Baseline, &mut rng).unwrap();
                assert!(full.starts_with(bytes));
                let ratio = bytes.len() as f64 / full.len() as f64;
                assert!((0.39..=0.61).contains(&ratio), "kept {ratio}");
            }
            EdgeKind::Empty => assert!(bytes.is_empty()),
        }
        assert_eq!(
            edge.kind.should_be_rejected(),
            matches!(edge.kind, EdgeKind::Truncated | EdgeKind::Empty)
        );
    }

    // Numbered after the regular files, in the first classes.
    let wnids = class_wnids(3);
    assert_eq!(
        edge_path(&summary, EdgeKind::Grayscale),
        format!("train/{0}/{0}_4.JPEG", wnids[0])
    );
    assert_eq!(
        edge_path(&summary, EdgeKind::Empty),
        format!("train/{0}/{0}_5.JPEG", wnids[2])
    );
    let val_edge = summary.edge_cases.last().unwrap();
    assert_eq!(val_edge.path, "val/ILSVRC2012_val_00000010.JPEG");
    assert_eq!(val_edge.kind, EdgeKind::Truncated);
}

#[test]
fn cmyk_decodes_back_to_the_rgb_image() {
    for seed in 0..4 {
        let opts = SampleOptions {
            seed,
            ..small_options()
        };
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(dir.path(), &opts).unwrap();
        let path = edge_path(&summary, EdgeKind::Cmyk);
        let cmyk = decode(&fs::read(dir.path().join(path)).unwrap()).to_rgb8();

        let plan = plan_jobs(&opts);
        let (image, mut rng) = render_job(&opts, job_for(&plan, path));
        let (width, height) = (image.canvas.width, image.canvas.height);
        assert_eq!(cmyk.dimensions(), (width, height));
        let rgb_jpeg = encode(&image.canvas, Encoding::Baseline, &mut rng).unwrap();
        let rgb = decode(&rgb_jpeg).to_rgb8();

        let vs_rendered = mean_abs_diff(cmyk.as_raw(), &image.canvas.pixels);
        assert!(
            vs_rendered < 6.0,
            "seed {seed}: CMYK vs rendered: {vs_rendered}"
        );
        let vs_rgb_jpeg = mean_abs_diff_f64(
            &block_means(cmyk.as_raw(), width, 3, 4),
            &block_means(rgb.as_raw(), width, 3, 4),
        );
        assert!(
            vs_rgb_jpeg < 6.0,
            "seed {seed}: CMYK vs RGB JPEG: {vs_rgb_jpeg}"
        );
        // With the wrong inversion convention the image would come back negated.
        let inverted: Vec<u8> = image.canvas.pixels.iter().map(|p| 255 - p).collect();
        assert!(mean_abs_diff(cmyk.as_raw(), &inverted) > 30.0);
    }
}

#[test]
fn valid_edge_cases_are_images_of_their_class() {
    let opts = small_options();
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), &opts).unwrap();
    let plan = plan_jobs(&opts);
    for edge in summary
        .edge_cases
        .iter()
        .filter(|e| !e.kind.should_be_rejected())
    {
        let job = job_for(&plan, &edge.path);
        let folder = edge.path.split('/').nth(1).unwrap();
        assert_eq!(folder, wnid(job.class));
        let decoded = decode(&fs::read(dir.path().join(&edge.path)).unwrap());
        let (image, _) = render_job(&opts, job);
        let (expected, actual, channels) = match edge.kind {
            EdgeKind::Grayscale => (to_luma(&image.canvas), decoded.to_luma8().into_raw(), 1),
            _ => (image.canvas.pixels.clone(), decoded.to_rgb8().into_raw(), 3),
        };
        let width = image.canvas.width;
        let diff = mean_abs_diff_f64(
            &block_means(&actual, width, channels, 4),
            &block_means(&expected, width, channels, 4),
        );
        assert!(diff < 3.0, "{} differs by {diff}", edge.path);
    }
}

#[test]
fn image_sizes_respect_bounds_and_reach_the_extremes() {
    let opts = small_options();
    let (summary, files) = generate_tree(&opts);
    let edges: BTreeSet<&str> = summary.edge_cases.iter().map(|e| e.path.as_str()).collect();
    let mut widest = 0.0f64;
    let mut tallest = 0.0f64;
    let mut shortest = u32::MAX;
    let mut longest = 0;
    for (path, bytes) in &files {
        if !path.ends_with(".JPEG") || edges.contains(path.as_str()) {
            continue;
        }
        let (width, height) = dimensions(bytes);
        let (short, long) = (width.min(height), width.max(height));
        assert!(
            (opts.min_side..=opts.max_side).contains(&short),
            "{path}: {width}x{height}"
        );
        assert!(long <= 3 * short, "{path}: {width}x{height}");
        widest = widest.max(f64::from(width) / f64::from(height));
        tallest = tallest.max(f64::from(height) / f64::from(width));
        shortest = shortest.min(short);
        longest = longest.max(short);
    }
    assert!(widest > 2.9 && tallest > 2.9, "{widest} {tallest}");
    assert_eq!((shortest, longest), (opts.min_side, opts.max_side));
}

#[test]
fn refuses_bad_options_and_non_empty_directories() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        SampleOptions {
            classes: 0,
            ..small_options()
        },
        SampleOptions {
            classes: MAX_CLASSES + 1,
            ..small_options()
        },
        SampleOptions {
            min_side: 200,
            max_side: 100,
            ..small_options()
        },
        SampleOptions {
            min_side: 4,
            ..small_options()
        },
        SampleOptions {
            max_side: 70_000,
            ..small_options()
        },
    ];
    for opts in bad {
        let err = generate(&dir.path().join("out"), &opts).unwrap_err();
        assert!(
            matches!(err, SampleError::InvalidOptions(_)),
            "{opts:?}: {err}"
        );
    }
    assert!(!dir.path().join("out").exists());

    fs::write(dir.path().join("stray.txt"), b"x").unwrap();
    let err = generate(dir.path(), &small_options()).unwrap_err();
    assert!(matches!(err, SampleError::InvalidOptions(_)), "{err}");
    assert!(err.to_string().contains("empty"));
}

#[test]
fn no_val_edge_case_without_val_images() {
    let opts = SampleOptions {
        classes: 2,
        train_per_class: 1,
        val_per_class: 0,
        ..small_options()
    };
    let (summary, files) = generate_tree(&opts);
    assert_eq!(summary.val_files, 0);
    assert_eq!(summary.train_files, 2 + EdgeKind::ALL.len());
    assert!(summary
        .edge_cases
        .iter()
        .all(|e| e.path.starts_with("train/")));
    let csv = String::from_utf8(files["LOC_val_solution.csv"].clone()).unwrap();
    assert_eq!(csv, "ImageId,PredictionString\n");
}

#[test]
fn objects_stay_inside_the_central_square_away_from_its_edges() {
    // 1:3, 3:1, square and in-between, from the smallest allowed side up.
    let sizes = [
        (16, 48),
        (48, 16),
        (16, 16),
        (64, 192),
        (192, 64),
        (64, 64),
        (101, 303),
        (303, 101),
        (100, 150),
        (150, 100),
        (160, 480),
        (480, 160),
    ];
    for (k, &(width, height)) in sizes.iter().enumerate() {
        let short = width.min(height) as f32;
        // The central square in pixel-edge coordinates, and its inner 7/8.
        let (left, top) = ((width as f32 - short) / 2.0, (height as f32 - short) / 2.0);
        let margin = short / 16.0;
        let (mut lo_centre, mut hi_centre) = ([f32::MAX; 2], [f32::MIN; 2]);
        let mut worst_visible = 1.0f32;
        for class in 0..MAX_CLASSES {
            for draw in 0..4 {
                let mut rng = stream_rng(draw, 1000, class as u64, k as u64);
                let image = render_class_image(&mut rng, class, width, height);
                assert_eq!(image.boxes.len(), class_spec(class).copies());
                for b in &image.boxes {
                    let at = format!("class {class} draw {draw} {width}x{height}: {b:?}");
                    let span = [(b.x0, b.x1, left), (b.y0, b.y1, top)];
                    for (axis, (first, last, start)) in span.into_iter().enumerate() {
                        // Pixels first..=last cover [first, last + 1).
                        let (from, to) = (first as f32, (last + 1) as f32);
                        assert!(from >= start + margin - 0.5, "{at}");
                        assert!(to <= start + short - margin, "{at}");
                        // paint's window: a pixel beyond the radius, plus rounding.
                        assert!(to - from <= MAX_DIAMETER_FRACTION * short + 4.0, "{at}");
                        // Share of the object inside 7/8 crops at both extremes.
                        for offset in [0.0, short / 8.0] {
                            let crop = (start + offset, start + offset + short * 7.0 / 8.0);
                            let seen = (to.min(crop.1) - from.max(crop.0)).max(0.0);
                            worst_visible = worst_visible.min(seen / (to - from));
                        }
                        let centre = (from + to) / 2.0;
                        lo_centre[axis] = lo_centre[axis].min(centre);
                        hi_centre[axis] = hi_centre[axis].max(centre);
                    }
                }
            }
        }
        assert!(worst_visible >= 0.6, "{width}x{height}: {worst_visible}");
        // Positions still vary over much of the square (less in tiny
        // images, where the paint slack takes a larger share).
        for axis in 0..2 {
            let spread = hi_centre[axis] - lo_centre[axis];
            assert!(
                spread >= 0.5 * short - 4.0,
                "{width}x{height} axis {axis}: centres spread {spread}"
            );
        }
    }
}

#[test]
fn wnids_and_names_are_unique_and_sorted() {
    let wnids = class_wnids(MAX_CLASSES);
    let mut sorted = wnids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(wnids, sorted);
    assert!(wnids
        .iter()
        .all(|w| w.len() == 9 && w.starts_with('n') && w[1..].bytes().all(|b| b.is_ascii_digit())));
    let names: BTreeSet<String> = class_names(MAX_CLASSES).into_iter().collect();
    assert_eq!(names.len(), MAX_CLASSES);
    assert_eq!(EdgeKind::ALL.map(EdgeKind::name).len(), 6);
}
