//! The loader's tests: on tiny datasets written here, every crop says which image it came from.
use super::*;
use crate::files::{write_json, write_npy_f32};
use crate::shards::{
    write_index, IndexRow, MeanStats, ShardPaths, ShardWriter, SplitContent, FORMAT_VERSION,
};

/// A dataset of `n` 8×8 training images over three shards; image `i` is filled with
/// values derived from `i`, so every crop says which image it came from.
fn tiny_dataset(dir: &Path, n: usize) -> Arc<LoaderData> {
    const SIZE: u32 = 8;
    std::fs::create_dir_all(dir.join("train")).unwrap();
    let per_shard = n.div_ceil(3);
    let mut shards = 0;
    for (s, chunk) in (0..n).collect::<Vec<_>>().chunks(per_shard).enumerate() {
        let paths = ShardPaths::new(dir, Split::Train, s);
        let mut writer = ShardWriter::create(&paths.records, s as u32, SIZE).unwrap();
        let mut rows = Vec::new();
        for &i in chunk {
            let record: Vec<u8> = (0..SIZE * SIZE * 3)
                .map(|p| (i * 7 + p as usize) as u8)
                .collect();
            writer.push(&record).unwrap();
            rows.push(IndexRow {
                label: (i % 4) as u32,
                wnid: format!("n{:08}", i % 4),
                source_path: format!("train/{i}.JPEG"),
                orig_width: SIZE,
                orig_height: SIZE,
                source_format: "jpg".into(),
                checksum: shards::record_checksum(&record),
            });
        }
        writer.finish().unwrap();
        write_index(&paths.index, &rows).unwrap();
        shards += 1;
    }
    let mean: Vec<f32> = (0..SIZE * SIZE * 3).map(|p| (p % 50) as f32).collect();
    let checksum = write_npy_f32(&dir.join("mean.npy"), &[8, 8, 3], &mean).unwrap();
    let content = SplitContent::read(dir, Split::Train, shards).unwrap();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        image_size: SIZE,
        channels: 3,
        layout: "u8 HWC RGB".into(),
        classes: (0..4)
            .map(|c| ClassInfo {
                wnid: format!("n{c:08}"),
                name: format!("class {c}"),
            })
            .collect(),
        splits: [(Split::Train, content.manifest(n as u64, 0))].into(),
        rejected: 0,
        mean: MeanStats {
            mean_image: "mean.npy".into(),
            checksum,
            channel_mean: [100.0, 110.0, 120.0],
            channel_std: [50.0, 60.0, 70.0],
        },
    };
    write_json(&dir.join(shards::MANIFEST_FILE), &manifest).unwrap();
    Arc::new(LoaderData::open(dir, Split::Train).unwrap())
}

fn config(batch_size: usize, threads: usize) -> LoaderConfig {
    LoaderConfig {
        crop_size: 5,
        batch_size,
        threads,
        prefetch: 2,
        seed: 11,
        flip: true,
        normalize: Normalize::MeanImage,
        lighting_std: 0.1,
        drop_last: false,
    }
}

fn collect(data: &Arc<LoaderData>, options: LoaderOptions, batches: usize) -> Vec<Batch> {
    Loader::start(data.clone(), options)
        .unwrap()
        .take(batches)
        .map(Result::unwrap)
        .collect()
}

#[test]
fn same_stream_for_one_and_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 50);
    for output in [Output::U8, Output::F32] {
        let one = collect(&data, LoaderOptions::train(&config(8, 1), output), 20);
        let many = collect(&data, LoaderOptions::train(&config(8, 3), output), 20);
        assert_eq!(one, many);
    }
}

#[test]
fn every_image_once_per_epoch_in_a_new_order_each_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 50);
    let batches = collect(&data, LoaderOptions::train(&config(8, 2), Output::U8), 14);
    // 50 images in batches of 8: 7 batches per epoch, the last one of 2 images.
    let epoch0: Vec<u32> = batches[..7]
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    let epoch1: Vec<u32> = batches[7..]
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    assert_eq!(batches[6].len(), 2);
    assert!(batches[..7].iter().all(|b| b.epoch == 0));
    assert!(batches[7..].iter().all(|b| b.epoch == 1));
    for order in [&epoch0, &epoch1] {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<u32>>());
    }
    assert_ne!(epoch0, epoch1);
    // Labels travel with their images.
    for b in &batches {
        for (i, l) in b.indices.iter().zip(&b.labels) {
            assert_eq!(*l, i % 4);
        }
    }
}

#[test]
fn a_batch_larger_than_the_epoch_is_refused_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 10);
    let mut cfg = config(16, 1);
    cfg.drop_last = true;
    let err = Loader::start(data.clone(), LoaderOptions::train(&cfg, Output::U8))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("fewer than one batch of 16"),
        "{err}"
    );
    // Without drop_last the short batch is the epoch.
    cfg.drop_last = false;
    let batches = collect(&data, LoaderOptions::train(&cfg, Output::U8), 2);
    assert_eq!(batches[0].len(), 10);
    assert_eq!(batches[1].epoch, 1);
}

