//! Training checkpoints: `RUN/checkpoints/step-NNNNNNNNN.safetensors` (see `run`).
//!
//! A checkpoint holds the weights (PyTorch names and layouts), the momentum and, as JSON
//! metadata, everything else a resumed run needs. All randomness is keyed by counters that
//! are part of that state — the loader's by (seed, epoch, image), dropout's by (seed, step) —
//! so there is no generator state to save.

use std::path::{Path, PathBuf};

use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::Pipeline;
use crate::engine::metrics::Tally;
use crate::engine::schedule::Plateau;
use crate::engine::sgd::Sgd;
use crate::loader::Position;
use crate::model::checkpoint::{
    export_layers, import_layers, CheckpointError, TensorFile, CHECKSUMS_KEY,
};
use crate::model::{AlexNet, Spec, TORCH_NAMES};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot resume from {path}: {reason}")]
    NotResumable { path: PathBuf, reason: String },
    #[error("checkpoint {path} cannot be used: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// Marks our training checkpoints (PyTorch-only files lack it).
pub const FORMAT: &str = "alexnet-train-checkpoint";
pub const FORMAT_VERSION: &str = "1";
const MOMENTUM_PREFIX: &str = "momentum.";

/// Everything besides tensors that a resumed run continues from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: u64,
    /// Where the training stream continues.
    pub epoch: u64,
    pub sample: usize,
    pub schedule: Plateau,
    /// The current epoch's running training loss and accuracy.
    pub epoch_tally: Tally,
    pub epoch_seconds: f64,
    /// Seconds spent training so far, over all sessions of the run.
    pub elapsed_seconds: f64,
}

impl TrainState {
    pub fn new(pipeline: &Pipeline) -> Self {
        Self {
            step: 0,
            epoch: 0,
            sample: 0,
            schedule: Plateau::new(&pipeline.train),
            epoch_tally: Tally::default(),
            epoch_seconds: 0.0,
            elapsed_seconds: 0.0,
        }
    }

    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            sample: self.sample,
        }
    }
}

/// Which data a run trains on: the manifest's fingerprints of its two splits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetId {
    pub train: String,
    pub val: String,
}

/// Writes a training checkpoint atomically.
pub fn save<D: Device<f32>>(
    path: &Path,
    model: &AlexNet<f32, D>,
    sgd: &Sgd<D>,
    state: &TrainState,
    pipeline: &Pipeline,
    classes: &[String],
    dataset: &DatasetId,
) -> Result<(), StateError> {
    let mut file = TensorFile::default();
    let layers = model.layers();
    let layouts = model.torch_layouts();
    export_layers(&mut file, "", layers.map(|l| l.1), layouts);
    export_layers(
        &mut file,
        MOMENTUM_PREFIX,
        std::array::from_fn(|i| &sgd.velocity[i]),
        layouts,
    );
    let meta = &mut file.metadata;
    meta.insert("format".into(), FORMAT.into());
    meta.insert("format_version".into(), FORMAT_VERSION.into());
    meta.insert(
        "state".into(),
        serde_json::to_string(state).expect("state serialises"),
    );
    meta.insert("pipeline".into(), pipeline.to_toml());
    meta.insert(
        "classes".into(),
        serde_json::to_string(classes).expect("strings serialise"),
    );
    meta.insert("input_size".into(), model.spec.input.to_string());
    meta.insert(
        "dataset".into(),
        serde_json::to_string(dataset).expect("strings serialise"),
    );
    file.write(path)?;
    Ok(())
}

/// Checks a file that claims this project's checkpoint format: a version this build reads,
/// and the per-tensor checksums every such file is written with. Files of other tools (no
/// `format` metadata) pass; `TensorFile::read` checks what they do carry.
pub fn check_format(file: &TensorFile, path: &Path) -> Result<(), StateError> {
    let Some(format) = file.metadata.get("format") else {
        return Ok(());
    };
    let bad = |reason: String| StateError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if format != FORMAT {
        return Err(bad(format!("its format is `{format}`, not `{FORMAT}`")));
    }
    match file.metadata.get("format_version") {
        Some(v) if v == FORMAT_VERSION => {}
        other => {
            return Err(bad(format!(
                "it claims format version {}, and this build reads version {FORMAT_VERSION} \
                 (a newer alexnet wrote it, or it was edited)",
                other.map_or("(none)", |v| v.as_str())
            )))
        }
    }
    if !file.metadata.contains_key(CHECKSUMS_KEY) {
        return Err(bad(
            "it lacks the per-tensor checksums every checkpoint of this format is written with"
                .into(),
        ));
    }
    Ok(())
}

/// Tensors of `file` that are neither the network's weights nor their momentum: a sign that it
/// holds another network (evaluate names them).
pub fn unexpected_tensors(file: &TensorFile) -> Vec<String> {
    file.tensors
        .keys()
        .filter(|name| {
            let name = name.strip_prefix(MOMENTUM_PREFIX).unwrap_or(name);
            !TORCH_NAMES
                .iter()
                .any(|layer| *name == format!("{layer}.weight") || *name == format!("{layer}.bias"))
        })
        .cloned()
        .collect()
}

/// The training state a checkpoint of ours carries (`None` for a weights-only file).
pub fn saved_state(file: &TensorFile) -> Option<TrainState> {
    serde_json::from_str(file.metadata.get("state")?).ok()
}

