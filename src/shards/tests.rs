//! The dataset format's own tests: round trips, and damage found on open.
use super::*;

fn header(count: u64) -> ShardHeader {
    ShardHeader {
        record_count: count,
        height: 4,
        width: 4,
        channels: CHANNELS,
        shard: 7,
    }
}

fn write_shard(dir: &Path, records: &[Vec<u8>]) -> PathBuf {
    let path = dir.join("shard-00007.bin");
    let mut writer = ShardWriter::create(&path, 7, 4).unwrap();
    for r in records {
        writer.push(r).unwrap();
    }
    writer.finish().unwrap();
    path
}

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 48]).collect()
}

#[test]
fn header_round_trips() {
    let h = header(12);
    let page = h.encode();
    assert_eq!(page.len(), HEADER_BYTES);
    assert_eq!(ShardHeader::decode(&page, Path::new("x")).unwrap(), h);
}

#[test]
fn writer_and_reader_agree() {
    let dir = tempfile::tempdir().unwrap();
    let recs = records(5);
    let path = write_shard(dir.path(), &recs);
    assert!(
        !files::tmp_path(&path).exists(),
        "temporary name must be gone"
    );
    let shard = Shard::open(&path).unwrap();
    assert_eq!(shard.len(), 5);
    assert_eq!(shard.header().shard, 7);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(shard.record(i), &r[..]);
        shard.verify(i, record_checksum(r)).unwrap();
    }
    assert!(matches!(
        shard.verify(1, record_checksum(&recs[0])),
        Err(ShardError::Checksum { record: 1, .. })
    ));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        HEADER_BYTES as u64 + 5 * 48
    );
}

#[test]
fn unfinished_writer_leaves_no_shard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard-00000.bin");
    let mut writer = ShardWriter::create(&path, 0, 4).unwrap();
    writer.push(&[1; 48]).unwrap();
    drop(writer);
    assert!(!path.exists());
    assert!(matches!(
        Shard::open(&path),
        Err(ShardError::Incomplete { .. })
    ));
}

#[test]
fn truncated_shard_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_shard(dir.path(), &records(3));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = Shard::open(&path).err().unwrap();
    assert!(matches!(err, ShardError::Size { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("shard-00007.bin"), "{msg}");
    assert!(msg.contains("alexnet preprocess"), "{msg}");

    std::fs::write(&path, &bytes[..100]).unwrap();
    assert!(matches!(Shard::open(&path), Err(ShardError::Size { .. })));
}

#[test]
fn corrupted_header_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_shard(dir.path(), &records(2));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16] ^= 1; // record count
    std::fs::write(&path, &bytes).unwrap();
    let err = Shard::open(&path).err().unwrap();
    assert!(matches!(err, ShardError::BadHeader { .. }), "{err}");
    assert!(err.to_string().contains("shard-00007.bin"));

    bytes[0] = b'X';
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Shard::open(&path),
        Err(ShardError::BadMagic { .. })
    ));
}

#[test]
fn other_versions_are_refused() {
    let mut page = header(0).encode();
    page[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let err = ShardHeader::decode(&page, Path::new("s.bin")).unwrap_err();
    assert!(matches!(err, ShardError::Version { found, .. } if found == FORMAT_VERSION + 1));
}

#[test]
fn index_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.parquet");
    let rows: Vec<IndexRow> = (0..3)
        .map(|i| IndexRow {
            label: i,
            wnid: format!("n{i:08}"),
            source_path: format!("train/n{i:08}/x_{i}.JPEG"),
            orig_width: 100 + i,
            orig_height: 50 + i,
            source_format: "jpeg".into(),
            checksum: u64::MAX - i as u64,
        })
        .collect();
    write_index(&path, &rows).unwrap();
    assert_eq!(read_index(&path).unwrap(), rows);
    write_index(&path, &[]).unwrap();
    assert!(read_index(&path).unwrap().is_empty());
}

#[test]
fn damaged_index_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.parquet");
    std::fs::write(&path, b"not parquet at all").unwrap();
    let err = read_index(&path).unwrap_err();
    assert!(err.to_string().contains("i.parquet"), "{err}");
}

#[test]
fn schemas_directory_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for (file, schema) in [
        ("shard-index.arrow.txt", index_schema()),
        ("rejects.arrow.txt", rejects_schema()),
    ] {
        let documented = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(
            documented,
            describe_schema(&schema),
            "schemas/{file} is stale"
        );
    }
}

