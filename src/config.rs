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

/// More worker threads than this is a mistake, not a setting (each costs a stack and a
/// The widest LRN window the GPU kernels keep in registers (`LRN_RING` − 1 in `kernels.cu`).
pub const MAX_LRN_SIZE: usize = 15;

/// The largest batch any command takes: 65,536 crops of 224² are 9.9 GB as bytes alone, more
/// than an AlexNet step fits on any device; a larger value is a typo, refused before anything
/// is allocated.
pub const MAX_BATCH: usize = 65_536;

/// share of memory bandwidth, and creating many can exhaust the process's thread limit).
pub const MAX_THREADS: usize = 1024;

/// A whole pipeline. Stages read their own section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pipeline {
    /// Short name, used in reports.
    pub name: String,
    pub preprocess: PreprocessConfig,
    pub loader: LoaderConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub compute: ComputeConfig,
}

/// How the network's arithmetic runs. No setting changes what is trained, so each may change
/// when a run is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// `fast`: the convolutional part on the project's own kernels (cuDNN and fused kernels
    /// on CUDA, plain loops on the CPU); `dfdx`: every layer on dfdx's ops, the reference the
    /// fast path is tested against; `auto`: fast on either device, the faster one on both.
    pub engine: Engine,
    /// Arithmetic of the fast path: `tf32` lets cuDNN and cuBLAS use TF32 tensor cores on
    /// CUDA (as PyTorch does by default), `strict` keeps full fp32, `bf16` keeps the
    /// convolutional part's activations and gradients in bfloat16 and feeds the convolutions
    /// and matrix products bf16 (fp32 accumulation, master weights, momentum, LRN, softmax and
    /// loss; PyTorch's autocast). On the CPU `tf32` computes as `strict`, and `bf16` is
    /// emulated: the host kernels round what a GPU would store in bf16.
    pub precision: Precision,
    /// How cuDNN's convolution algorithms are chosen on the fast path: `heuristic` (by
    /// shape alone, so a resumed run repeats an uninterrupted one bit for bit) or `measure`
    /// (each candidate timed once at start, like PyTorch's `cudnn.benchmark`; can be faster,
    /// but two processes may choose differently).
    pub algorithms: Algorithms,
    /// How the fast path lays out activations in memory: `nchw` (channels first, each
    /// channel a plane) or `nhwc` (channels last, each pixel's channels together: what cuDNN's
    /// tensor-core convolutions read, so none of its layout conversions run). Filters,
    /// checkpoints and results are the same in both.
    pub layout: Layout,
    /// `on`: the fast path records each training step's forward and backward passes once as
    /// CUDA graphs and replays them (one launch each instead of some seventy, no gaps between
    /// them); `off`: every kernel is launched every step. Results are the same bit for bit.
    /// On the CPU, `on` checks instead that every replay would launch what was recorded.
    pub graphs: Graphs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Graphs {
    Off,
    On,
}

impl Graphs {
    pub fn is_on(self) -> bool {
        self == Graphs::On
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Algorithms {
    Heuristic,
    Measure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Auto,
    Fast,
    Dfdx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Tf32,
    Strict,
    Bf16,
}

impl Precision {
    /// Whether activations (and their gradients) of the convolutional part are bf16.
    pub fn bf16_activations(self) -> bool {
        self == Precision::Bf16
    }

    /// Bytes per stored activation value.
    pub fn activation_bytes(self) -> usize {
        if self.bf16_activations() {
            2
        } else {
            4
        }
    }
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            engine: Engine::Auto,
            precision: Precision::Tf32,
            algorithms: Algorithms::Heuristic,
            layout: Layout::Nchw,
            graphs: Graphs::Off,
        }
    }
}

impl Engine {
    /// Whether the fast path runs. Besides CUDA's kernels, its host kernels also beat
    /// dfdx's gather-convolutions on the CPU (1.66× on the sample network, 2 cores), and they
    /// are checked against the dfdx path (`check`, tests/fast_path.rs), so `auto` takes
    /// them there too.
    pub fn is_fast(self) -> bool {
        match self {
            Engine::Auto | Engine::Fast => true,
            Engine::Dfdx => false,
        }
    }
}

/// The network's widths and the paper's layer settings (see `model`). The layer structure is
/// fixed; the number of classes comes from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Output channels of conv1..conv5 (96, 256, 384, 384, 256 in the paper).
    #[serde(deserialize_with = "five_widths")]
    pub conv_channels: [usize; 5],
    /// Units of FC6 and FC7 (4096).
    pub fc_units: usize,
    /// Dropout probability before FC6 and FC7 (0.5); 0 turns it off.
    pub dropout: f32,
    /// Local response normalisation after conv1 and conv2, the paper's formula
    /// b = a / (k + α Σ a²)^β over `lrn_size` neighbouring channels.
    pub lrn: bool,
    pub lrn_size: usize,
    pub lrn_k: f32,
    pub lrn_alpha: f32,
    pub lrn_beta: f32,
    /// Weights are drawn from N(0, init_std²) (0.01).
    pub init_std: f32,
    /// Initial bias of conv2, conv4, conv5, FC6 and FC7 (1 in the paper; Caffe's
    /// reproduction used 0.1); the other biases start at 0.
    pub init_bias: f32,
}

