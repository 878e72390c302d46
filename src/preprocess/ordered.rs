//! An order-preserving parallel map with bounded memory.
//!
//! Workers on a rayon pool claim indices in increasing order and may run at most `window`
//! indices ahead of the consumer, which receives results strictly in index order on the calling
//! thread. Output order (and so every byte written) is independent of the thread count, and the
//! results held in memory are bounded by the window, not by the input size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

/// The worker threads could not be started.
#[derive(Debug)]
pub struct PoolError {
    pub threads: usize,
    pub message: String,
}

impl From<PoolError> for super::PreprocessError {
    fn from(e: PoolError) -> Self {
        super::PreprocessError::Threads {
            threads: e.threads,
            message: e.message,
        }
    }
}

/// Runs `work(state, i)` for every `i in 0..n` on `threads` workers (each with its own `state`
/// from `init`; never more workers than items) and calls `consume(i, result)` in increasing
/// `i`. Stops early, without starting new work, when `consume` returns an error.
pub fn ordered_map<S, T, E>(
    n: usize,
    threads: usize,
    window: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize) -> T + Sync,
    mut consume: impl FnMut(usize, T) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    E: From<PoolError>,
{
    let threads = threads.clamp(1, n.max(1));
    let window = window.max(threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("preprocess-{i}"))
        .build()
        .map_err(|e| PoolError {
            threads,
            message: e.to_string(),
        })?;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Lowest index not yet consumed; workers wait on it to stay within the window.
    let consumed = Mutex::new(0usize);
    let advanced = Condvar::new();
    let (tx, rx) = mpsc::channel::<(usize, T)>();

    pool.in_place_scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, stop, consumed, advanced) = (&next, &stop, &consumed, &advanced);
            let (init, work) = (&init, &work);
            scope.spawn(move |_| {
                let mut state = init();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let mut low = consumed.lock().unwrap();
                    while i >= *low + window && !stop.load(Ordering::Relaxed) {
                        low = advanced.wait(low).unwrap();
                    }
                    drop(low);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if tx.send((i, work(&mut state, i))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);

        let mut pending = BTreeMap::new();
        let mut expected = 0usize;
        let result = (|| {
            while expected < n {
                // All senders gone before every result arrived means a worker panicked; the
                // scope re-raises that panic when it joins.
                let Ok((i, value)) = rx.recv() else {
                    return Ok(());
                };
                pending.insert(i, value);
                while let Some(value) = pending.remove(&expected) {
                    consume(expected, value)?;
                    expected += 1;
                    *consumed.lock().unwrap() = expected;
                    advanced.notify_all();
                }
            }
            Ok(())
        })();
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
            // Take the lock so no worker misses the wake-up between its check and its wait.
            drop(consumed.lock().unwrap());
            advanced.notify_all();
        }
        drop(rx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error type for the tests: a failed item, or a pool that didn't start.
    #[derive(Debug, PartialEq)]
    enum TestError {
        Item(usize),
        Pool,
    }

    impl From<PoolError> for TestError {
        fn from(_: PoolError) -> Self {
            TestError::Pool
        }
    }

    #[test]
    fn results_arrive_in_order_whatever_the_thread_count() {
        for threads in [1, 2, 5] {
            let mut seen = Vec::new();
            ordered_map(
                200,
                threads,
                8,
                || 0u64,
                |calls, i| {
                    *calls += 1;
                    // Uneven work so that completion order differs from index order.
                    std::thread::sleep(std::time::Duration::from_micros(
                        ((i * 37) % 11) as u64 * 50,
                    ));
                    i * 3
                },
                |i, v| {
                    assert_eq!(v, i * 3);
                    seen.push(i);
                    Ok::<_, TestError>(())
                },
            )
            .unwrap();
            assert_eq!(seen, (0..200).collect::<Vec<_>>(), "threads={threads}");
        }
    }

    #[test]
    fn workers_stay_within_the_window() {
        let max_ahead = AtomicUsize::new(0);
        let consumed = AtomicUsize::new(0);
        ordered_map(
            300,
            4,
            6,
            || (),
            |_, i| {
                let ahead = i - consumed.load(Ordering::SeqCst);
                max_ahead.fetch_max(ahead, Ordering::SeqCst);
                i
            },
            |i, _| {
                consumed.store(i + 1, Ordering::SeqCst);
                Ok::<_, TestError>(())
            },
        )
        .unwrap();
        assert!(max_ahead.load(Ordering::SeqCst) < 6);
    }

    #[test]
    fn an_error_stops_the_work_early() {
        let started = AtomicUsize::new(0);
        let err = ordered_map(
            10_000,
            2,
            4,
            || (),
            |_, i| {
                started.fetch_add(1, Ordering::SeqCst);
                i
            },
            |i, _| {
                if i == 10 {
                    Err(TestError::Item(i))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert_eq!(err, TestError::Item(10));
        assert!(started.load(Ordering::SeqCst) < 100);
    }

    #[test]
    fn a_huge_thread_count_starts_no_more_workers_than_items() {
        let names = Mutex::new(std::collections::BTreeSet::new());
        ordered_map(
            3,
            100_000,
            4,
            || (),
            |_, i| {
                let name = std::thread::current().name().unwrap_or("").to_string();
                names.lock().unwrap().insert(name);
                i
            },
            |_, _| Ok::<_, TestError>(()),
        )
        .unwrap();
        assert!(names.lock().unwrap().len() <= 3);
    }

    #[test]
    fn zero_items_is_fine() {
        ordered_map(
            0,
            3,
            4,
            || (),
            |_, i| i,
            |_, _| Err::<(), _>(TestError::Pool),
        )
        .unwrap();
    }
}
