//! Reading a data-parallel launch from the environment, as `torchrun` and Slurm's `srun` set
//! it up for each process.

use std::time::Duration;

use super::{DistError, World};

/// Which launcher set the environment (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`: torchrun, or set by hand.
    Torchrun,
    /// `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`.
    Slurm,
}

/// One process's part in a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub world: World,
    pub launcher: Launcher,
    /// Where rank 0 listens for the others.
    pub host: String,
    pub port: u16,
    /// How long a rank waits for another before giving up on the job.
    pub timeout: Duration,
    /// Every this many steps the ranks compare checksums of their weights.
    pub check_every: u64,
}

/// The default of `ALEXNET_DIST_TIMEOUT`: as long as PyTorch waits for a collective.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The default of `ALEXNET_DIST_CHECK_EVERY`: a checksum of the paper network's weights
/// costs about one step on a GPU (a 250 MB download), so a thousandth of the time.
pub const DEFAULT_CHECK_EVERY: u64 = 1000;

impl Launch {
    /// The launch the process environment describes, or `None` for a job of one process.
    pub fn from_env() -> Result<Option<Launch>, DistError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// `from_env` over any source of variables (tests pass a map).
    ///
    /// torchrun's variables win over Slurm's (torchrun inside a Slurm allocation sets both).
    /// Set by torchrun, even `WORLD_SIZE=1` is a data-parallel job of one rank; a Slurm job
    /// step of one task is an ordinary run.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistError> {
        let number = |name: &str| parsed::<usize>(&var, name, "a whole number");
        let (launcher, rank, size, local) = if var("RANK").is_some() || var("WORLD_SIZE").is_some()
        {
            let (Some(rank), Some(size)) = (number("RANK")?, number("WORLD_SIZE")?) else {
                return Err(DistError::Launch(
                    "RANK and WORLD_SIZE must be set together (torchrun sets both)".into(),
                ));
            };
            let local = number("LOCAL_RANK")?.unwrap_or(rank);
            (Launcher::Torchrun, rank, size, local)
        } else if let (Some(rank), Some(size)) = (number("SLURM_PROCID")?, number("SLURM_NTASKS")?)
        {
            if size == 1 {
                return Ok(None);
            }
            (
                Launcher::Slurm,
                rank,
                size,
                number("SLURM_LOCALID")?.unwrap_or(0),
            )
        } else {
            return Ok(None);
        };
        if size == 0 || rank >= size {
            return Err(DistError::Launch(format!(
                "rank {rank} is not in a job of {size} (check RANK/WORLD_SIZE or SLURM_PROCID/\
                 SLURM_NTASKS)"
            )));
        }
        let host =
            match (var("MASTER_ADDR"), launcher) {
                (Some(host), _) => host,
                // srun runs from the allocation's first node, where task 0 runs too.
                (None, Launcher::Slurm) => var("SLURM_LAUNCH_NODE_IPADDR").ok_or_else(|| {
                    DistError::Launch(
                    "set MASTER_ADDR to the host name of the first node of the job (in a batch \
                     script: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" \
                     | head -n 1))"
                        .into(),
                )
                })?,
                (None, Launcher::Torchrun) => return Err(DistError::Launch(
                    "MASTER_ADDR is not set: torchrun sets it; when setting RANK and WORLD_SIZE \
                     by hand, set MASTER_ADDR and MASTER_PORT too"
                        .into(),
                )),
            };
        let port = |name: &str| parsed::<u16>(&var, name, "a port number");
        let port = match (port("ALEXNET_RENDEZVOUS_PORT")?, port("MASTER_PORT")?) {
            (Some(own), _) => own,
            // torchrun's agent already serves its own store on MASTER_PORT: take the next.
            (None, Some(master))
                if var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") =>
            {
                master.checked_add(1).ok_or_else(|| {
                    DistError::Launch("MASTER_PORT 65535 leaves no port for the ranks".into())
                })?
            }
            (None, Some(master)) => master,
            (None, None) => match (launcher, number("SLURM_JOB_ID")?) {
                // The same port on every task of the job, different for neighbouring jobs.
                (Launcher::Slurm, Some(job)) => 20_000 + (job % 20_000) as u16,
                _ => {
                    return Err(DistError::Launch(
                        "MASTER_PORT is not set (torchrun sets it; set it by hand otherwise)"
                            .into(),
                    ))
                }
            },
        };
        let timeout = match var("ALEXNET_DIST_TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
                _ => {
                    return Err(DistError::Launch(format!(
                        "ALEXNET_DIST_TIMEOUT={v:?} is not a positive number of seconds"
                    )))
                }
            },
        };
        let check_every = match number("ALEXNET_DIST_CHECK_EVERY")? {
            None => DEFAULT_CHECK_EVERY,
            Some(0) => {
                return Err(DistError::Launch(
                    "ALEXNET_DIST_CHECK_EVERY must be at least 1 (steps)".into(),
                ))
            }
            Some(n) => n as u64,
        };
        Ok(Some(Launch {
            world: World {
                rank,
                size,
                local_rank: local,
            },
            launcher,
            host,
            port,
            timeout,
            check_every,
        }))
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Variable `name` parsed as `T` (`None` when it is not set); `what` says what it should be.
fn parsed<T: std::str::FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    what: &str,
) -> Result<Option<T>, DistError> {
    match var(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| DistError::Launch(format!("{name}={v:?} is not {what}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, DistError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn no_launcher_is_one_process() {
        assert_eq!(launch(&[]).unwrap(), None);
        // Any Slurm job step sets these; one task is an ordinary run.
        let one_task = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")];
        assert_eq!(launch(&one_task).unwrap(), None);
    }

    #[test]
    fn torchrun_sets_rank_world_and_local_rank() {
        let l = launch(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            l.world,
            World {
                rank: 5,
                size: 16,
                local_rank: 1
            }
        );
        assert_eq!(l.launcher, Launcher::Torchrun);
        // torchrun's own store holds MASTER_PORT.
        assert_eq!(l.address(), "node0:29501");
        assert_eq!(l.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn slurm_finds_its_master_and_port_without_help() {
        let l = launch(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "3"),
            ("SLURM_JOB_ID", "123456"),
            ("SLURM_LAUNCH_NODE_IPADDR", "10.0.0.7"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.world.rank, l.world.size, l.world.local_rank), (3, 8, 3));
        assert_eq!(l.address(), "10.0.0.7:23456");
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |vars: &[(&str, &str)]| launch(vars).unwrap_err().to_string();
        assert!(err(&[("RANK", "0")]).contains("together"));
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\""));
        let out_of_range = [("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")];
        assert!(err(&out_of_range).contains("rank 2 is not in a job of 2"));
        let no_addr = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")];
        assert!(err(&no_addr).contains("MASTER_ADDR"));
        let bad_timeout = [
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
            ("ALEXNET_DIST_TIMEOUT", "-3"),
        ];
        assert!(err(&bad_timeout).contains("ALEXNET_DIST_TIMEOUT"));
    }

    #[test]
    fn slices_cover_a_batch_in_rank_order() {
        for (rows, size) in [(128, 3), (128, 8), (5, 3), (2, 3), (1, 2)] {
            let mut next = 0;
            for rank in 0..size {
                let world = World {
                    rank,
                    size,
                    local_rank: rank,
                };
                let s = world.slice(rows);
                assert_eq!(s.start, next);
                assert!(s.len() <= rows.div_ceil(size));
                next = s.end;
            }
            assert_eq!(next, rows);
        }
    }
}
