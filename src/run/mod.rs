//! A run directory and its logs, defined once for the trainer that writes them and for
//! evaluation, which reads them back for its plots.
//!
//! ```text
//! RUN/pipeline.toml                      the resolved pipeline the run trains with
//! RUN/metrics.csv                        one `EpochRow` per finished epoch
//! RUN/steps.csv                          one `StepRow` per optimiser step
//! RUN/checkpoints/step-000001234.safetensors
//! ```

pub mod state;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: {message}. The log is damaged: cut it back to its last good line (the rows after \
         the latest checkpoint are rewritten on --resume), or move it aside (training starts a \
         new one; the plots then lack the earlier epochs)"
    )]
    Csv { path: PathBuf, message: String },
}

/// The run directory's paths.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn pipeline(&self) -> PathBuf {
        self.root.join("pipeline.toml")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    pub fn steps(&self) -> PathBuf {
        self.root.join("steps.csv")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn eval(&self) -> PathBuf {
        self.root.join("eval")
    }

    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints()
            .join(format!("step-{step:09}.safetensors"))
    }

    /// Checkpoints, oldest first.
    pub fn list_checkpoints(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut found: Vec<(u64, PathBuf)> = match std::fs::read_dir(self.checkpoints()) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let step = name
                        .strip_prefix("step-")?
                        .strip_suffix(".safetensors")?
                        .parse()
                        .ok()?;
                    Some((step, e.path()))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        found.sort();
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }

    pub fn latest_checkpoint(&self) -> std::io::Result<Option<PathBuf>> {
        Ok(self.list_checkpoints()?.pop())
    }

    /// Removes the temporary files of checkpoint writes that never finished (a crash or a
    /// kill mid-write); only while the run is locked, so no writer is still at work.
    pub fn remove_unfinished_checkpoints(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(self.checkpoints()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("step-") && name.contains(".safetensors.") && name.ends_with(".tmp")
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Deletes all but the newest `keep` checkpoints.
    pub fn prune(&self, keep: usize) -> std::io::Result<()> {
        let all = self.list_checkpoints()?;
        let excess = all.len().saturating_sub(keep);
        for old in &all[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }

    pub fn read_metrics(&self) -> Result<Vec<EpochRow>, LogError> {
        read_rows(&self.metrics())
    }

    pub fn read_steps(&self) -> Result<Vec<StepRow>, LogError> {
        read_rows(&self.steps())
    }
}

/// `metrics.csv`: one finished epoch. Errors are fractions in [0, 1]; validation uses the
/// centre crop; the learning rate is the one used during the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: u64,
    pub step: u64,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_top1_error: f64,
    pub val_loss: f64,
    pub val_top1_error: f64,
    pub val_top5_error: f64,
    pub epoch_seconds: f64,
    pub train_images_per_sec: f64,
}

/// `steps.csv`: one optimiser step (`epoch` counts from 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub step: u64,
    pub epoch: u64,
    pub loss: f32,
    pub learning_rate: f64,
    /// Wall time of the step, loader wait included (absent in logs of older versions).
    #[serde(default)]
    pub ms_per_step: f64,
}

/// A row keyed by the optimiser step it was written after.
pub trait Stepped {
    fn step(&self) -> u64;
}

impl Stepped for EpochRow {
    fn step(&self) -> u64 {
        self.step
    }
}

impl Stepped for StepRow {
    fn step(&self) -> u64 {
        self.step
    }
}

