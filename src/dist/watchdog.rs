//! The last line of defence against a hang. A rank that dies inside a GPU collective leaves
//! the others waiting in NCCL, where no timeout of ours reaches; the watchdog, a thread of its
//! own, ends the process when the training loop has not moved for longer than any step, save
//! or validation batch could take — so that no job waits forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ends the process unless `beat` is called at least once every `limit`.
pub struct Watchdog {
    started: Instant,
    /// Milliseconds since `started` at the last beat.
    last: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Watchdog {
    pub fn start(rank: usize, limit: Duration) -> Self {
        let started = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (seen, finished) = (last.clone(), done.clone());
        let spawned = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500).min(limit));
                if finished.load(Ordering::Relaxed) {
                    return;
                }
                let quiet = started.elapsed().as_millis() as u64 - seen.load(Ordering::Relaxed);
                if quiet > limit.as_millis() as u64 {
                    eprintln!(
                        "\nerror: rank {rank} made no progress for {:.0} s: another rank hung or \
                         died inside a collective (or the network between them is down); \
                         stopping this rank. The last checkpoint is intact; continue with \
                         --resume once every rank can run (the limit follows \
                         ALEXNET_DIST_TIMEOUT).",
                        limit.as_secs_f64()
                    );
                    std::process::exit(1);
                }
            });
        if let Err(e) = spawned {
            eprintln!("warning: no watchdog for rank {rank} (cannot start a thread: {e})");
        }
        Self {
            started,
            last,
            done,
        }
    }

    /// The training loop moved.
    pub fn beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}
