//! Locks on output directories, so that two processes never write the same files.
//!
//! A lock is an OS file lock (`flock`) on a file in the directory (`DIR/.alexnet.lock` for the
//! whole directory), which also names the holder (pid, host, command) for the error the loser
//! prints. The OS releases the lock when the holder dies, however it dies, so a `kill -9`
//! never leaves a stale lock behind.
//!
//! Parts of one preprocessing job share the directory lock and each hold their own part's
//! lock exclusively; a whole-directory run or a merge holds the directory lock exclusively.
//! An exclusive holder removes its lock file on a clean exit (a process that opened it just
//! before sees that the path no longer names the file it locked, and tries again); shared
//! holders leave it, since others may still hold it.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = ".alexnet.lock";

/// Whether a file name is one of this module's lock files.
pub fn is_lock_file(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(LOCK_FILE))
}

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nobody else may hold it.
    Exclusive,
    /// Others may hold it shared too, but nobody exclusively.
    Shared,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by another {what} ({holder}); wait for it to finish or stop it \
         (a process that died releases the lock by itself)"
    )]
    Held {
        dir: PathBuf,
        what: String,
        holder: String,
    },
    #[error("cannot lock {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while a process writes a directory; dropping it releases the directory.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    mode: Mode,
    _file: File,
}

impl DirLock {
    /// Locks `dir` (which must exist) exclusively for `what` (e.g. "`alexnet preprocess`"),
    /// or says who holds it.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self, LockError> {
        Self::acquire_named(dir, LOCK_FILE, Mode::Exclusive, what)
    }

    /// Locks the lock file `name` in `dir` (a name starting with `LOCK_FILE`) in `mode`.
    pub fn acquire_named(
        dir: &Path,
        name: &str,
        mode: Mode,
        what: &str,
    ) -> Result<Self, LockError> {
        debug_assert!(name.starts_with(LOCK_FILE));
        let path = dir.join(name);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            let locked = match mode {
                Mode::Exclusive => file.try_lock(),
                Mode::Shared => file.try_lock_shared(),
            };
            match locked {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(LockError::Held {
                        dir: dir.to_path_buf(),
                        what: what.to_string(),
                        holder: if holder.is_empty() {
                            "a process that is just starting".into()
                        } else {
                            holder.to_string()
                        },
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            // The previous holder may have removed the file between our open and our lock:
            // then we hold a lock on a file nobody else will ever look at.
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0).map_err(io)?;
            writeln!(file, "{}", holder_description()).map_err(io)?;
            return Ok(Self {
                path,
                mode,
                _file: file,
            });
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Removed while still locked, so nobody can lock the old file and think it current.
        if self.mode == Mode::Exclusive {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

fn holder_description() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "pid {} on {host}, running `{}` since unix time {since}",
        std::process::id(),
        std::env::args().collect::<Vec<_>>().join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "`alexnet preprocess`").unwrap();
        let err = DirLock::acquire(dir.path(), "`alexnet preprocess`").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(
            msg.contains("in use by another `alexnet preprocess`"),
            "{msg}"
        );
        drop(first);
        assert!(!dir.path().join(LOCK_FILE).exists(), "removed on release");
        let again = DirLock::acquire(dir.path(), "x").unwrap();
        drop(again);
    }

    #[test]
    fn shared_holders_exclude_an_exclusive_one_but_not_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirLock::acquire_named(dir.path(), LOCK_FILE, Mode::Shared, "part 0").unwrap();
        let b = DirLock::acquire_named(dir.path(), LOCK_FILE, Mode::Shared, "part 1").unwrap();
        assert!(DirLock::acquire(dir.path(), "merge").is_err());
        drop(a);
        assert!(
            DirLock::acquire(dir.path(), "merge").is_err(),
            "b still holds it"
        );
        drop(b);
        assert!(
            dir.path().join(LOCK_FILE).exists(),
            "shared holders leave the file"
        );
        let merge = DirLock::acquire(dir.path(), "merge").unwrap();
        assert!(DirLock::acquire_named(dir.path(), LOCK_FILE, Mode::Shared, "late").is_err());
        drop(merge);
        assert!(is_lock_file(std::ffi::OsStr::new(
            ".alexnet.lock.part-0-of-3"
        )));
    }

    #[test]
    fn a_leftover_lock_file_without_a_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK_FILE), "alexnet, pid 1 (killed)\n").unwrap();
        let lock = DirLock::acquire(dir.path(), "`alexnet train`").unwrap();
        let text = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(lock);
    }
}
