//! Finding the inputs: an ImageNet-style directory with `train/<wnid>/*` class folders and a
//! `val/` split that is either `val/<wnid>/*` folders or flat files labelled by
//! `LOC_val_solution.csv`.
//!
//! Class `i` is the `i`-th training wnid in sorted order, as in torchvision and TensorFlow.
//! Training inputs are ordered by (class, file name), validation inputs by file name.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::shards::{ClassInfo, Split};

pub const VAL_LABELS_FILE: &str = "LOC_val_solution.csv";
pub const SYNSET_FILE: &str = "LOC_synset_mapping.txt";
/// How many directories above the input to look for the label files: Kaggle's layout keeps
/// them three levels above `ILSVRC/Data/CLS-LOC`.
const LABEL_SEARCH_DEPTH: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not exist: --input must be an ImageNet-style directory holding train/<wnid>/ class folders and val/")]
    MissingSplit { path: PathBuf },
    #[error("{path} holds no class folders: expected train/<wnid>/ folders of images")]
    NoClasses { path: PathBuf },
    #[error("class folder {path} holds no image files: add its images or remove the folder (an empty class would never be predicted)")]
    EmptyClass { path: PathBuf },
    #[error("{val} holds images directly, so their labels must come from {VAL_LABELS_FILE}, which was not found in {searched}; pass --val-labels FILE or arrange val/ as val/<wnid>/ folders")]
    MissingValLabels { val: PathBuf, searched: String },
    #[error("{path} line {line}: {message}")]
    BadLabelLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} has no label in {labels}: every flat val image needs a row there")]
    UnlabelledVal { path: PathBuf, labels: PathBuf },
    #[error("validation class {wnid} (from {origin}) is not one of the {classes} training classes: train and val must come from the same class list")]
    UnknownValClass {
        wnid: String,
        origin: String,
        classes: usize,
    },
    #[error("{path} mixes image files and class folders: use either val/<wnid>/ folders or flat files with {VAL_LABELS_FILE}")]
    MixedValLayout { path: PathBuf },
}

/// A file's size and modification time when it was scanned: when either changes, the file
/// changed, and the shard holding it is out of date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    pub len: u64,
    /// Nanoseconds since the Unix epoch (0 when the file system can't say).
    pub modified_ns: u64,
}

impl FileStamp {
    /// The stamp of whatever `path` names (following symlinks); a file that can't be looked
    /// at gets the empty stamp and is rejected as unreadable later.
    pub fn of(path: &Path) -> Self {
        let Ok(meta) = fs::metadata(path) else {
            return Self::default();
        };
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            len: meta.len(),
            modified_ns,
        }
    }
}

/// One input image: where to read it and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// Where to read it.
    pub path: PathBuf,
    /// Path relative to the input directory, `/`-separated, with bytes that are not UTF-8
    /// escaped (see `path_text`); what indexes and rejects record.
    pub rel: String,
    pub label: u32,
    pub stamp: FileStamp,
    /// A file in a flat `val/` that has no label and is not an image: rejected, not fatal
    /// (as a stray file in a class folder is). Its `label` means nothing.
    pub stray: bool,
}

impl SourceImage {
    fn new(root: &Path, path: PathBuf, label: u32) -> Self {
        Self {
            rel: relative(root, &path),
            stamp: FileStamp::of(&path),
            path,
            label,
            stray: false,
        }
    }
}

/// Everything found in the input directory.
#[derive(Debug, Clone)]
pub struct SourceDataset {
    pub root: PathBuf,
    pub classes: Vec<ClassInfo>,
    pub train: Vec<SourceImage>,
    pub val: Vec<SourceImage>,
    /// How validation labels were found, for the summary.
    pub val_labels: ValLabels,
    /// Things a person should know but that don't stop the run.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValLabels {
    Folders,
    Csv(PathBuf),
}

impl SourceDataset {
    pub fn split(&self, split: Split) -> &[SourceImage] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }
}

