//! ImageNet preprocessing, AlexNet training and evaluation.
//!
//! Modules are stacked in layers (ARCHITECTURE.md); each imports only from layers below it,
//! which `tests/layers.rs` checks. `main.rs` only parses arguments and dispatches.

// Ground floor: settings, randomness, progress, files.
pub mod canvas;
pub mod config;
pub mod dist;
pub mod files;
pub mod lock;
pub mod pixels;
pub mod progress;
pub mod seed;

// Devices and the kernels that run on them.
pub mod device;
pub mod kernels;

// Data: the shard format and the loader that reads it.
pub mod loader;
pub mod shards;

// The network.
pub mod model;

// One training or evaluation step, shared by every command that runs the network.
pub mod engine;

// A run directory: saved state, logs.
pub mod run;

// Commands.
pub mod bench;
pub mod check;
pub mod eval;
pub mod export;
pub mod preprocess;
pub mod sample;
pub mod train;

// The command line.
pub mod cli;
