//! Weights in safetensors files with PyTorch's names and layouts.
//!
//! A checkpoint holds `features.{0,4,8,10,12}.{weight,bias}` and
//! `classifier.{1,4,6}.{weight,bias}` exactly as `torch.nn.Sequential` AlexNet's
//! `state_dict()` has them (conv `[out, in, kh, kw]`, linear `[out, in]`, with
//! `classifier.1` over PyTorch's channel-major flattening), so
//! `safetensors.torch.load_file` + `load_state_dict` just works. Training checkpoints add the
//! SGD momentum under `momentum.<name>` (same layouts) and their state as JSON metadata; see
//! `schemas/checkpoint.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dfdx::prelude::*;
use safetensors::tensor::Dtype as StDtype;

use super::{Affine, Spec, TorchLayout, TORCH_NAMES};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write checkpoint {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: crate::files::FileError,
    },
    #[error("{path} is not a safetensors file ({message})")]
    Format { path: PathBuf, message: String },
    #[error(
        "checkpoint {path} has no tensor `{name}` (it holds: {found}); \
         is it an AlexNet saved as torch.nn.Sequential features/classifier?"
    )]
    Missing {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error(
        "checkpoint {path}: tensor `{name}` has shape {found:?}, but this pipeline's model needs \
         {expected:?}; evaluate it with the pipeline it was trained with (--pipeline)"
    )]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("checkpoint {path}: tensor `{name}` is {found}, expected F32")]
    Dtype {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error(
        "checkpoint {path}: tensor `{name}` does not match the checksum stored with it: the file \
         is damaged. Move it aside to use the run's previous checkpoint, or start over"
    )]
    Checksum { path: PathBuf, name: String },
    #[error(
        "checkpoint {path}: tensor `{name}` holds {value} at element {index}: these weights have \
         diverged and can't be used; use an earlier checkpoint"
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error("checkpoint {path}: {message}: the file is damaged or was not written by this tool")]
    Checksums { path: PathBuf, message: String },
    #[error(
        "checkpoint {path}: its metadata (training state, pipeline, classes) does not match the \
         checksum stored with it: the file was edited or damaged. Move it aside to use the run's \
         previous checkpoint, or start over"
    )]
    Metadata { path: PathBuf },
}

/// Metadata key of the per-tensor checksums every file written here carries.
pub const CHECKSUMS_KEY: &str = "checksums";
/// Metadata key of the checksum of all the other metadata (the training state, the pipeline,
/// the classes, the tensor checksums), so that an edited field is caught as a flipped weight
/// is. Files written before it existed have none and are read without it.
pub const METADATA_CHECKSUM_KEY: &str = "metadata_checksum";

