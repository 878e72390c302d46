//! Replaying a step's device work instead of launching it again. The forward pass from conv1
//! to the logits and the whole backward pass launch the same kernels on the same buffers with
//! the same shapes at every step of a batch size: what changes from step to step — the
//! input, the dropout masks, the labels, the learning rate — is written into fixed buffers by
//! launches outside those two stretches. On CUDA with `compute.graphs = "on"` each stretch is
//! recorded once as a CUDA graph and then launched as one, instead of some seventy launches
//! whose host time and gaps the GPU would wait through.
//!
//! This module is the bookkeeping, the same on every device: a stretch runs directly the first
//! time its key is seen (algorithms are chosen and scratch buffers grown then), is recorded the
//! second time and replayed from then on. A recording is stale once a scratch buffer it baked
//! in has moved (`Recorder::fingerprint`), and recorded again; a stretch whose recording
//! fails runs directly from then on, and the first reason is kept for the run's summary. The
//! device records (`Recorder`): CUDA graphs on a GPU; on the CPU the host kernels trace each
//! call with its buffers and parameters, and check that every replay launches exactly what was
//! recorded and that nothing else (an upload, a download, a per-step value) runs inside.

use std::sync::Arc;

use super::KernelResult;

/// Which stretch of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stretch {
    /// From conv1 (the normalised input and the masks written) to the logits.
    Forward,
    /// From the logits' gradient (the loss written) to every parameter's gradient.
    Backward,
}

/// What a stretch's launches depend on, besides the kernels' own scratch buffers: two calls
/// with equal keys launch the same kernels with the same parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayKey {
    pub stretch: Stretch,
    pub batch: usize,
    /// Whether the pass applies dropout masks.
    pub dropout: bool,
    /// Which allocation of the batch's activation buffers the stretch reads and writes.
    pub buffers: u64,
}

/// How a run's stretches went (shown in summaries; `None` from `Kernels::replay_stats` when
/// replaying is off).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    /// Stretches run directly: first sightings, and stretches whose recording failed.
    pub direct: u64,
    /// Recordings made (each also ran its step's work).
    pub recorded: u64,
    /// Stretches replayed from a recording.
    pub replayed: u64,
    /// Why recording first failed, when it did.
    pub refused: Option<String>,
}

impl std::fmt::Display for ReplayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} recorded, {} replayed, {} run directly",
            self.recorded, self.replayed, self.direct
        )?;
        if let Some(reason) = &self.refused {
            write!(
                f,
                "; recording failed and those stretches run directly: {reason}"
            )?;
        }
        Ok(())
    }
}

/// A stretch of device work (see `Kernels::replayable`).
pub type Work<'a, K> = &'a mut dyn FnMut(&mut K) -> KernelResult;

/// What records and replays stretches of work on a device.
pub trait Recorder: Sized {
    type Recording;
    /// Whether recording runs the work too (the host's tracing does; a CUDA graph capture
    /// only records it, so the new recording is replayed to do the step's work).
    const RECORDING_RUNS_WORK: bool;
    fn replays(&mut self) -> &mut Replays<Self::Recording>;
    /// Changes whenever a buffer the kernels use on their own — scratch space grown on
    /// demand — moves: recordings made before then read and write the old addresses.
    fn fingerprint(&self) -> u64;
    /// Starts recording the work queued until `end`.
    fn begin(&mut self) -> KernelResult;
    /// Ends what `begin` started (also after the work failed) and returns the recording.
    fn end(&mut self) -> KernelResult<Self::Recording>;
    /// Does the recorded work again. `work` is the stretch itself, for a recorder that checks
    /// it against the recording.
    fn replay(&mut self, recording: &Self::Recording, work: Work<'_, Self>) -> KernelResult;
}

/// The recordings a run keeps, by key, and what became of its stretches.
pub struct Replays<R> {
    on: bool,
    entries: Vec<Entry<R>>,
    stats: ReplayStats,
    /// Counts lookups, for evicting the least recently used entry.
    clock: u64,
}

struct Entry<R> {
    key: ReplayKey,
    state: State<R>,
    used: u64,
}

enum State<R> {
    /// Ran directly once.
    Seen,
    /// `fingerprint`: the recorder's when it was made.
    Recorded { recording: Arc<R>, fingerprint: u64 },
    /// Recording failed: runs directly.
    Refused,
}

/// What to do with a stretch.
enum Next<R> {
    Direct,
    Record,
    Replay(Arc<R>),
}

/// Keys kept at once: training's forward and backward pass, validation's forward pass and
/// evaluation's, with room to spare; an older one is recorded again if it comes back.
const KEPT: usize = 8;

impl<R> Replays<R> {
    /// `on`: whether stretches are recorded at all (`compute.graphs`).
    pub fn new(on: bool) -> Self {
        Self {
            on,
            entries: Vec::new(),
            stats: ReplayStats::default(),
            clock: 0,
        }
    }

    /// `None` when off.
    pub fn stats(&self) -> Option<ReplayStats> {
        self.on.then(|| self.stats.clone())
    }