#[test]
fn drop_last_skips_the_short_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 50);
    let mut cfg = config(8, 2);
    cfg.drop_last = true;
    let batches = collect(&data, LoaderOptions::train(&cfg, Output::U8), 12);
    assert!(batches.iter().all(|b| b.len() == 8));
    assert_eq!(batches[6].epoch, 1);
}

#[test]
fn resuming_mid_epoch_continues_the_identical_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 50);
    let options = LoaderOptions::train(&config(8, 2), Output::F32);
    let full = collect(&data, options.clone(), 12);
    for cut in [1, 4, 7, 9] {
        let resumed = LoaderOptions {
            start: full[cut - 1].next_position(),
            ..options.clone()
        };
        // A checkpoint at the end of an epoch resumes at its (empty) tail, then moves on.
        let rest = collect(&data, resumed, 12 - cut);
        assert_eq!(rest, full[cut..], "resumed after batch {cut}");
    }
}

#[test]
fn u8_batches_hold_the_crops_and_f32_batches_their_normalised_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 20);
    let cfg = config(4, 2);
    let u8_batch = collect(&data, LoaderOptions::train(&cfg, Output::U8), 1).remove(0);
    let f32_batch = collect(&data, LoaderOptions::train(&cfg, Output::F32), 1).remove(0);
    assert_eq!(u8_batch.indices, f32_batch.indices);
    assert_eq!(u8_batch.lighting, f32_batch.lighting);
    let (Pixels::U8(raw), Pixels::F32(norm)) = (&u8_batch.pixels, &f32_batch.pixels) else {
        panic!("pixel types")
    };
    assert_eq!(raw.len(), 4 * 5 * 5 * 3);
    // Each u8 crop is a crop of its image: redo the draw and compare.
    for (k, &i) in u8_batch.indices.iter().enumerate() {
        let mut rng = sampler::sample_rng(cfg.seed, 0, i);
        let a = Augmentation::draw(&mut rng, 8, 5, true, cfg.lighting_std);
        let mut expected = vec![0u8; 75];
        augment::crop_u8(data.reader.record(i as usize), 8, 5, a.crop, &mut expected);
        assert_eq!(&raw[k * 75..(k + 1) * 75], &expected[..]);
        let mut expected_f32 = vec![0f32; 75];
        augment::crop_f32(
            data.reader.record(i as usize),
            8,
            5,
            a.crop,
            a.lighting,
            &Normalizer::MeanImage(&data.mean_image),
            &mut expected_f32,
        );
        assert_eq!(&norm[k * 75..(k + 1) * 75], &expected_f32[..]);
        assert_eq!(u8_batch.lighting[k], a.lighting);
    }
}

#[test]
fn evaluation_reads_in_order_with_one_or_ten_views() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 10);
    let cfg = config(4, 2);
    let center = collect(
        &data,
        LoaderOptions::eval(&cfg, Output::U8, Mode::Center),
        10,
    );
    assert_eq!(
        center.len(),
        3,
        "10 images in batches of 4, the last one short"
    );
    let order: Vec<u32> = center.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(order, (0..10).collect::<Vec<u32>>());
    assert!(center
        .iter()
        .all(|b| b.lighting.iter().all(|l| *l == [0.0; 3])));

    let ten = collect(
        &data,
        LoaderOptions::eval(&cfg, Output::U8, Mode::TenCrop),
        10,
    );
    let Pixels::U8(px) = &ten[0].pixels else {
        panic!()
    };
    assert_eq!(ten[0].views, 10);
    assert_eq!(px.len(), 4 * 10 * 75);
    // Image 1, view 7 (bottom-left, mirrored) equals that crop of record 1.
    let at = augment::ten_crops(8, 5)[7];
    let mut expected = vec![0u8; 75];
    augment::crop_u8(data.reader.record(1), 8, 5, at, &mut expected);
    let start = (10 + 7) * 75;
    assert_eq!(&px[start..start + 75], &expected[..]);
    // Centre batches match view 4 of the ten crops.
    let Pixels::U8(cpx) = &center[0].pixels else {
        panic!()
    };
    assert_eq!(&cpx[75..150], &px[(10 + 4) * 75..(10 + 5) * 75]);
}

#[test]
fn dropping_a_loader_mid_stream_returns_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 50);
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let mut loader = Loader::start(
            data.clone(),
            LoaderOptions::train(&config(8, 2), Output::U8),
        )
        .unwrap();
        let _ = loader.next();
        drop(loader); // the producer is blocked on a full queue here
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn ranks_take_their_slice_of_every_batch() {
    // 50 images in batches of 8: six whole batches and one of 2, cut among 3 ranks (the last
    // leaves rank 0 without an image).
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 50);
    let one_process = LoaderOptions {
        epochs: Some(1),
        ..LoaderOptions::train(&config(8, 1), Output::U8)
    };
    let whole = collect(&data, one_process.clone(), 100);
    assert_eq!(whole.len(), 7);
    let ranks: Vec<Vec<Batch>> = (0..3)
        .map(|rank| {
            let options = LoaderOptions {
                rank,
                world_size: 3,
                ..one_process.clone()
            };
            collect(&data, options, 100)
        })
        .collect();
    for (i, batch) in whole.iter().enumerate() {
        let slices: Vec<&Batch> = ranks.iter().map(|r| &r[i]).collect();
        let indices: Vec<u32> = slices.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(indices, batch.indices, "batch {i}");
        let pixels: Vec<u8> = slices
            .iter()
            .flat_map(|b| b.pixels.as_bytes().to_vec())
            .collect();
        assert_eq!(pixels, batch.pixels.as_bytes(), "batch {i}");
        let mut first = 0;
        for s in &slices {
            assert_eq!((s.first_image, s.whole_batch), (first, batch.len()));
            assert_eq!(s.next_position(), batch.next_position());
            first += s.len();
        }
    }
    assert!(ranks[0][6].is_empty() && ranks[2][6].len() == 1);
}