/// Named f32 tensors and string metadata: the contents of one safetensors file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Serialises to safetensors bytes, adding the per-tensor checksums, or says which tensor
    /// holds a value that must not be saved (NaN or infinite).
    ///
    /// Written here rather than by the `safetensors` crate, whose header keeps the metadata
    /// in a `HashMap`: its key order would differ between two runs that save equal states.
    /// The layout is the format's own: an 8-byte little-endian header length, the JSON header
    /// (keys sorted, padded with spaces to 8 bytes), then each tensor's bytes in name order.
    pub fn to_bytes(&self, path: &Path) -> Result<Vec<u8>, CheckpointError> {
        self.check_finite(path)?;
        let mut metadata = self.metadata.clone();
        metadata.insert(CHECKSUMS_KEY.into(), self.checksums_json());
        metadata.insert(METADATA_CHECKSUM_KEY.into(), metadata_checksum(&metadata));
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(&metadata).unwrap(),
        );
        let mut offset = 0usize;
        for (name, (shape, data)) in &self.tensors {
            let bytes = data.len() * 4;
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": "F32",
                    "shape": shape,
                    "data_offsets": [offset, offset + bytes],
                }),
            );
            offset += bytes;
        }
        let mut json = serde_json::to_vec(&header).expect("a JSON map serialises");
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut out = Vec::with_capacity(8 + json.len() + offset);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for (_, data) in self.tensors.values() {
            out.extend_from_slice(f32_bytes(data));
        }
        Ok(out)
    }

    /// Writes atomically: a crash leaves the old file or the new one, never half of one.
    pub fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        let bytes = self.to_bytes(path)?;
        crate::files::write_atomic(path, &bytes).map_err(|source| CheckpointError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and checks a file: every tensor against its stored checksum (files written by
    /// other tools have none) and every value for being finite.
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let bytes =
            crate::files::read_regular(path, crate::files::READ_LIMIT).map_err(|source| {
                CheckpointError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let file = Self::from_bytes(&bytes, path)?;
        file.verify(path)?;
        Ok(file)
    }

    /// Parses safetensors bytes without checking values; `path` only names the file in
    /// errors. Non-f32 tensors are skipped here and reported when asked for.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        let format = |e: safetensors::SafeTensorError| CheckpointError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(format)?;
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(format)?;
        let mut out = TensorFile {
            metadata: header
                .metadata()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ..Default::default()
        };
        for (name, view) in file.tensors() {
            let data = match view.dtype() {
                StDtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                other => {
                    out.metadata
                        .insert(format!("__dtype__{name}"), format!("{other:?}"));
                    continue;
                }
            };
            out.tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(out)
    }

    /// Checks the stored checksums (when the file has them) and that every value is finite.
    pub fn verify(&self, path: &Path) -> Result<(), CheckpointError> {
        if let Some(stored) = self.metadata.get(METADATA_CHECKSUM_KEY) {
            if *stored != metadata_checksum(&self.metadata) {
                return Err(CheckpointError::Metadata {
                    path: path.to_path_buf(),
                });
            }
        }
        if let Some(stored) = self.metadata.get(CHECKSUMS_KEY) {
            let bad = |message: String| CheckpointError::Checksums {
                path: path.to_path_buf(),
                message,
            };
            let stored: BTreeMap<String, String> = serde_json::from_str(stored).map_err(|e| {
                bad(format!(
                    "its `{CHECKSUMS_KEY}` metadata is unreadable ({e})"
                ))
            })?;
            for (name, (_, data)) in &self.tensors {
                let expected = stored
                    .get(name)
                    .ok_or_else(|| bad(format!("tensor `{name}` has no checksum")))?;
                if *expected != tensor_checksum(data) {
                    return Err(CheckpointError::Checksum {
                        path: path.to_path_buf(),
                        name: name.clone(),
                    });
                }
            }
            if let Some(name) = stored.keys().find(|n| !self.tensors.contains_key(*n)) {
                return Err(bad(format!("tensor `{name}` is listed but missing")));
            }
        }
        self.check_finite(path)
    }

    fn check_finite(&self, path: &Path) -> Result<(), CheckpointError> {
        for (name, (_, data)) in &self.tensors {
            if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(CheckpointError::NonFinite {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    index,
                    value,
                });
            }
        }
        Ok(())
    }

    fn checksums_json(&self) -> String {
        let sums: BTreeMap<&str, String> = self
            .tensors
            .iter()
            .map(|(name, (_, data))| (name.as_str(), tensor_checksum(data)))
            .collect();
        serde_json::to_string(&sums).expect("strings serialise")
    }

    /// The tensor `name` with the given shape, or an error naming what is wrong.
    pub fn get(&self, path: &Path, name: &str, shape: &[usize]) -> Result<&[f32], CheckpointError> {
        if let Some(dtype) = self.metadata.get(&format!("__dtype__{name}")) {
            return Err(CheckpointError::Dtype {
                path: path.to_path_buf(),
                name: name.into(),
                found: dtype.clone(),
            });
        }
        let (found, data) = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::Missing {
                path: path.to_path_buf(),
                name: name.into(),
                found: self.tensors.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        if found != shape {
            return Err(CheckpointError::Shape {
                path: path.to_path_buf(),
                name: name.into(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        Ok(data)
    }
}

/// xxh3-64 of a tensor's little-endian bytes, as 16 hex digits.
/// The checksum of `metadata` without its own key and without the non-f32 dtype notes
/// `from_bytes` adds: xxh3 of the entries as one JSON object, keys sorted.
fn metadata_checksum(metadata: &BTreeMap<String, String>) -> String {
    let covered: BTreeMap<&String, &String> = metadata
        .iter()
        .filter(|(k, _)| *k != METADATA_CHECKSUM_KEY && !k.starts_with("__dtype__"))
        .collect();
    let json = serde_json::to_vec(&covered).expect("strings serialise");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json))
}

fn tensor_checksum(data: &[f32]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(f32_bytes(data)))
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; the result borrows `v`. Stored
    // little-endian, as safetensors requires, on every platform this builds for.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// PyTorch's shape of a layer's weight.
pub fn torch_shape(layout: TorchLayout, inputs: usize, outputs: usize) -> Vec<usize> {
    match layout {
        TorchLayout::Conv {
            kernel,
            in_channels,
        } => vec![outputs, in_channels, kernel, kernel],
        TorchLayout::Linear | TorchLayout::LinearAfterFlatten { .. } => vec![outputs, inputs],
    }
}

/// Where row `input` of our `(inputs, outputs)` weight sits among PyTorch's input columns.
fn torch_column(layout: TorchLayout, input: usize) -> usize {
    match layout {
        // ours: (ky, kx, c); PyTorch: (c, ky, kx)
        TorchLayout::Conv {
            kernel,
            in_channels,
        } => {
            let (offset, c) = (input / in_channels, input % in_channels);
            c * kernel * kernel + offset
        }
        TorchLayout::Linear => input,
        // ours: (pixel, c); PyTorch: (c, pixel)
        TorchLayout::LinearAfterFlatten { pixels, channels } => {
            let (pixel, c) = (input / channels, input % channels);
            c * pixels + pixel
        }
    }
}

/// Our `(inputs, outputs)` weight, row-major → PyTorch's layout, row-major.
pub fn to_torch(layout: TorchLayout, ours: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
    let mut torch = vec![0.0; ours.len()];
    for i in 0..inputs {
        let column = torch_column(layout, i);
        for o in 0..outputs {
            torch[o * inputs + column] = ours[i * outputs + o];
        }
    }
    torch
}

/// PyTorch's layout → our `(inputs, outputs)` weight.
pub fn from_torch(layout: TorchLayout, torch: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
    let mut ours = vec![0.0; torch.len()];
    for i in 0..inputs {
        let column = torch_column(layout, i);
        for o in 0..outputs {
            ours[i * outputs + o] = torch[o * inputs + column];
        }
    }
    ours
}

/// Adds eight layers (model weights, or their momentum) under `prefix` + PyTorch's names.
pub fn export_layers<D: Device<f32>>(
    file: &mut TensorFile,
    prefix: &str,
    layers: [&Affine<f32, D>; 8],
    layouts: [TorchLayout; 8],
) {
    for ((name, layer), layout) in TORCH_NAMES.iter().zip(layers).zip(layouts) {
        let (inputs, outputs) = *layer.weight.shape();
        let weight = to_torch(layout, &layer.weight.as_vec(), inputs, outputs);
        file.tensors.insert(
            format!("{prefix}{name}.weight"),
            (torch_shape(layout, inputs, outputs), weight),
        );
        file.tensors.insert(
            format!("{prefix}{name}.bias"),
            (vec![outputs], layer.bias.as_vec()),
        );
    }
}

/// Reads eight layers under `prefix`, checking every name and shape against `spec`.
pub fn import_layers<D: Device<f32>>(
    file: &TensorFile,
    path: &Path,
    prefix: &str,
    spec: &Spec,
    dev: &D,
) -> Result<[Affine<f32, D>; 8], CheckpointError> {
    let shapes = super::AlexNet::<f32, D>::affine_shapes(spec);
    let layouts = super::torch_layouts(spec);
    let mut layers = Vec::with_capacity(8);
    for ((name, (inputs, outputs)), layout) in TORCH_NAMES.iter().zip(shapes).zip(layouts) {
        let weight_name = format!("{prefix}{name}.weight");
        let torch = file.get(path, &weight_name, &torch_shape(layout, inputs, outputs))?;
        let weight = from_torch(layout, torch, inputs, outputs);
        let bias = file.get(path, &format!("{prefix}{name}.bias"), &[outputs])?;
        layers.push(Affine {
            weight: dev.tensor_from_vec(weight, (inputs, outputs)),
            bias: dev.tensor_from_vec(bias.to_vec(), (outputs,)),
        });
    }
    Ok(layers
        .try_into()
        .unwrap_or_else(|_| unreachable!("eight layers")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_layout_matches_pytorch_indexing() {
        // 2 outputs, 3 input channels, 2×2 kernel; ours row = (ky·2 + kx)·3 + c.
        let (k, cin, cout) = (2, 3, 2);
        let inputs = k * k * cin;
        let ours: Vec<f32> = (0..inputs * cout).map(|v| v as f32).collect();
        let layout = TorchLayout::Conv {
            kernel: k,
            in_channels: cin,
        };
        let torch = to_torch(layout, &ours, inputs, cout);
        for o in 0..cout {
            for c in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        let t = torch[((o * cin + c) * k + ky) * k + kx];
                        let row = (ky * k + kx) * cin + c;
                        assert_eq!(t, ours[row * cout + o]);
                    }
                }
            }
        }
        assert_eq!(from_torch(layout, &torch, inputs, cout), ours);
    }

    #[test]
    fn flattened_linear_uses_channel_major_columns() {
        // 4 pixels × 3 channels → 2 outputs. PyTorch column c·4 + p is our row p·3 + c.
        let layout = TorchLayout::LinearAfterFlatten {
            pixels: 4,
            channels: 3,
        };
        let ours: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let torch = to_torch(layout, &ours, 12, 2);
        for o in 0..2 {
            for c in 0..3 {
                for p in 0..4 {
                    assert_eq!(torch[o * 12 + c * 4 + p], ours[(p * 3 + c) * 2 + o]);
                }
            }
        }
        assert_eq!(from_torch(layout, &torch, 12, 2), ours);
    }

    #[test]
    fn tensor_file_round_trips_and_reports_problems() {
        let mut file = TensorFile::default();
        file.tensors.insert(
            "a.weight".into(),
            (vec![2, 3], (0..6).map(|v| v as f32).collect()),
        );
        file.metadata.insert("state".into(), "{}".into());
        let path = Path::new("x.safetensors");
        let back = TensorFile::from_bytes(&file.to_bytes(path).unwrap(), path).unwrap();
        back.verify(path).unwrap();
        assert!(back.metadata.contains_key(CHECKSUMS_KEY));
        let mut without = back.clone();
        without.metadata.remove(CHECKSUMS_KEY);
        without.metadata.remove(METADATA_CHECKSUM_KEY);
        assert_eq!(without, file);
        // An edited metadata field fails; a file from before metadata checksums passes.
        let mut edited = back.clone();
        edited
            .metadata
            .insert("state".into(), "{\"step\":1}".into());
        let err = edited.verify(path).unwrap_err().to_string();
        assert!(err.contains("metadata") && err.contains("edited"), "{err}");
        edited.metadata.remove(METADATA_CHECKSUM_KEY);
        edited.verify(path).unwrap();
        assert_eq!(back.get(path, "a.weight", &[2, 3]).unwrap()[5], 5.0);
        let err = back.get(path, "a.weight", &[3, 2]).unwrap_err().to_string();
        assert!(err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
        let err = back.get(path, "b.bias", &[2]).unwrap_err().to_string();
        assert!(err.contains("b.bias") && err.contains("a.weight"), "{err}");
        let err = TensorFile::from_bytes(b"not a checkpoint", path).unwrap_err();
        assert!(err.to_string().contains("x.safetensors"), "{err}");
    }

    fn two_tensor_file() -> TensorFile {
        let mut file = TensorFile::default();
        file.tensors.insert(
            "features.0.weight".into(),
            (vec![4], vec![0.5, -1.0, 2.0, 0.25]),
        );
        file.tensors
            .insert("features.0.bias".into(), (vec![1], vec![0.0]));
        file.metadata.insert("state".into(), "{\"step\":3}".into());
        file.metadata
            .insert("pipeline".into(), "name = \"x\"".into());
        file
    }

    #[test]
    fn equal_contents_give_identical_bytes_that_the_safetensors_crate_reads() {
        let path = Path::new("x.safetensors");
        let a = two_tensor_file().to_bytes(path).unwrap();
        let mut reordered = TensorFile::default();
        for (k, v) in two_tensor_file().metadata.into_iter().rev() {
            reordered.metadata.insert(k, v);
        }
        reordered.tensors = two_tensor_file().tensors;
        assert_eq!(a, reordered.to_bytes(path).unwrap());
        let parsed = safetensors::SafeTensors::deserialize(&a).unwrap();
        let view = parsed.tensor("features.0.weight").unwrap();
        assert_eq!(view.shape(), [4]);
        assert_eq!(&view.data()[4..8], &(-1.0f32).to_le_bytes());
        let header_len = u64::from_le_bytes(a[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0, "header padded to 8 bytes");
    }

    #[test]
    fn a_flipped_exponent_byte_fails_the_checksum() {
        let path = Path::new("ckpt.safetensors");
        let mut bytes = two_tensor_file().to_bytes(path).unwrap();
        // The last byte of the file is the high byte (sign and exponent) of the last value.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let file = TensorFile::from_bytes(&bytes, path).unwrap();
        let err = file.verify(path).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Checksum { name, .. } if name == "features.0.weight"),
            "{err}"
        );
        assert!(err.to_string().contains("ckpt.safetensors"), "{err}");
    }

    #[test]
    fn non_finite_values_are_refused_on_save_and_on_load() {
        let path = Path::new("nan.safetensors");
        let mut file = two_tensor_file();
        file.tensors.get_mut("features.0.bias").unwrap().1[0] = f32::NAN;
        let err = file.to_bytes(path).unwrap_err();
        assert!(
            matches!(err, CheckpointError::NonFinite { index: 0, .. }),
            "{err}"
        );
        // A foreign file (no checksums) holding infinity is refused on load too.
        let mut foreign = file.clone();
        foreign.tensors.get_mut("features.0.bias").unwrap().1[0] = f32::INFINITY;
        let err = foreign.verify(path).unwrap_err().to_string();
        assert!(
            err.contains("features.0.bias") && err.contains("inf"),
            "{err}"
        );
    }
}