    fn next(&mut self, key: ReplayKey, fingerprint: u64) -> Next<R> {
        self.clock += 1;
        let clock = self.clock;
        let Some(entry) = self.entries.iter_mut().find(|e| e.key == key) else {
            if self.entries.len() == KEPT {
                let oldest = (0..KEPT).min_by_key(|&i| self.entries[i].used);
                self.entries.swap_remove(oldest.unwrap_or(0));
            }
            self.entries.push(Entry {
                key,
                state: State::Seen,
                used: clock,
            });
            return Next::Direct;
        };
        entry.used = clock;
        match &entry.state {
            State::Seen => Next::Record,
            State::Recorded {
                recording,
                fingerprint: made,
            } if *made == fingerprint => Next::Replay(recording.clone()),
            State::Recorded { .. } => Next::Record,
            State::Refused => Next::Direct,
        }
    }

    fn set(&mut self, key: ReplayKey, state: State<R>) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.key == key) {
            entry.state = state;
        }
    }
}

/// Runs `work` under `key` on `k`: directly, recorded, or replayed (see the module's
/// documentation). Work that fails while being recorded runs directly, and its error is
/// returned only if it fails there too.
pub fn run<K: Recorder>(k: &mut K, key: ReplayKey, work: Work<'_, K>) -> KernelResult {
    if !k.replays().on {
        return work(k);
    }
    let fingerprint = k.fingerprint();
    match k.replays().next(key, fingerprint) {
        Next::Direct => {
            k.replays().stats.direct += 1;
            work(k)
        }
        Next::Replay(recording) => {
            k.replays().stats.replayed += 1;
            k.replay(&recording, work)
        }
        Next::Record => record(k, key, fingerprint, work),
    }
}

