//! Where preprocessing time goes (`alexnet preprocess --profile`): time per stage summed over
//! the workers, decoding split by kind of file, and how busy the cores were.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::decode::Decoded;

/// Kinds of input whose decoding costs differ most.
const KINDS: [&str; 4] = [
    "baseline JPEG",
    "progressive JPEG",
    "shrunk on load",
    "other",
];

/// Totals collected by the workers and the writer (cheap enough to collect on every run).
pub struct Profile {
    started: Instant,
    read_ns: AtomicU64,
    resize_ns: AtomicU64,
    write_ns: AtomicU64,
    decode_ns: [AtomicU64; KINDS.len()],
    images: [AtomicU64; KINDS.len()],
}

impl Default for Profile {
    fn default() -> Self {
        Self::new()
    }
}

impl Profile {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            read_ns: AtomicU64::new(0),
            resize_ns: AtomicU64::new(0),
            write_ns: AtomicU64::new(0),
            decode_ns: Default::default(),
            images: Default::default(),
        }
    }

    /// One stored image: reading its file, decoding it, resizing it.
    pub fn add_image(&self, decoded: &Decoded, read: Duration, decode: Duration, resize: Duration) {
        let kind = match (decoded.format, decoded.eighths, decoded.progressive) {
            ("jpg", e, _) if e < 8 => 2,
            ("jpg", _, true) => 1,
            ("jpg", _, false) => 0,
            _ => 3,
        };
        add(&self.read_ns, read);
        add(&self.decode_ns[kind], decode);
        add(&self.resize_ns, resize);
        self.images[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// The writer's time for one input (checksum, mean, writing the record).
    pub fn add_write(&self, write: Duration) {
        add(&self.write_ns, write);
    }

    /// The report: one indented line per stage.
    pub fn report(&self, jobs: usize) -> String {
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
        let images: u64 = self.images.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        let decode: f64 = self.decode_ns.iter().map(secs).sum();
        let stages = [
            ("read files", secs(&self.read_ns)),
            ("decode", decode),
            ("resize + crop", secs(&self.resize_ns)),
            ("write (checksum, mean, file)", secs(&self.write_ns)),
        ];
        let total: f64 = stages.iter().map(|s| s.1).sum::<f64>().max(1e-9);
        let mut out = format!("profile: {images} images stored\n");
        for (name, s) in stages {
            out.push_str(&format!(
                "  {name:<30} {s:>8.2} s {:>5.1}%  {:>7.2} ms/image\n",
                100.0 * s / total,
                1e3 * s / images.max(1) as f64
            ));
            if name == "decode" {
                for (k, kind) in KINDS.iter().enumerate() {
                    let n = self.images[k].load(Ordering::Relaxed);
                    if n > 0 {
                        let s = secs(&self.decode_ns[k]);
                        out.push_str(&format!(
                            "    {kind:<28} {s:>8.2} s {:>5.1}%  {:>7.2} ms/image ({n} images)\n",
                            100.0 * s / total,
                            1e3 * s / n as f64
                        ));
                    }
                }
            }
        }
        let wall = self.started.elapsed().as_secs_f64();
        if let Some(cpu) = process_cpu_seconds() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            out.push_str(&format!(
                "  {:<30} {wall:>8.2} s wall, {cpu:.2} s CPU: {:.2} of {cores} cores busy \
                 ({jobs} workers)\n",
                "whole run",
                cpu / wall.max(1e-9)
            ));
        }
        out
    }
}

fn add(total: &AtomicU64, d: Duration) {
    total.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

/// User + system CPU time of this process so far.
fn process_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes one rusage struct into the zeroed memory it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(tv(usage.ru_utime) + tv(usage.ru_stime))
    }
    #[cfg(not(unix))]
    None
}