/// Scans `root`. `val_labels` overrides where `LOC_val_solution.csv` is looked for.
pub fn scan(root: &Path, val_labels: Option<&Path>) -> Result<SourceDataset, IngestError> {
    let mut warnings = Vec::new();
    let train_dir = existing_dir(&root.join("train"))?;
    let val_dir = existing_dir(&root.join("val"))?;

    let (class_dirs, stray) = list_dir(&train_dir)?;
    if !stray.is_empty() {
        warnings.push(format!(
            "ignored {} file(s) directly under {} (expected only class folders), e.g. {}",
            stray.len(),
            train_dir.display(),
            stray[0].display()
        ));
    }
    if class_dirs.is_empty() {
        return Err(IngestError::NoClasses { path: train_dir });
    }
    let names = find_label_file(root, SYNSET_FILE)
        .map(|path| read_synset_names(&path))
        .transpose()?
        .unwrap_or_default();
    let classes: Vec<ClassInfo> = class_dirs
        .iter()
        .map(|dir| {
            let wnid = file_name(dir);
            let name = names.get(&wnid).cloned().unwrap_or_else(|| wnid.clone());
            ClassInfo { wnid, name }
        })
        .collect();

    let mut train = Vec::new();
    for (label, dir) in class_dirs.iter().enumerate() {
        let (subdirs, files) = list_dir(dir)?;
        if !subdirs.is_empty() {
            warnings.push(format!(
                "ignored {} folder(s) inside class folder {}",
                subdirs.len(),
                dir.display()
            ));
        }
        if files.is_empty() {
            return Err(IngestError::EmptyClass { path: dir.clone() });
        }
        train.extend(
            files
                .into_iter()
                .map(|path| SourceImage::new(root, path, label as u32)),
        );
    }

    let class_of: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.wnid.as_str(), i as u32))
        .collect();
    let (val, labels) = scan_val(root, &val_dir, val_labels, &class_of, &mut warnings)?;

    Ok(SourceDataset {
        root: root.to_path_buf(),
        classes,
        train,
        val,
        val_labels: labels,
        warnings,
    })
}

fn scan_val(
    root: &Path,
    val_dir: &Path,
    val_labels: Option<&Path>,
    class_of: &HashMap<&str, u32>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<SourceImage>, ValLabels), IngestError> {
    let label_of = |wnid: &str, origin: &dyn Fn() -> String| {
        class_of
            .get(wnid)
            .copied()
            .ok_or_else(|| IngestError::UnknownValClass {
                wnid: wnid.to_string(),
                origin: origin(),
                classes: class_of.len(),
            })
    };
    let (dirs, files) = list_dir(val_dir)?;
    // A label file sitting inside val/ is not an image.
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| file_name(f) != VAL_LABELS_FILE)
        .collect();
    let mut val = Vec::new();
    let labels = if !dirs.is_empty() {
        if !files.is_empty() {
            return Err(IngestError::MixedValLayout {
                path: val_dir.to_path_buf(),
            });
        }
        for dir in &dirs {
            let wnid = file_name(dir);
            let label = label_of(&wnid, &|| format!("folder {}", dir.display()))?;
            let (_, files) = list_dir(dir)?;
            val.extend(
                files
                    .into_iter()
                    .map(|path| SourceImage::new(root, path, label)),
            );
        }
        ValLabels::Folders
    } else {
        let csv = match val_labels {
            Some(path) => path.to_path_buf(),
            None => find_label_file(root, VAL_LABELS_FILE)
                .or_else(|| Some(val_dir.join(VAL_LABELS_FILE)).filter(|p| p.exists()))
                .ok_or_else(|| IngestError::MissingValLabels {
                    val: val_dir.to_path_buf(),
                    searched: searched_dirs(root),
                })?,
        };
        let wnids = read_val_labels(&csv)?;
        let mut used = 0usize;
        for path in files {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(wnid) = wnids.get(&stem) else {
                // An unlabelled image is a hole in the label file; anything else is a stray.
                if super::decode::sniff_format(&path).is_some() {
                    return Err(IngestError::UnlabelledVal {
                        path,
                        labels: csv.clone(),
                    });
                }
                val.push(SourceImage {
                    stray: true,
                    ..SourceImage::new(root, path, 0)
                });
                continue;
            };
            let label = label_of(wnid, &|| format!("{} for {stem}", csv.display()))?;
            used += 1;
            val.push(SourceImage::new(root, path, label));
        }
        if used < wnids.len() {
            warnings.push(format!(
                "{} lists {} validation images but only {used} are in {}",
                csv.display(),
                wnids.len(),
                val_dir.display()
            ));
        }
        ValLabels::Csv(csv)
    };
    // Validation order is by file name, whichever folder an image sits in.
    val.sort_by(|a, b| {
        a.path
            .file_name()
            .cmp(&b.path.file_name())
            .then_with(|| a.rel.cmp(&b.rel))
    });
    Ok((val, labels))
}

