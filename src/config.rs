//! Pipeline configuration: one TOML file per pipeline in `pipelines/`, read by every stage.
//!
//! Every field has a default (the paper's setting), unknown keys are rejected so a typo can't
//! silently fall back to a default, and the resolved configuration is what gets saved next to
//! each stage's outputs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid pipeline file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid pipeline file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A whole pipeline. Stages read their own section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pipeline {
    /// Short name, used in reports.
    pub name: String,
    pub preprocess: PreprocessConfig,
    pub loader: LoaderConfig,
}

/// How stored images become training batches (see `loader`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Side of the square crops fed to the network (224 from 256 in the paper).
    pub crop_size: u32,
    /// Images per batch.
    pub batch_size: usize,
    /// Threads that assemble batches; 0 means one per core.
    pub threads: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Seed of the epoch permutations and of every random crop, flip and lighting draw.
    pub seed: u64,
    /// Randomly mirror training crops left-right (p = 0.5).
    pub flip: bool,
    /// What is subtracted from f32 batches: the mean image (the paper) or per-channel mean/std.
    pub normalize: Normalize,
    /// Standard deviation of the paper's PCA lighting noise (0.1); 0 turns it off.
    pub lighting_std: f32,
    /// Drop an epoch's last, incomplete training batch.
    pub drop_last: bool,
}

/// Normalisation of f32 batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Subtract the training-set mean image (0..255 scale), as in the paper.
    MeanImage,
    /// Subtract the per-channel mean and divide by the per-channel std (torchvision style).
    Channel,
}

/// How source images become stored records (see `preprocess`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Side of the stored square images: shorter side resized to this, then centre-cropped.
    pub image_size: u32,
    /// Source images per shard file (a shard holds fewer when some of its inputs are rejected).
    pub shard_images: u32,
    /// Images larger than this many pixels are rejected before decoding (decompression bombs).
    pub max_pixels: u64,
    /// Files larger than this many bytes are rejected without being read.
    pub max_file_bytes: u64,
    /// Decode JPEGs whose shorter side is at least 8× `image_size` at 1/2 or 1/4 scale in the
    /// DCT domain (keeping at least 4× `image_size`): faster on large photos, within a fraction
    /// of a level of a full decode. ImageNet-sized photos are never shrunk.
    pub jpeg_shrink_on_load: bool,
    /// Stop with an error when more than this fraction of a split's inputs are rejected
    /// (after at least 100 inputs): that points at a systemic problem, not at bad files.
    pub max_reject_fraction: f64,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            name: "alexnet".to_string(),
            preprocess: PreprocessConfig::default(),
            loader: LoaderConfig::default(),
        }
    }
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            image_size: 256,
            // 1024 × 192 KiB ≈ 192 MiB per shard: few enough files for 1.28M images, small
            // enough that a crash loses little work.
            shard_images: 1024,
            // Pillow refuses images over 2 × 89.5 MP; real photos stay far below.
            max_pixels: 178_956_970,
            max_file_bytes: 256 << 20,
            jpeg_shrink_on_load: true,
            max_reject_fraction: 0.5,
        }
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            crop_size: 224,
            batch_size: 128,
            threads: 0,
            prefetch: 4,
            seed: 0,
            flip: true,
            normalize: Normalize::MeanImage,
            lighting_std: 0.1,
            drop_last: true,
        }
    }
}

impl LoaderConfig {
    /// The number of loader threads: `threads`, or one per core when it is 0.
    pub fn resolved_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses pipeline TOML; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let pipeline: Pipeline = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        pipeline
            .validate()
            .map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(pipeline)
    }

    /// The resolved configuration as TOML, for saving next to a stage's outputs.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("pipeline config always serialises")
    }

    fn validate(&self) -> Result<(), String> {
        let p = &self.preprocess;
        if !(8..=4096).contains(&p.image_size) {
            return Err(format!(
                "preprocess.image_size = {} is outside 8..=4096",
                p.image_size
            ));
        }
        if p.shard_images == 0 {
            return Err("preprocess.shard_images must be at least 1".into());
        }
        if p.max_pixels == 0 || p.max_file_bytes == 0 {
            return Err("preprocess.max_pixels and max_file_bytes must be positive".into());
        }
        if !(0.0..=1.0).contains(&p.max_reject_fraction) {
            return Err(format!(
                "preprocess.max_reject_fraction = {} is outside 0..=1",
                p.max_reject_fraction
            ));
        }
        let l = &self.loader;
        if l.crop_size == 0 || l.crop_size > p.image_size {
            return Err(format!(
                "loader.crop_size = {} must be between 1 and preprocess.image_size = {}",
                l.crop_size, p.image_size
            ));
        }
        if l.batch_size == 0 || l.prefetch == 0 {
            return Err("loader.batch_size and loader.prefetch must be at least 1".into());
        }
        if !(l.lighting_std >= 0.0 && l.lighting_std.is_finite()) {
            return Err(format!(
                "loader.lighting_std = {} must be a finite number >= 0",
                l.lighting_std
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline, ConfigError> {
        Pipeline::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_the_papers_settings() {
        let p = parse("").unwrap();
        assert_eq!(p, Pipeline::default());
        assert_eq!(p.preprocess.image_size, 256);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("[preprocess]\nimage_sise = 128\n").unwrap_err();
        assert!(format!("{err:#}").contains("test.toml"), "{err}");
        let chain = format!("{:?}", err);
        assert!(chain.contains("image_sise"), "{chain}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = parse("[preprocess]\nimage_size = 2\n").unwrap_err();
        assert!(err.to_string().contains("preprocess.image_size"), "{err}");
        let err = parse("[preprocess]\nshard_images = 0\n").unwrap_err();
        assert!(err.to_string().contains("shard_images"), "{err}");
        let err = parse("[loader]\ncrop_size = 300\n").unwrap_err();
        assert!(err.to_string().contains("loader.crop_size"), "{err}");
        let err = parse("[loader]\nnormalize = \"none\"\n").unwrap_err();
        assert!(format!("{err:?}").contains("none"), "{err:?}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let mut p = Pipeline::default();
        p.preprocess.image_size = 96;
        p.loader.crop_size = 80;
        p.loader.normalize = Normalize::Channel;
        let again = parse(&p.to_toml()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn shipped_pipelines_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let alexnet = Pipeline::load(&root.join("alexnet.toml")).unwrap();
        assert_eq!(alexnet, Pipeline::default());
        let sample = Pipeline::load(&root.join("sample.toml")).unwrap();
        assert!(sample.preprocess.image_size < 256);
    }
}