/// The optimiser and its schedule (see `train`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training set (90 in the paper).
    pub epochs: u64,
    /// Initial learning rate of SGD (0.01).
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// The learning rate is multiplied by `lr_decay` after `lr_patience` epochs without a new
    /// best validation top-1 error ("divided by 10 when the validation error stops improving").
    pub lr_decay: f64,
    pub lr_patience: u64,
    /// The learning rate is never lowered below this.
    pub min_learning_rate: f64,
    /// Linear warm-up (Goyal et al. 2017): over the first `lr_warmup_epochs` epochs (a
    /// fraction allowed) the rate rises step by step from a small fraction of
    /// `learning_rate` to all of it. 0, the paper's recipe, starts at full rate.
    pub lr_warmup_epochs: f64,
    /// Seed of the weight initialisation and of the dropout masks.
    pub seed: u64,
    /// Also save a checkpoint every this many steps within an epoch (0: only at epoch ends).
    pub checkpoint_every: u64,
    /// Checkpoints kept in `RUN/checkpoints/` (the newest ones).
    pub keep_checkpoints: usize,
    /// Training stops as diverged when its mean loss over the last 256 images exceeds this
    /// (or when the loss is not a number); 0 means ten times ln(classes), the loss of a
    /// uniform guess.
    pub max_loss: f64,
}

/// Exactly five widths: a fixed-size array would silently drop a sixth.
fn five_widths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[usize; 5], D::Error> {
    let widths = Vec::<usize>::deserialize(d)?;
    widths.try_into().map_err(|w: Vec<usize>| {
        serde::de::Error::custom(format!(
            "needs 5 widths (conv1 to conv5), got {}: {w:?}",
            w.len()
        ))
    })
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            conv_channels: [96, 256, 384, 384, 256],
            fc_units: 4096,
            dropout: 0.5,
            lrn: true,
            lrn_size: 5,
            lrn_k: 2.0,
            lrn_alpha: 1e-4,
            lrn_beta: 0.75,
            init_std: 0.01,
            init_bias: 1.0,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 90,
            learning_rate: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            lr_decay: 0.1,
            lr_patience: 3,
            min_learning_rate: 1e-5,
            lr_warmup_epochs: 0.0,
            seed: 0,
            // ~25 minutes of a fast GPU; an ImageNet epoch is 10,009 steps of 128.
            checkpoint_every: 2000,
            keep_checkpoints: 3,
            max_loss: 0.0,
        }
    }
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
    /// Decode baseline JPEGs whose shorter side is at least 4× `image_size` at 1/2 or 1/4
    /// scale in the DCT domain (keeping at least 2× `image_size`): faster on large photos,
    /// within a fraction of a level of a full decode. ImageNet-sized photos are never shrunk.
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
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            compute: ComputeConfig::default(),
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