/// What differs between the classes a checkpoint was trained on and the data's, briefly.
fn class_difference(trained: &[String], data: &[String]) -> String {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|c| !b.contains(c)).cloned().collect()
    };
    let list = |names: Vec<String>| {
        let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
        let more = names.len().saturating_sub(shown.len());
        match more {
            0 => shown.join(", "),
            n => format!("{} and {n} more", shown.join(", ")),
        }
    };
    let (missing, new) = (only(trained, data), only(data, trained));
    match (missing.is_empty(), new.is_empty()) {
        (true, true) => "the same classes in another order".into(),
        (false, true) => format!("only the checkpoint has {}", list(missing)),
        (true, false) => format!("only the data has {}", list(new)),
        (false, false) => format!(
            "only the checkpoint has {}; only the data has {}",
            list(missing),
            list(new)
        ),
    }
}

/// The step in a checkpoint's file name (`step-000000042.safetensors`), if it has one.
fn step_in_name(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// A training checkpoint read back.
pub struct Restored<D: Device<f32>> {
    pub model: AlexNet<f32, D>,
    pub velocity: [crate::model::Affine<f32, D>; 8],
    pub state: TrainState,
    pub pipeline: Pipeline,
}

/// Reads a training checkpoint written by `save`, checking it against `classes` and the
/// `dataset` it continues on, its saved pipeline with `check_pipeline`, and then its tensors
/// against `spec`.
pub fn load<D: Device<f32>, E: From<StateError>>(
    path: &Path,
    spec: &Spec,
    classes: &[String],
    dataset: &DatasetId,
    dev: &D,
    check_pipeline: impl FnOnce(&Pipeline) -> Result<(), E>,
) -> Result<Restored<D>, E> {
    let file = TensorFile::read(path).map_err(StateError::from)?;
    check_format(&file, path)?;
    let meta = |key: &str| {
        file.metadata
            .get(key)
            .ok_or_else(|| StateError::NotResumable {
                path: path.to_path_buf(),
                reason: format!("it has no `{key}` metadata (not written by `alexnet train`)"),
            })
    };
    // `check_format` vouched for the format and version of a file that names one; a file
    // that names none (PyTorch's) holds weights but no training state.
    meta("format")?;
    let bad = |reason: String| StateError::NotResumable {
        path: path.to_path_buf(),
        reason,
    };
    let state: TrainState =
        serde_json::from_str(meta("state")?).map_err(|e| bad(format!("bad state: {e}")))?;
    if let Some(named) = step_in_name(path) {
        if named != state.step {
            return Err(bad(format!(
                "its name says step {named}, but it holds the state after step {}: it was copied \
                 or renamed. Move it out of the run's checkpoints (the others are used), or \
                 rename it step-{:09}.safetensors",
                state.step, state.step
            ))
            .into());
        }
    }
    let pipeline =
        Pipeline::parse(meta("pipeline")?, path).map_err(|e| bad(format!("bad pipeline: {e}")))?;
    let saved_classes: Vec<String> =
        serde_json::from_str(meta("classes")?).map_err(|e| bad(format!("bad classes: {e}")))?;
    if saved_classes != classes {
        return Err(bad(format!(
            "it was trained on {} classes, the data has {}: {} — a different dataset",
            saved_classes.len(),
            classes.len(),
            class_difference(&saved_classes, classes)
        ))
        .into());
    }
    let trained_on: DatasetId =
        serde_json::from_str(meta("dataset")?).map_err(|e| bad(format!("bad dataset: {e}")))?;
    if &trained_on != dataset {
        return Err(bad(format!(
            "it was trained on other data (the same {} classes, but a different dataset: train \
             fingerprint {}, these shards have {}); resume on the shards it was trained on, or \
             start a new --run",
            classes.len(),
            trained_on.train,
            dataset.train
        ))
        .into());
    }
    check_pipeline(&pipeline)?;
    let layers = import_layers(&file, path, "", spec, dev).map_err(StateError::from)?;
    let velocity =
        import_layers(&file, path, MOMENTUM_PREFIX, spec, dev).map_err(StateError::from)?;
    Ok(Restored {
        model: AlexNet::from_layers(dev, spec.clone(), layers),
        velocity,
        state,
        pipeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_class_mismatch_names_what_differs() {
        let trained = names(&["cat", "dog", "eel", "fox"]);
        assert_eq!(
            class_difference(&trained, &names(&["cat", "dog", "eel", "gnu"])),
            "only the checkpoint has fox; only the data has gnu"
        );
        assert_eq!(
            class_difference(&trained, &names(&["dog", "cat", "eel", "fox"])),
            "the same classes in another order"
        );
        let many: Vec<String> = (0..9).map(|i| format!("c{i}")).collect();
        assert_eq!(
            class_difference(&trained[..1], &many),
            "only the checkpoint has cat; only the data has c0, c1, c2, c3, c4 and 4 more"
        );
    }

    #[test]
    fn the_step_is_read_from_a_checkpoint_name() {
        assert_eq!(
            step_in_name(Path::new("run/checkpoints/step-000000042.safetensors")),
            Some(42)
        );
        assert_eq!(step_in_name(Path::new("weights.safetensors")), None);
    }
}