fn record<K: Recorder>(
    k: &mut K,
    key: ReplayKey,
    fingerprint: u64,
    work: Work<'_, K>,
) -> KernelResult {
    let recorded = k.begin().and_then(|()| {
        let worked = work(k);
        let ended = k.end();
        worked.and(ended)
    });
    match recorded {
        Ok(recording) if k.fingerprint() == fingerprint => {
            let recording = Arc::new(recording);
            let replays = k.replays();
            replays.stats.recorded += 1;
            let state = State::Recorded {
                recording: recording.clone(),
                fingerprint,
            };
            replays.set(key, state);
            if K::RECORDING_RUNS_WORK {
                Ok(())
            } else {
                k.replay(&recording, work)
            }
        }
        // A scratch buffer grew while recording: the recording is of the old one. This step
        // runs as it did the first time; the next records again.
        Ok(_) if K::RECORDING_RUNS_WORK => Ok(()),
        Ok(_) => {
            k.replays().stats.direct += 1;
            work(k)
        }
        Err(e) => {
            let replays = k.replays();
            replays.set(key, State::Refused);
            replays.stats.refused.get_or_insert_with(|| e.to_string());
            replays.stats.direct += 1;
            work(k)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::KernelError;

    /// A device whose work is a list of operations: run, they are appended to `done`;
    /// recorded (as a CUDA graph capture does), they are kept and not run.
    struct Fake {
        replays: Replays<Vec<u32>>,
        fingerprint: u64,
        capturing: Option<Vec<u32>>,
        done: Vec<u32>,
        refuse_begin: bool,
    }

    impl Fake {
        fn new(on: bool) -> Self {
            Self {
                replays: Replays::new(on),
                fingerprint: 7,
                capturing: None,
                done: Vec::new(),
                refuse_begin: false,
            }
        }

        fn op(&mut self, op: u32) {
            match &mut self.capturing {
                Some(ops) => ops.push(op),
                None => self.done.push(op),
            }
        }

        fn stats(&self) -> ReplayStats {
            self.replays.stats().expect("on")
        }
    }

    impl Recorder for Fake {
        type Recording = Vec<u32>;
        const RECORDING_RUNS_WORK: bool = false;
        fn replays(&mut self) -> &mut Replays<Vec<u32>> {
            &mut self.replays
        }
        fn fingerprint(&self) -> u64 {
            self.fingerprint
        }
        fn begin(&mut self) -> KernelResult {
            if self.refuse_begin {
                return Err(KernelError::Failed {
                    call: "begin",
                    status: "not here".into(),
                });
            }
            self.capturing = Some(Vec::new());
            Ok(())
        }
        fn end(&mut self) -> KernelResult<Vec<u32>> {
            Ok(self.capturing.take().expect("begun"))
        }
        fn replay(&mut self, recording: &Vec<u32>, _: Work<'_, Self>) -> KernelResult {
            self.done.extend(recording);
            Ok(())
        }
    }

    fn key(batch: usize) -> ReplayKey {
        ReplayKey {
            stretch: Stretch::Forward,
            batch,
            dropout: true,
            buffers: 0,
        }
    }

    fn step(k: &mut Fake, key: ReplayKey) -> KernelResult {
        run(k, key, &mut |k: &mut Fake| {
            k.op(key.batch as u32);
            k.op(99);
            Ok(())
        })
    }

    #[test]
    fn a_stretch_runs_once_then_is_recorded_then_replayed_and_its_work_is_done_once_a_step() {
        let mut k = Fake::new(true);
        for _ in 0..4 {
            step(&mut k, key(1)).unwrap();
        }
        assert_eq!(k.done, [1, 99].repeat(4));
        let stats = k.stats();
        assert_eq!((stats.direct, stats.recorded, stats.replayed), (1, 1, 2));
        assert_eq!(stats.refused, None);
    }

    #[test]
    fn off_runs_everything_directly_and_reports_nothing() {
        let mut k = Fake::new(false);
        for _ in 0..3 {
            step(&mut k, key(1)).unwrap();
        }
        assert_eq!(k.done, [1, 99].repeat(3));
        assert_eq!(k.replays.stats(), None);
    }

    #[test]
    fn keys_have_recordings_of_their_own() {
        let mut k = Fake::new(true);
        for b in [1, 2, 1, 2, 1, 2] {
            step(&mut k, key(b)).unwrap();
        }
        assert_eq!(k.done, [1, 99, 2, 99].repeat(3));
        assert_eq!(k.stats().recorded, 2);
        assert_eq!(k.stats().replayed, 2);
    }

    #[test]
    fn a_moved_scratch_buffer_makes_recordings_stale() {
        let mut k = Fake::new(true);
        for _ in 0..3 {
            step(&mut k, key(1)).unwrap();
        }
        k.fingerprint += 1;
        for _ in 0..2 {
            step(&mut k, key(1)).unwrap();
        }
        assert_eq!(k.done, [1, 99].repeat(5));
        let stats = k.stats();
        assert_eq!((stats.direct, stats.recorded, stats.replayed), (1, 2, 2));
    }

    #[test]
    fn scratch_grown_while_recording_runs_the_step_directly_and_records_again_next_time() {
        let mut k = Fake::new(true);
        step(&mut k, key(1)).unwrap();
        let grows = &mut |k: &mut Fake| {
            k.op(5);
            k.fingerprint += 1;
            Ok(())
        };
        run(&mut k, key(1), grows).unwrap();
        // Recorded (not run), then run directly: done once.
        assert_eq!(k.done, [1, 99, 5]);
        assert_eq!(k.stats().recorded, 0);
        step(&mut k, key(1)).unwrap();
        step(&mut k, key(1)).unwrap();
        assert_eq!(k.stats().recorded, 1);
        assert_eq!(k.stats().replayed, 1);
    }

    #[test]
    fn a_recorder_that_refuses_leaves_every_step_direct_with_the_reason_kept() {
        let mut k = Fake::new(true);
        k.refuse_begin = true;
        for _ in 0..4 {
            step(&mut k, key(1)).unwrap();
        }
        assert_eq!(k.done, [1, 99].repeat(4));
        let stats = k.stats();
        assert_eq!((stats.direct, stats.recorded, stats.replayed), (4, 0, 0));
        let reason = stats.refused.clone().expect("a reason");
        assert!(
            reason.contains("begin") && reason.contains("not here"),
            "{reason}"
        );
        assert!(stats.to_string().contains("not here"), "{stats}");
    }

    #[test]
    fn work_that_fails_while_recording_runs_directly_and_only_a_real_failure_is_returned() {
        let mut k = Fake::new(true);
        step(&mut k, key(1)).unwrap();
        // Fails only while recorded (as an upload inside a CUDA graph capture would).
        let mut capture_only = |k: &mut Fake| {
            if k.capturing.is_some() {
                return Err(KernelError::Failed {
                    call: "upload",
                    status: "not permitted while capturing".into(),
                });
            }
            k.op(3);
            Ok(())
        };
        run(&mut k, key(1), &mut capture_only).unwrap();
        assert_eq!(k.done, [1, 99, 3]);
        assert!(k.stats().refused.unwrap().contains("upload"));
        assert!(k.capturing.is_none(), "the capture was ended");
        // Refused from now on: direct, and a real failure is returned.
        let fails = &mut |_: &mut Fake| {
            Err(KernelError::Failed {
                call: "conv",
                status: "bad".into(),
            })
        };
        assert!(run(&mut k, key(1), fails).is_err());
    }

    #[test]
    fn the_least_recently_used_key_is_forgotten_beyond_the_kept_number() {
        let mut k = Fake::new(true);
        for _ in 0..2 {
            for b in 0..KEPT {
                step(&mut k, key(b)).unwrap();
            }
        }
        assert_eq!(k.stats().recorded, KEPT as u64);
        // One more key pushes out key 0 (used longest ago); key 1 stays recorded.
        step(&mut k, key(KEPT)).unwrap();
        step(&mut k, key(1)).unwrap();
        assert_eq!(k.stats().replayed, 1);
        step(&mut k, key(0)).unwrap();
        assert_eq!(k.stats().direct, KEPT as u64 + 2, "key 0 starts over");
    }
}