fn existing_dir(path: &Path) -> Result<PathBuf, IngestError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(path.to_path_buf()),
        Ok(_) => Err(IngestError::MissingSplit {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(IngestError::MissingSplit {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(IngestError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// (sub-directories, files) of `dir`, each sorted by name; hidden entries are skipped.
fn list_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), IngestError> {
    let io = |source| IngestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: datasets are often assembled from links.
        let is_dir = match entry.file_type().map_err(io)? {
            t if t.is_symlink() => path.is_dir(),
            t => t.is_dir(),
        };
        if is_dir {
            dirs.push(path);
        } else {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(path_text).unwrap_or_default()
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| path_text(c.as_os_str()))
        .collect::<Vec<_>>()
        .join("/")
}

/// A file name as text that still names exactly one file: UTF-8 as it is, every byte that is
/// not UTF-8 as `\xNN`, and a backslash as `\\` (so the escapes can't be confused with a
/// name that contains them).
pub fn path_text(name: &OsStr) -> String {
    let bytes = name.as_encoded_bytes();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            if ch == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(ch);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The nearest `name` in `root` or its parents. Anything of that name counts (a FIFO too):
/// reading it then says what is wrong with it, instead of "not found".
fn find_label_file(root: &Path, name: &str) -> Option<PathBuf> {
    label_dirs(root)
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
}

/// The directories searched for a label file: `root` and its parents, absolute.
fn label_dirs(root: &Path) -> Vec<PathBuf> {
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    root.ancestors()
        .take(LABEL_SEARCH_DEPTH + 1)
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect()
}

fn searched_dirs(root: &Path) -> String {
    label_dirs(root)
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `LOC_val_solution.csv`: `ImageId,PredictionString`, the label is the first token of the
/// prediction string (`n01751748 1 2 3 4 n01751748 ...`). Returns image id → wnid. The header
/// row is optional; a byte-order mark and quoted fields are fine.
fn read_val_labels(path: &Path) -> Result<BTreeMap<String, String>, IngestError> {
    let file = crate::files::open_regular(path, 1 << 30).map_err(|source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(std::io::BufReader::new(file));
    let bad = |line: u64, message: String| IngestError::BadLabelLine {
        path: path.to_path_buf(),
        line: line as usize,
        message,
    };
    let mut labels = BTreeMap::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            match e.into_kind() {
                csv::ErrorKind::Io(source) => IngestError::Io {
                    path: path.to_path_buf(),
                    source,
                },
                csv::ErrorKind::Utf8 { .. } => bad(line, "not UTF-8 text".into()),
                other => bad(line, format!("unreadable CSV ({other:?})")),
            }
        })?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let id = record.get(0).unwrap_or_default();
        if record.iter().all(str::is_empty) || (i == 0 && id == "ImageId") {
            continue;
        }
        let prediction = record
            .get(1)
            .ok_or_else(|| bad(line, "expected `ImageId,PredictionString`".into()))?;
        let wnid = prediction
            .split_whitespace()
            .next()
            .ok_or_else(|| bad(line, format!("no label for {id}")))?;
        if let Some(previous) = labels.insert(id.to_string(), wnid.to_string()) {
            if previous != wnid {
                return Err(bad(
                    line,
                    format!("{id} is labelled both {previous} and {wnid}"),
                ));
            }
        }
    }
    Ok(labels)
}

/// `LOC_synset_mapping.txt`: `<wnid> <names>` per line. Returns wnid → names.
fn read_synset_names(path: &Path) -> Result<HashMap<String, String>, IngestError> {
    let text =
        crate::files::read_regular_text(path, 1 << 30).map_err(|source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (wnid, name) = line.trim().split_once(char::is_whitespace)?;
            Some((wnid.to_string(), name.trim().to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    /// Three classes written out of order, flat val with a CSV.
    fn layout(root: &Path) {
        for (wnid, files) in [
            ("n03000000", vec!["n03000000_2.JPEG", "n03000000_10.JPEG"]),
            ("n01000000", vec!["n01000000_5.JPEG"]),
            ("n02000000", vec!["n02000000_1.JPEG", ".DS_Store"]),
        ] {
            for f in files {
                touch(&root.join("train").join(wnid).join(f));
            }
        }
        for i in [3, 1, 2] {
            touch(&root.join(format!("val/ILSVRC2012_val_{i:08}.JPEG")));
        }
        fs::write(
            root.join(VAL_LABELS_FILE),
            "ImageId,PredictionString\n\
             ILSVRC2012_val_00000001,n02000000 1 2 3 4 n02000000 5 6 7 8\n\
             ILSVRC2012_val_00000002,n01000000 1 2 3 4\n\
             ILSVRC2012_val_00000003,n03000000 1 2 3 4\n",
        )
        .unwrap();
        fs::write(
            root.join(SYNSET_FILE),
            "n01000000 first thing, a\nn02000000 second\nn03000000 third\n",
        )
        .unwrap();
    }

    #[test]
    fn classes_are_sorted_wnids_and_inputs_ordered() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let ds = scan(dir.path(), None).unwrap();
        let wnids: Vec<_> = ds.classes.iter().map(|c| c.wnid.as_str()).collect();
        assert_eq!(wnids, ["n01000000", "n02000000", "n03000000"]);
        assert_eq!(ds.classes[0].name, "first thing, a");
        let train: Vec<_> = ds.train.iter().map(|s| (s.label, s.rel.as_str())).collect();
        assert_eq!(
            train,
            [
                (0, "train/n01000000/n01000000_5.JPEG"),
                (1, "train/n02000000/n02000000_1.JPEG"),
                // Byte order of file names, as `sorted()` in Python.
                (2, "train/n03000000/n03000000_10.JPEG"),
                (2, "train/n03000000/n03000000_2.JPEG"),
            ]
        );
        let val: Vec<_> = ds.val.iter().map(|s| (s.label, s.rel.as_str())).collect();
        assert_eq!(
            val,
            [
                (1, "val/ILSVRC2012_val_00000001.JPEG"),
                (0, "val/ILSVRC2012_val_00000002.JPEG"),
                (2, "val/ILSVRC2012_val_00000003.JPEG"),
            ]
        );
        assert_eq!(
            ds.val_labels,
            ValLabels::Csv(dir.path().join(VAL_LABELS_FILE))
        );
    }

    #[test]
    fn val_folders_give_the_same_labels_sorted_by_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("train/n01000000/a.JPEG"));
        touch(&root.join("train/n02000000/b.JPEG"));
        touch(&root.join("val/n02000000/ILSVRC2012_val_00000001.JPEG"));
        touch(&root.join("val/n01000000/ILSVRC2012_val_00000002.JPEG"));
        let ds = scan(root, None).unwrap();
        assert_eq!(ds.val_labels, ValLabels::Folders);
        let val: Vec<_> = ds.val.iter().map(|s| (s.label, s.rel.as_str())).collect();
        assert_eq!(
            val,
            [
                (1, "val/n02000000/ILSVRC2012_val_00000001.JPEG"),
                (0, "val/n01000000/ILSVRC2012_val_00000002.JPEG"),
            ]
        );
        // Without a synset mapping, names fall back to wnids.
        assert_eq!(ds.classes[1].name, "n02000000");
    }

    #[test]
    fn missing_label_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        fs::remove_file(dir.path().join(VAL_LABELS_FILE)).unwrap();
        let err = scan(dir.path(), None).unwrap_err();
        assert!(matches!(err, IngestError::MissingValLabels { .. }));
        assert!(err.to_string().contains("--val-labels"), "{err}");
    }

    #[test]
    fn explicit_label_file_is_used() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let elsewhere = dir.path().join("labels.csv");
        fs::rename(dir.path().join(VAL_LABELS_FILE), &elsewhere).unwrap();
        let ds = scan(dir.path(), Some(&elsewhere)).unwrap();
        assert_eq!(ds.val.len(), 3);
    }

    #[test]
    fn unknown_val_wnid_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        fs::write(
            dir.path().join(VAL_LABELS_FILE),
            "ImageId,PredictionString\nILSVRC2012_val_00000001,n09999999 1 2 3 4\n\
             ILSVRC2012_val_00000002,n01000000 1 2 3 4\nILSVRC2012_val_00000003,n01000000 1\n",
        )
        .unwrap();
        let err = scan(dir.path(), None).unwrap_err();
        assert!(
            matches!(&err, IngestError::UnknownValClass { wnid, .. } if wnid == "n09999999"),
            "{err}"
        );
        // Same check for folder layouts.
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("train/n01000000/a.JPEG"));
        touch(&dir.path().join("val/n05000000/b.JPEG"));
        assert!(matches!(
            scan(dir.path(), None),
            Err(IngestError::UnknownValClass { .. })
        ));
    }

    #[test]
    fn unlabelled_val_image_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        // A JPEG by its first bytes (a stray non-image would be a reject instead).
        fs::write(
            dir.path().join("val/ILSVRC2012_val_00000009.JPEG"),
            [0xFF, 0xD8, 0xFF, 0xE0, 0, 16],
        )
        .unwrap();
        let err = scan(dir.path(), None).unwrap_err();
        assert!(matches!(err, IngestError::UnlabelledVal { .. }), "{err}");
        assert!(err.to_string().contains("ILSVRC2012_val_00000009"));
    }

    #[test]
    fn empty_class_and_missing_splits_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        fs::create_dir(dir.path().join("train/n04000000")).unwrap();
        let err = scan(dir.path(), None).unwrap_err();
        assert!(matches!(err, IngestError::EmptyClass { .. }), "{err}");
        assert!(err.to_string().contains("n04000000"));

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            scan(empty.path(), None),
            Err(IngestError::MissingSplit { .. })
        ));
    }

    #[test]
    fn a_bom_and_quoted_fields_in_the_label_file_parse() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        fs::write(
            dir.path().join(VAL_LABELS_FILE),
            "\u{feff}ImageId,PredictionString\r\n\
             \"ILSVRC2012_val_00000001\",\"n02000000 1 2 3 4\"\r\n\
             ILSVRC2012_val_00000002,n01000000 1 2 3 4\r\n\
             ILSVRC2012_val_00000003 , n03000000 1 2 3 4\r\n",
        )
        .unwrap();
        let ds = scan(dir.path(), None).unwrap();
        let labels: Vec<u32> = ds.val.iter().map(|s| s.label).collect();
        assert_eq!(labels, [1, 0, 2]);
        assert!(
            ds.warnings.is_empty(),
            "no false row-count warning: {:?}",
            ds.warnings
        );
    }

    #[test]
    fn a_stray_file_in_flat_val_is_a_reject_but_an_unlabelled_image_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        fs::write(dir.path().join("val/README.txt"), "about these images").unwrap();
        let ds = scan(dir.path(), None).unwrap();
        let stray: Vec<_> = ds
            .val
            .iter()
            .filter(|s| s.stray)
            .map(|s| s.rel.as_str())
            .collect();
        assert_eq!(stray, ["val/README.txt"]);
        // A real image without a label is still an error.
        let png = dir.path().join("val/ILSVRC2012_val_00000099.JPEG");
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&[0u8; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        fs::write(&png, bytes).unwrap();
        let err = scan(dir.path(), None).unwrap_err();
        assert!(matches!(err, IngestError::UnlabelledVal { .. }), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_file_names_stay_distinct() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("train/n01000000");
        fs::create_dir_all(&class).unwrap();
        for name in [
            &b"c\xe9.JPEG"[..],
            b"c\xe8.JPEG",
            b"c\xff.JPEG",
            "cé.JPEG".as_bytes(),
        ] {
            fs::write(class.join(OsStr::from_bytes(name)), b"x").unwrap();
        }
        touch(&dir.path().join("val/n01000000/v.JPEG"));
        let ds = scan(dir.path(), None).unwrap();
        let rels: Vec<_> = ds.train.iter().map(|s| s.rel.as_str()).collect();
        assert_eq!(
            rels,
            [
                // Byte order: 'é' is 0xc3 0xa9 in UTF-8.
                "train/n01000000/cé.JPEG",
                "train/n01000000/c\\xe8.JPEG",
                "train/n01000000/c\\xe9.JPEG",
                "train/n01000000/c\\xff.JPEG",
            ]
        );
        assert_eq!(path_text(OsStr::new("a\\b")), "a\\\\b");
    }

    #[test]
    fn csv_with_conflicting_labels_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        fs::write(
            dir.path().join(VAL_LABELS_FILE),
            "ImageId,PredictionString\nILSVRC2012_val_00000001,n01000000 1\n\
             ILSVRC2012_val_00000001,n02000000 1\n",
        )
        .unwrap();
        let err = scan(dir.path(), None).unwrap_err();
        assert!(
            matches!(err, IngestError::BadLabelLine { line: 3, .. }),
            "{err}"
        );
    }
}
