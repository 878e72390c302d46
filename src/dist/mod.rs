//! Data-parallel training across processes — one per GPU, or several on the CPU — launched
//! the way PyTorch's are: `torchrun --no-python alexnet train …`, or `srun alexnet train …`.
//!
//! Each process (a *rank*) takes its slice of every global batch (the loader cuts them), runs
//! the step on it, and sums the gradients with the other ranks before the update, so that
//! every rank holds the same weights and the run follows what one process with the whole
//! batch would do. Two planes carry what the ranks share:
//!
//! - the control plane (`Control`): TCP between rank 0 and every other rank, opened at the
//!   rendezvous. It carries each step's counts (loss, accuracy, the stop flag), validation
//!   counts, weight checksums, and the news that a rank failed — the same code on every
//!   device, so the CPU tests exercise all of it;
//! - the gradients: NCCL's all-reduce on the GPU, overlapped with the backward pass; on the
//!   CPU the control plane's sum, in rank order.

pub mod control;
pub mod env;
pub mod watchdog;
mod wire;

use std::time::Duration;

pub use control::Control;
pub use env::{Launch, Launcher};

/// Where this process stands in a data-parallel job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// The rank's index on its machine (which GPU it uses).
    pub local_rank: usize,
}

impl World {
    /// A job of one process.
    pub const ALONE: World = World {
        rank: 0,
        size: 1,
        local_rank: 0,
    };

    /// Rank 0 writes the logs and checkpoints and speaks for the job.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// The rows `first..end` of a global batch of `rows` that this rank takes: contiguous,
    /// in rank order, sizes differing by at most one.
    pub fn slice(&self, rows: usize) -> std::ops::Range<usize> {
        rows * self.rank / self.size..rows * (self.rank + 1) / self.size
    }
}

/// Why a data-parallel job could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("{0}")]
    Launch(String),
    #[error(
        "rank 0 cannot listen on port {port} for the other ranks: {source}; free the port or \
         choose another (MASTER_PORT, or ALEXNET_RENDEZVOUS_PORT), and check that only one \
         process was started as rank 0 (RANK or SLURM_PROCID)"
    )]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "rank {rank} could not reach rank 0 at {address} within {}: {last}; rank 0 must run on \
         MASTER_ADDR and have started (is it running, and is the port open between the \
         machines?)",
        seconds(*.waited)
    )]
    Unreachable {
        rank: usize,
        address: String,
        waited: Duration,
        last: String,
    },
    #[error(
        "rank(s) {} of {size} did not arrive at {address} within {}; check that every rank was \
         started with the same WORLD_SIZE and MASTER_ADDR:MASTER_PORT",
        list(.missing), seconds(*.waited)
    )]
    Missing {
        missing: Vec<usize>,
        size: usize,
        address: String,
        waited: Duration,
    },
    #[error("the ranks were not started alike: {0}")]
    Mismatch(String),
    #[error("lost rank {rank} while {what}: {reason}; the other ranks stop too")]
    Lost {
        rank: usize,
        what: &'static str,
        reason: String,
    },
    #[error(
        "rank {rank} did not answer within {} while {what} (hung, or the network is down); the \
         other ranks stop too (the timeout is ALEXNET_DIST_TIMEOUT, in seconds)",
        seconds(*.waited)
    )]
    Timeout {
        rank: usize,
        what: &'static str,
        waited: Duration,
    },
    #[error("rank {rank} stopped: {reason}")]
    Aborted { rank: usize, reason: String },
    #[error("{0}")]
    Collective(String),
}

fn seconds(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

fn list(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