/// A setting's value as TOML writes it (`missing` when absent).
fn show(value: Option<&toml::Value>) -> String {
    value.map_or_else(|| "missing".into(), |v| v.to_string())
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // A pipeline is a page of TOML: a megabyte is plenty.
        let text =
            crate::files::read_regular_text(path, 1 << 20).map_err(|source| ConfigError::Read {
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

    /// The settings of `keys` (whole sections like `"model"`, or single keys like
    /// `"loader.crop_size"`) in which `other` differs from `self`, each as
    /// `"model.lrn = true and false"` (this pipeline's value first).
    pub fn differences(&self, other: &Pipeline, keys: &[&str]) -> Vec<String> {
        let table = |p: &Pipeline| toml::Value::try_from(p).expect("pipeline config serialises");
        let (a, b) = (table(self), table(other));
        let lookup = |v: &toml::Value, key: &str| -> Option<toml::Value> {
            key.split('.').try_fold(v, |v, k| v.get(k)).cloned()
        };
        let mut out = Vec::new();
        for key in keys {
            let (x, y) = (lookup(&a, key), lookup(&b, key));
            match (&x, &y) {
                (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                    let names: std::collections::BTreeSet<&String> =
                        x.keys().chain(y.keys()).collect();
                    for name in names {
                        if x.get(name) != y.get(name) {
                            out.push(format!(
                                "{key}.{name} = {} and {}",
                                show(x.get(name)),
                                show(y.get(name))
                            ));
                        }
                    }
                }
                _ if x != y => out.push(format!(
                    "{key} = {} and {}",
                    show(x.as_ref()),
                    show(y.as_ref())
                )),
                _ => {}
            }
        }
        out
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
        if l.batch_size > MAX_BATCH {
            return Err(format!(
                "loader.batch_size = {} is more than {MAX_BATCH}",
                l.batch_size
            ));
        }
        if l.threads > MAX_THREADS {
            return Err(format!(
                "loader.threads = {} is more than {MAX_THREADS}; 0 means one per core",
                l.threads
            ));
        }
        if !(l.lighting_std >= 0.0 && l.lighting_std.is_finite()) {
            return Err(format!(
                "loader.lighting_std = {} must be a finite number >= 0",
                l.lighting_std
            ));
        }
        let m = &self.model;
        if m.conv_channels.contains(&0) || m.fc_units == 0 {
            return Err("model.conv_channels and model.fc_units must be positive".into());
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return Err(format!("model.dropout = {} is outside 0..1", m.dropout));
        }
        if m.lrn && (m.lrn_size == 0 || m.lrn_size.is_multiple_of(2)) {
            return Err(format!(
                "model.lrn_size = {} must be odd (a window centred on each channel)",
                m.lrn_size
            ));
        }
        if m.lrn && m.lrn_size > MAX_LRN_SIZE {
            return Err(format!(
                "model.lrn_size = {} is wider than the GPU kernels' {MAX_LRN_SIZE} channels \
                 (the paper's is 5)",
                m.lrn_size
            ));
        }
        if !(m.init_std > 0.0 && m.init_std.is_finite()) {
            return Err(format!("model.init_std = {} must be positive", m.init_std));
        }
        let t = &self.train;
        if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
            return Err(format!(
                "train.learning_rate = {} must be positive",
                t.learning_rate
            ));
        }
        if !(t.lr_warmup_epochs >= 0.0 && t.lr_warmup_epochs.is_finite()) {
            return Err(format!(
                "train.lr_warmup_epochs = {} must be a finite number >= 0",
                t.lr_warmup_epochs
            ));
        }
        if !(0.0..1.0).contains(&t.momentum) || !(0.0..1.0).contains(&t.lr_decay) {
            return Err("train.momentum and train.lr_decay must be in 0..1".into());
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return Err(format!(
                "train.weight_decay = {} must be >= 0",
                t.weight_decay
            ));
        }
        if t.keep_checkpoints == 0 {
            return Err("train.keep_checkpoints must be at least 1".into());
        }
        if t.epochs == 0 {
            return Err("train.epochs must be at least 1".into());
        }
        if !(t.max_loss >= 0.0 && t.max_loss.is_finite()) {
            return Err(format!("train.max_loss = {} must be >= 0", t.max_loss));
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
    fn six_conv_widths_are_an_error_not_cut_to_five() {
        let err = parse("[model]\nconv_channels = [1, 2, 3, 4, 5, 6]\n").unwrap_err();
        let chain = format!("{err:?}");
        assert!(
            chain.contains("needs 5 widths") && chain.contains("got 6"),
            "{chain}"
        );
        assert!(parse("[model]\nconv_channels = [1, 2, 3, 4]\n").is_err());
        let p = parse("[model]\nconv_channels = [1, 2, 3, 4, 5]\n").unwrap();
        assert_eq!(p.model.conv_channels, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn zero_epochs_and_absurd_thread_counts_are_refused() {
        let err = parse("[train]\nepochs = 0\n").unwrap_err();
        assert!(err.to_string().contains("train.epochs"), "{err}");
        let err = parse("[loader]\nthreads = 100000\n").unwrap_err();
        assert!(err.to_string().contains("loader.threads"), "{err}");
        let err = parse("[loader]\nbatch_size = 1000000\n").unwrap_err();
        assert!(err.to_string().contains("loader.batch_size"), "{err}");
    }

    #[test]
    fn lrn_windows_are_odd_and_no_wider_than_the_gpu_kernels_keep() {
        let err = parse("[model]\nlrn_size = 4\n").unwrap_err();
        assert!(err.to_string().contains("must be odd"), "{err}");
        let err = parse(&format!("[model]\nlrn_size = {}\n", MAX_LRN_SIZE + 2)).unwrap_err();
        assert!(err.to_string().contains("model.lrn_size"), "{err}");
        let p = parse(&format!("[model]\nlrn_size = {MAX_LRN_SIZE}\n")).unwrap();
        assert_eq!(p.model.lrn_size, MAX_LRN_SIZE);
        // Without LRN the size is not used.
        assert!(parse("[model]\nlrn = false\nlrn_size = 99\n").is_ok());
    }

    #[test]
    fn warm_up_defaults_to_none_and_must_be_a_length() {
        assert_eq!(parse("").unwrap().train.lr_warmup_epochs, 0.0);
        let p = parse("[train]\nlr_warmup_epochs = 0.5\n").unwrap();
        assert_eq!(p.train.lr_warmup_epochs, 0.5);
        assert!(p.to_toml().contains("lr_warmup_epochs = 0.5"));
        for bad in ["-1", "nan", "inf"] {
            let err = parse(&format!("[train]\nlr_warmup_epochs = {bad}\n")).unwrap_err();
            assert!(err.to_string().contains("train.lr_warmup_epochs"), "{err}");
        }
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