/// Reads every row of a run log. A last line without its newline is a row whose writing was
/// cut short (a crash, a full disk) and is left out; on `--resume`, `CsvLog::open` rewrites the
/// file without it.
pub fn read_rows<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, LogError> {
    let mut bytes =
        crate::files::read_regular(path, crate::files::READ_LIMIT).map_err(|source| {
            LogError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
    if bytes.last().is_some_and(|&b| b != b'\n') {
        let complete = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        bytes.truncate(complete);
    }
    csv::Reader::from_reader(bytes.as_slice())
        .deserialize()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| csv_error(path, e))
}

fn csv_error(path: &Path, e: csv::Error) -> LogError {
    match e.into_kind() {
        csv::ErrorKind::Io(source) => LogError::Io {
            path: path.to_path_buf(),
            source,
        },
        csv::ErrorKind::Deserialize { pos, err } => LogError::Csv {
            path: path.to_path_buf(),
            message: format!("line {}: {err}", pos.map_or(0, |p| p.line())),
        },
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => LogError::Csv {
            path: path.to_path_buf(),
            message: format!(
                "line {} has {len} fields where the header has {expected_len}",
                pos.map_or(0, |p| p.line())
            ),
        },
        other => LogError::Csv {
            path: path.to_path_buf(),
            message: format!("{other:?}"),
        },
    }
}

/// A run log open for appending. On `--resume`, rows written after the checkpoint (by a run
/// that went on and then crashed) are dropped first, so the log continues where the state does.
pub struct CsvLog<T> {
    path: PathBuf,
    writer: csv::Writer<File>,
    _row: std::marker::PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned + Stepped> CsvLog<T> {
    /// Opens `path`, keeping the rows up to `keep_through_step` (a missing file is a new log).
    pub fn open(path: &Path, keep_through_step: u64) -> Result<Self, LogError> {
        let kept: Vec<T> = match read_rows::<T>(path) {
            Ok(rows) => rows
                .into_iter()
                .filter(|r| r.step() <= keep_through_step)
                .collect(),
            Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        // The kept rows (and their header) replace the file atomically.
        let mut rewrite = csv::Writer::from_writer(Vec::new());
        for row in &kept {
            rewrite.serialize(row).map_err(|e| csv_error(path, e))?;
        }
        let bytes = rewrite.into_inner().map_err(|e| LogError::Io {
            path: path.to_path_buf(),
            source: e.into_error(),
        })?;
        crate::files::write_atomic(path, &bytes).map_err(|e| LogError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| LogError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        // An empty log gets its header with its first row.
        let writer = csv::WriterBuilder::new()
            .has_headers(kept.is_empty())
            .from_writer(file);
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            _row: std::marker::PhantomData,
        })
    }

    /// Appends a row and flushes it, so a crash loses at most the row being written.
    pub fn append(&mut self, row: &T) -> Result<(), LogError> {
        self.writer
            .serialize(row)
            .map_err(|e| csv_error(&self.path, e))?;
        self.writer.flush().map_err(|source| LogError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f32) -> StepRow {
        StepRow {
            step,
            epoch: 1,
            loss,
            learning_rate: 0.01,
            ms_per_step: 12.5,
        }
    }

    #[test]
    fn a_resumed_log_drops_the_rows_after_its_step_and_keeps_one_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.csv");
        let mut log = CsvLog::open(&path, 0).unwrap();
        for s in 1..=4 {
            log.append(&step(s, s as f32)).unwrap();
        }
        drop(log);
        let mut log = CsvLog::<StepRow>::open(&path, 2).unwrap();
        log.append(&step(3, 33.0)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().next(),
            Some("step,epoch,loss,learning_rate,ms_per_step")
        );
        assert_eq!(text.lines().count(), 4, "{text}");
        let rows: Vec<StepRow> = read_rows(&path).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.loss).collect::<Vec<_>>(),
            [1.0, 2.0, 33.0]
        );
    }

    #[test]
    fn logs_of_older_versions_without_step_times_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.csv");
        std::fs::write(&path, "step,epoch,loss,learning_rate\n1,1,2.3,0.01\n").unwrap();
        let rows: Vec<StepRow> = read_rows(&path).unwrap();
        assert_eq!(
            rows,
            [StepRow {
                ms_per_step: 0.0,
                ..step(1, 2.3)
            }]
        );
    }

    #[test]
    fn a_damaged_log_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        std::fs::write(&path, "epoch,step\n1,x\n").unwrap();
        let err = read_rows::<EpochRow>(&path).unwrap_err().to_string();
        assert!(err.contains("metrics.csv"), "{err}");
    }
}