#[test]
fn stream_checksum_sees_every_byte_label_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 20);
    let batches = collect(&data, LoaderOptions::train(&config(4, 1), Output::U8), 3);
    let digest = |bs: &[Batch]| {
        let mut c = StreamChecksum::default();
        bs.iter().for_each(|b| c.add(b));
        c.hex()
    };
    let base = digest(&batches);
    assert_eq!(base, digest(&batches));
    // Digests taken by the loader's workers give the same checksum.
    let options = LoaderOptions {
        digests: true,
        ..LoaderOptions::train(&config(4, 2), Output::U8)
    };
    let with_digests = collect(&data, options, 3);
    assert!(with_digests.iter().all(|b| b.digests.len() == b.len()));
    assert_eq!(base, digest(&with_digests));
    let mut changed = batches.clone();
    if let Pixels::U8(px) = &mut changed[1].pixels {
        px[123] ^= 1;
    }
    assert_ne!(base, digest(&changed));
    let mut relabelled = batches.clone();
    relabelled[2].labels[0] += 1;
    assert_ne!(base, digest(&relabelled));
    let mut swapped = batches.clone();
    swapped.swap(0, 1);
    assert_ne!(base, digest(&swapped));
}

#[test]
fn checksums_verify_and_catch_damage() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 9);
    data.verify_checksums().unwrap();
    drop(data);
    flip_last_byte(&ShardPaths::new(dir.path(), Split::Train, 1).records);
    let data = LoaderData::open(dir.path(), Split::Train).unwrap();
    let err = data.verify_checksums().unwrap_err().to_string();
    assert!(err.contains("shard-00001.bin"), "{err}");
    assert!(err.contains("record 2"), "{err}");
    assert!(
        err.contains("train/5.JPEG"),
        "names the source image: {err}"
    );
    assert!(err.contains("--verify"), "says how to repair it: {err}");
}

fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_record_ends_the_stream_with_an_error_not_silently() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), 9);
    flip_last_byte(&ShardPaths::new(dir.path(), Split::Train, 2).records);
    let data = Arc::new(LoaderData::open(dir.path(), Split::Train).unwrap());
    // Evaluation order reads every record; the damaged one is the last.
    let options = LoaderOptions::eval(&config(2, 2), Output::U8, Mode::Center);
    let results: Vec<_> = Loader::start(data, options).unwrap().collect();
    let (ok, failed): (Vec<_>, Vec<_>) = results.iter().partition(|r| r.is_ok());
    assert_eq!(failed.len(), 1, "one error, then the stream ends");
    assert!(
        results.last().unwrap().is_err(),
        "the error is the last item"
    );
    assert_eq!(ok.len(), 4, "the batches before the damaged record arrive");
    let err = failed[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("shard-00002.bin") && err.contains("train/8.JPEG"),
        "{err}"
    );
}

#[test]
fn records_are_checked_once_per_process() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), 9);
    let data = LoaderData::open(dir.path(), Split::Train).unwrap();
    data.verify_checksums().unwrap();
    // Damage after the first check is not looked for again (the check is a first-read one).
    flip_last_byte(&ShardPaths::new(dir.path(), Split::Train, 2).records);
    data.checked_record(8).unwrap();
    let fresh = LoaderData::open(dir.path(), Split::Train).unwrap();
    assert!(fresh.checked_record(8).is_err());
    assert!(fresh.checked_record(0).is_ok());
}

#[test]
fn a_panicking_producer_is_an_error_not_the_end_of_the_stream() {
    let (tx, rx) = mpsc::sync_channel(1);
    let (recycle, _recycled) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _keep = tx;
        panic!("index out of range in the producer");
    });
    let mut loader = Loader {
        batches: Some(rx),
        recycle,
        stop: Arc::new(AtomicBool::new(false)),
        worker: Some(worker),
    };
    let err = loader.next().expect("an item").unwrap_err().to_string();
    assert!(err.contains("index out of range in the producer"), "{err}");
    assert!(loader.next().is_none());
}

#[test]
fn a_crop_larger_than_the_stored_images_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 9);
    let err = data.check_crop(9).unwrap_err().to_string();
    assert!(err.contains("crop size 9") && err.contains("8×8"), "{err}");
    data.check_crop(8).unwrap();
}
