//! ImageNet preprocessing, AlexNet training and evaluation.
//!
//! One module per pipeline stage; `main.rs` only parses arguments and dispatches.

pub mod canvas;
pub mod config;
pub mod eval;
pub mod export;
pub mod fast;
pub mod loader;
pub mod lock;
pub mod model;
pub mod preprocess;
pub mod progress;
pub mod sample;
pub mod seed;
pub mod shards;
pub mod train;