#[test]
fn rejects_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(REJECTS_FILE);
    let rejects = vec![
        (
            Split::Val,
            Reject {
                source_path: "val/x.JPEG".into(),
                reason: "truncated".into(),
                detail: "the file ends inside the image data".into(),
            },
        ),
        (
            Split::Train,
            Reject {
                source_path: "train/a/b.JPEG".into(),
                reason: "empty".into(),
                detail: String::new(),
            },
        ),
    ];
    write_rejects(&path, &rejects).unwrap();
    assert_eq!(read_rejects(&path).unwrap(), rejects);
}

#[test]
fn split_reader_locates_records_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("train")).unwrap();
    let counts = [3u64, 0, 2];
    let mut expected = Vec::new();
    for (s, &n) in counts.iter().enumerate() {
        let paths = ShardPaths::new(dir.path(), Split::Train, s);
        let mut w = ShardWriter::create(&paths.records, s as u32, 4).unwrap();
        for r in 0..n {
            let rec = vec![(10 * s as u64 + r) as u8; 48];
            w.push(&rec).unwrap();
            expected.push(rec);
        }
        w.finish().unwrap();
        let rows: Vec<IndexRow> = (0..n)
            .map(|r| IndexRow {
                label: 0,
                wnid: "n0".into(),
                source_path: format!("train/n0/{s}_{r}.JPEG"),
                orig_width: 4,
                orig_height: 4,
                source_format: "jpg".into(),
                checksum: record_checksum(&[(10 * s as u64 + r) as u8; 48]),
            })
            .collect();
        write_index(&paths.index, &rows).unwrap();
    }
    let content = SplitContent::read(dir.path(), Split::Train, 3).unwrap();
    assert_eq!(content.shard_records, counts);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        image_size: 4,
        channels: 3,
        layout: "u8 HWC RGB".into(),
        classes: vec![],
        splits: [(Split::Train, content.manifest(5, 0))].into(),
        rejected: 0,
        mean: MeanStats {
            mean_image: MEAN_FILE.into(),
            checksum: String::new(),
            channel_mean: [0.0; 3],
            channel_std: [0.0; 3],
        },
    };
    let reader = SplitReader::open_with(dir.path(), &manifest, Split::Train).unwrap();
    assert_eq!(reader.len(), 5);
    assert_eq!(reader.locate(3), (2, 0));
    for (i, rec) in expected.iter().enumerate() {
        assert_eq!(reader.record(i), &rec[..]);
    }
    assert_eq!(reader.read_index().unwrap().len(), 5);

    // An index that no longer matches the manifest's checksum is refused, naming it.
    let index = ShardPaths::new(dir.path(), Split::Train, 2).index;
    let mut bytes = std::fs::read(&index).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&index, bytes).unwrap();
    let err = reader.read_index().unwrap_err();
    assert!(matches!(err, ShardError::FileChecksum { .. }), "{err}");
    assert!(err.to_string().contains("shard-00002.parquet"), "{err}");
}

#[test]
fn fingerprints_see_labels_pixels_and_paths() {
    let row = |label, checksum, path: &str| IndexRow {
        label,
        wnid: "n".into(),
        source_path: path.into(),
        orig_width: 1,
        orig_height: 1,
        source_format: "jpg".into(),
        checksum,
    };
    let base = split_fingerprint(&[row(0, 1, "a"), row(1, 2, "b")]);
    assert_eq!(base, split_fingerprint(&[row(0, 1, "a"), row(1, 2, "b")]));
    for changed in [
        [row(0, 1, "a"), row(0, 2, "b")],
        [row(0, 1, "a"), row(1, 3, "b")],
        [row(0, 1, "a"), row(1, 2, "c")],
        [row(1, 2, "b"), row(0, 1, "a")],
    ] {
        assert_ne!(base, split_fingerprint(&changed));
    }
}

#[test]
fn a_damaged_mean_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(MEAN_FILE);
    let checksum = files::write_npy_f32(&path, &[2, 2, 3], &[1.0; 12]).unwrap();
    let mut stats = MeanStats {
        mean_image: MEAN_FILE.into(),
        checksum,
        channel_mean: [1.0; 3],
        channel_std: [0.0; 3],
    };
    assert_eq!(read_mean(&path, &stats).unwrap().1, vec![1.0; 12]);
    stats.checksum = "0000000000000000".into();
    let err = read_mean(&path, &stats).unwrap_err().to_string();
    assert!(
        err.contains("mean.npy") && err.contains("alexnet preprocess"),
        "{err}"
    );
}
