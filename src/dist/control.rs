//! The control plane: rank 0 holds one TCP connection to every other rank (a star). A
//! collective is each rank sending its values to rank 0, which combines them in rank order and
//! sends the result back to all — deterministic, and cheap for the few numbers a step shares.
//! Every wait has a deadline, and a rank that fails tells the others why before it goes.

use std::io::{self, Read};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::wire::{self, Frame, Word, ABORT, DATA, HELLO, WELCOME};
use super::{DistError, Launch, World};

/// One rank's connections to the others.
pub struct Control {
    world: World,
    timeout: Duration,
    links: Links,
    /// Set once this rank has failed or heard of a failure: nothing more is sent.
    failed: bool,
}

enum Links {
    /// Rank 0: a connection to every other rank, in rank order (rank r at r − 1).
    Root(Vec<TcpStream>),
    Member(TcpStream),
}

impl Control {
    /// Meets the other ranks of `launch`: rank 0 listens until every rank has said hello, then
    /// sends each the bytes `shared` makes (say, NCCL's unique id); the others connect, retrying
    /// until rank 0 listens, and receive them. `job` describes what this rank runs (ranks
    /// that disagree are refused).
    pub fn join(
        launch: &Launch,
        job: &str,
        shared: impl FnOnce() -> Result<Vec<u8>, DistError>,
    ) -> Result<(Control, Vec<u8>), DistError> {
        let world = launch.world;
        if world.is_root() {
            let peers = accept_all(launch, job)?;
            let mut control = Control {
                world,
                timeout: launch.timeout,
                links: Links::Root(peers),
                failed: false,
            };
            let bytes = match shared() {
                Ok(bytes) => bytes,
                Err(e) => {
                    control.abort(&e.to_string());
                    return Err(e);
                }
            };
            for (i, peer) in control.peers().iter_mut().enumerate() {
                wire::write(peer, WELCOME, 0, &bytes)
                    .map_err(|e| lost(i + 1, "starting the job", &e))?;
            }
            Ok((control, bytes))
        } else {
            let mut root = connect(launch)?;
            let mut hello = Vec::new();
            (world.rank as u64).put(&mut hello);
            (world.size as u64).put(&mut hello);
            hello.extend_from_slice(job.as_bytes());
            wire::write(&mut root, HELLO, world.rank, &hello)
                .map_err(|e| lost(0, "joining the job", &e))?;
            let what = "waiting for every rank to join";
            let frame =
                wire::read(&mut root).map_err(|e| failed_read(0, what, launch.timeout, e))?;
            let mut control = Control {
                world,
                timeout: launch.timeout,
                links: Links::Member(root),
                failed: false,
            };
            match frame.tag {
                WELCOME => Ok((control, frame.body)),
                _ => Err(control.heard(frame)),
            }
        }
    }

    pub fn world(&self) -> World {
        self.world
    }

    /// Sums `values` over the ranks, in rank order, in place: every rank gets the same sums.
    pub fn sum_f64(&mut self, values: &mut [f64], what: &'static str) -> Result<(), DistError> {
        self.sum(values, what)
    }

    /// `sum_f64` for f32 (the CPU ranks' gradients).
    pub fn sum_f32(&mut self, values: &mut [f32], what: &'static str) -> Result<(), DistError> {
        self.sum(values, what)
    }

    /// Every rank's `value`, in rank order, on every rank.
    pub fn gather_u64(&mut self, value: u64, what: &'static str) -> Result<Vec<u64>, DistError> {
        let size = self.world.size;
        let bytes = self.exchange(wire::encode(&[value]), what, |parts| {
            let mut all = Vec::with_capacity(size);
            for (rank, part) in parts.iter().enumerate() {
                all.extend(wire::decode::<u64>(part, 1).ok_or_else(|| shape(rank, what))?);
            }
            Ok(wire::encode(&all))
        })?;
        wire::decode(&bytes, size).ok_or_else(|| shape(0, what))
    }

    /// Every rank's `bytes`, in rank order, on every rank (say, evaluation's per-image rows).
    pub fn gather_bytes(
        &mut self,
        bytes: Vec<u8>,
        what: &'static str,
    ) -> Result<Vec<Vec<u8>>, DistError> {
        let joined = self.exchange(bytes, what, |parts| {
            let mut all = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
            for part in parts {
                (part.len() as u64).put(&mut all);
                all.extend_from_slice(part);
            }
            Ok(all)
        })?;
        let mut parts = Vec::with_capacity(self.world.size);
        let mut rest = &joined[..];
        while let Some((len, tail)) = rest.split_first_chunk::<8>() {
            let len = u64::from_le_bytes(*len) as usize;
            let (part, tail) = tail.split_at_checked(len).ok_or_else(|| shape(0, what))?;
            parts.push(part.to_vec());
            rest = tail;
        }
        if parts.len() != self.world.size || !rest.is_empty() {
            return Err(shape(0, what));
        }
        Ok(parts)
    }

    /// Checks that every rank describes its job as rank 0 does (what it trains, from where),
    /// naming the ranks that differ.
    pub fn agree(&mut self, job: &str) -> Result<(), DistError> {
        let all = self.gather_bytes(job.as_bytes().to_vec(), "comparing what the ranks run")?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let differing: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(_, theirs)| *theirs != &all[0])
            .map(|(rank, theirs)| format!("rank {rank} runs {}", text(theirs)))
            .collect();
        if differing.is_empty() {
            return Ok(());
        }
        Err(DistError::Mismatch(format!(
            "{}, where rank 0 runs {}: start every rank with the same command, pipeline and data",
            differing.join("; "),
            text(&all[0])
        )))
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self, what: &'static str) -> Result<(), DistError> {
        self.sum::<f64>(&mut [], what)
    }

    /// Tells the other ranks that this one is stopping, and why (best effort: a rank that is
    /// gone cannot be told). Rank 0 tells everyone; another rank tells rank 0, which passes it
    /// on at the next collective.
    pub fn abort(&mut self, reason: &str) {
        if std::mem::replace(&mut self.failed, true) {
            return;
        }
        let rank = self.world.rank;
        self.tell_all(rank, reason, None);
        self.drain();
    }

    fn sum<T: Word + std::ops::AddAssign>(
        &mut self,
        values: &mut [T],
        what: &'static str,
    ) -> Result<(), DistError> {
        let len = values.len();
        let bytes = self.exchange(wire::encode(values), what, |parts| {
            let mut total = vec![T::default(); len];
            for (rank, part) in parts.iter().enumerate() {
                let part = wire::decode::<T>(part, len).ok_or_else(|| shape(rank, what))?;
                total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
            }
            Ok(wire::encode(&total))
        })?;
        let total = wire::decode::<T>(&bytes, len).ok_or_else(|| shape(0, what))?;
        values.copy_from_slice(&total);
        Ok(())
    }

    /// One collective: rank 0 combines every rank's `mine` (in rank order) with `combine` and
    /// sends the result to all; every rank returns it.
    fn exchange(
        &mut self,
        mine: Vec<u8>,
        what: &'static str,
        combine: impl FnOnce(&[Vec<u8>]) -> Result<Vec<u8>, DistError>,
    ) -> Result<Vec<u8>, DistError> {
        if self.failed {
            return Err(DistError::Collective(format!(
                "{what}: this rank already stopped the job"
            )));
        }
        let timeout = self.timeout;
        let rank = self.world.rank;
        let result = match &mut self.links {
            Links::Member(root) => {
                wire::write(root, DATA, rank, &mine).map_err(|e| lost(0, what, &e))?;
                let frame = wire::read(root).map_err(|e| failed_read(0, what, timeout, e))?;
                if frame.tag == DATA {
                    return Ok(frame.body);
                }
                return Err(self.heard(frame));
            }
            Links::Root(peers) => {
                let mut parts = vec![mine];
                let mut failure = None;
                for (i, peer) in peers.iter_mut().enumerate() {
                    match wire::read(peer) {
                        Ok(frame) if frame.tag == DATA => parts.push(frame.body),
                        Ok(frame) if frame.tag == ABORT => {
                            let reason = String::from_utf8_lossy(&frame.body).into_owned();
                            failure = Some(DistError::Aborted {
                                rank: frame.from,
                                reason,
                            });
                            break;
                        }
                        Ok(_) => {
                            failure = Some(DistError::Mismatch(format!(
                                "rank {} sent an unexpected message while {what}",
                                i + 1
                            )));
                            break;
                        }
                        Err(e) => {
                            failure = Some(failed_read(i + 1, what, timeout, e));
                            break;
                        }
                    }
                }
                match failure {
                    Some(e) => Err(e),
                    None => combine(&parts),
                }
            }
        };
        match result {
            Ok(bytes) => {
                let mut failure = None;
                for (i, peer) in self.peers().iter_mut().enumerate() {
                    if let Err(e) = wire::write(peer, DATA, 0, &bytes) {
                        failure = Some(lost(i + 1, what, &e));
                        break;
                    }
                }
                match failure {
                    Some(e) => Err(self.pass_on(e)),
                    None => Ok(bytes),
                }
            }
            Err(e) => Err(self.pass_on(e)),
        }
    }

    /// Rank 0 tells every other rank about `e` (naming the rank it concerns), then returns it.
    fn pass_on(&mut self, e: DistError) -> DistError {
        if !std::mem::replace(&mut self.failed, true) {
            let (rank, reason) = match &e {
                DistError::Aborted { rank, reason } => (*rank, reason.clone()),
                DistError::Lost { rank, .. } | DistError::Timeout { rank, .. } => {
                    (*rank, e.to_string())
                }
                other => (0, other.to_string()),
            };
            self.tell_all(rank, &reason, Some(rank));
            self.drain();
        }
        e
    }

    /// Rank 0, stopping the job, lets every other rank read what it was just told before the
    /// connections close: closing a socket that holds unread data (a rank's part of the next
    /// collective) resets the connection, and the reset discards what the other side had not
    /// yet read — the abort naming the rank at fault — so that rank would report rank 0 lost
    /// instead. Rank 0 stops writing, then reads and drops whatever each rank still sends until
    /// it closes its end, for at most `DRAIN` in all.
    fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN;
        let mut sink = [0u8; 4096];
        for peer in self.peers() {
            let _ = peer.shutdown(Shutdown::Write);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || peer.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match peer.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }

    /// Sends an abort speaking for `rank` to every connection, except to `skip`.
    fn tell_all(&mut self, rank: usize, reason: &str, skip: Option<usize>) {
        match &mut self.links {
            Links::Member(root) => {
                let _ = wire::write(root, ABORT, rank, reason.as_bytes());
            }
            Links::Root(peers) => {
                for (i, peer) in peers.iter_mut().enumerate() {
                    if skip != Some(i + 1) {
                        let _ = wire::write(peer, ABORT, rank, reason.as_bytes());
                    }
                }
            }
        }
    }

    /// The error for a frame that was not the expected one.
    fn heard(&mut self, frame: Frame) -> DistError {
        self.failed = true;
        let text = String::from_utf8_lossy(&frame.body).into_owned();
        match frame.tag {
            ABORT => DistError::Aborted {
                rank: frame.from,
                reason: text,
            },
            _ => DistError::Mismatch(format!(
                "rank {} sent an unexpected message (tag {})",
                frame.from, frame.tag
            )),
        }
    }

    fn peers(&mut self) -> &mut [TcpStream] {
        match &mut self.links {
            Links::Root(peers) => peers,
            Links::Member(_) => &mut [],
        }
    }
}

/// Rank 0's side of the rendezvous: a connection from every other rank, in rank order.
fn accept_all(launch: &Launch, job: &str) -> Result<Vec<TcpStream>, DistError> {
    let size = launch.world.size;
    let port = launch.port;
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|source| DistError::Listen { port, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| DistError::Listen { port, source })?;
    let started = Instant::now();
    let mut peers: Vec<Option<TcpStream>> = (1..size).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (rank, stream) = match greet(stream, launch, job) {
                    Ok(greeted) => greeted,
                    // Not one of ours (a port scanner, a rank of an older job): ignore it.
                    Err(None) => continue,
                    Err(Some(e)) => {
                        for peer in peers.iter_mut().flatten() {
                            let _ = wire::write(peer, ABORT, 0, e.to_string().as_bytes());
                        }
                        return Err(e);
                    }
                };
                if peers[rank - 1].is_some() {
                    let e = DistError::Mismatch(format!(
                        "two processes joined as rank {rank} (check RANK or SLURM_PROCID)"
                    ));
                    for peer in peers.iter_mut().flatten() {
                        let _ = wire::write(peer, ABORT, 0, e.to_string().as_bytes());
                    }
                    return Err(e);
                }
                peers[rank - 1] = Some(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if started.elapsed() > launch.timeout {
                    let missing = peers
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.is_none())
                        .map(|(i, _)| i + 1)
                        .collect();
                    return Err(DistError::Missing {
                        missing,
                        size,
                        address: launch.address(),
                        waited: launch.timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => return Err(DistError::Listen { port, source }),
        }
    }
    Ok(peers.into_iter().flatten().collect())
}

/// Reads a new connection's hello: its rank, or `Err(None)` when it is not a rank of this
/// kind of job at all, or an error when it is one that disagrees with rank 0.
fn greet(
    mut stream: TcpStream,
    launch: &Launch,
    job: &str,
) -> Result<(usize, TcpStream), Option<DistError>> {
    configure(&stream, launch.timeout.min(Duration::from_secs(30))).map_err(|_| None)?;
    let frame = wire::read(&mut stream).map_err(|_| None)?;
    if frame.tag != HELLO || frame.body.len() < 16 {
        return Err(None);
    }
    let rank = u64::get(&frame.body[..8]) as usize;
    let size = u64::get(&frame.body[8..16]) as usize;
    let theirs = String::from_utf8_lossy(&frame.body[16..]);
    let refuse = |text: String| {
        let _ = wire::write(&mut stream.try_clone().ok()?, ABORT, 0, text.as_bytes());
        Some(DistError::Mismatch(text))
    };
    if size != launch.world.size {
        return Err(refuse(format!(
            "rank {rank} was started with a world size of {size}, rank 0 with {}",
            launch.world.size
        )));
    }
    if rank == 0 || rank >= size {
        return Err(refuse(format!("a second rank 0 or rank {rank} joined")));
    }
    if theirs != job {
        return Err(refuse(format!(
            "rank {rank} runs {theirs}, rank 0 runs {job}: start every rank with the same \
             command, pipeline and data"
        )));
    }
    configure(&stream, launch.timeout).map_err(|_| None)?;
    Ok((rank, stream))
}

/// A rank's side of the rendezvous: connects to rank 0, retrying until it listens.
fn connect(launch: &Launch) -> Result<TcpStream, DistError> {
    let started = Instant::now();
    let address = launch.address();
    loop {
        let attempt = address
            .to_socket_addrs()
            .and_then(|mut addrs| {
                addrs
                    .next()
                    .ok_or_else(|| io::Error::other("the host name has no address"))
            })
            .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
        match attempt {
            Ok(stream) => {
                configure(&stream, launch.timeout).map_err(|e| lost(0, "joining the job", &e))?;
                return Ok(stream);
            }
            Err(e) if started.elapsed() > launch.timeout => {
                return Err(DistError::Unreachable {
                    rank: launch.world.rank,
                    address,
                    waited: launch.timeout,
                    last: e.to_string(),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn configure(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

/// The error for a read from `rank` that failed.
fn failed_read(rank: usize, what: &'static str, timeout: Duration, e: io::Error) -> DistError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => DistError::Timeout {
            rank,
            what,
            waited: timeout,
        },
        _ => lost(rank, what, &e),
    }
}

fn lost(rank: usize, what: &'static str, e: &io::Error) -> DistError {
    let reason = match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "its process ended or was killed".to_string(),
        _ => e.to_string(),
    };
    DistError::Lost { rank, what, reason }
}

/// How long rank 0, stopping the job, waits for the other ranks to read why (see `drain`).
const DRAIN: Duration = Duration::from_secs(2);

fn shape(rank: usize, what: &'static str) -> DistError {
    DistError::Mismatch(format!(
        "rank {rank} sent values of another size while {what} (a different model or data?)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Launcher;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn launch(rank: usize, size: usize, port: u16, timeout: f64) -> Launch {
        Launch {
            world: World {
                rank,
                size,
                local_rank: rank,
            },
            launcher: Launcher::Torchrun,
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_secs_f64(timeout),
            check_every: 10,
        }
    }

    /// Runs `body` on `size` ranks (threads), each with its joined `Control`.
    fn ranks<T: Send + 'static>(
        size: usize,
        timeout: f64,
        body: impl Fn(&mut Control, Vec<u8>) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<Result<T, DistError>> {
        let port = free_port();
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let body = body.clone();
                std::thread::spawn(move || {
                    let l = launch(rank, size, port, timeout);
                    let (mut c, shared) = Control::join(&l, "job", || Ok(b"id".to_vec()))?;
                    Ok(body(&mut c, shared))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn sums_are_the_same_on_every_rank_and_in_rank_order() {
        let results = ranks(3, 10.0, |c, shared| {
            assert_eq!(shared, b"id");
            let rank = c.world().rank;
            // f32 addition is not associative: rank order makes the result one value.
            let mut values = [[1e8f32, 1.0, -1e8][rank], rank as f32];
            c.sum_f32(&mut values, "test").unwrap();
            let mut counts = [rank as f64, 1.0];
            c.sum_f64(&mut counts, "test").unwrap();
            let all = c.gather_u64(10 + rank as u64, "test").unwrap();
            let bytes = c.gather_bytes(vec![rank as u8; rank], "test").unwrap();
            c.agree("same").unwrap();
            let differs = c.agree(if rank == 2 { "other" } else { "same" });
            let text = differs.unwrap_err().to_string();
            assert!(
                text.contains("rank 2 runs other, where rank 0 runs same"),
                "{text}"
            );
            c.barrier("test").unwrap();
            (values, counts, all, bytes)
        });
        for r in results {
            let (values, counts, all, bytes) = r.unwrap();
            assert_eq!(values, [(1e8f32 + 1.0) - 1e8, 3.0]);
            assert_eq!(counts, [3.0, 3.0]);
            assert_eq!(all, [10, 11, 12]);
            assert_eq!(bytes, [vec![], vec![1], vec![2, 2]]);
        }
    }

    #[test]
    fn a_rank_that_fails_stops_the_others_with_its_reason() {
        let results = ranks(3, 10.0, |c, _| {
            if c.world().rank == 2 {
                c.abort("the GPU ran out of memory");
                return None;
            }
            Some(
                c.sum_f64(&mut [1.0], "summing a step")
                    .unwrap_err()
                    .to_string(),
            )
        });
        for r in results.into_iter().take(2) {
            let text = r.unwrap().unwrap();
            assert!(
                text.contains("rank 2") && text.contains("out of memory"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_rank_that_vanishes_is_named() {
        let results = ranks(3, 10.0, |c, _| {
            if c.world().rank == 1 {
                return None; // drops its connection without a word
            }
            Some(
                c.sum_f64(&mut [1.0], "summing a step")
                    .unwrap_err()
                    .to_string(),
            )
        });
        for r in results.into_iter().step_by(2) {
            let text = r.unwrap().unwrap();
            assert!(text.contains("rank 1") && text.contains("ended"), "{text}");
        }
    }

    /// Rank 0 stops at rank 1's loss before rank 2 has sent its part: rank 2's part must not
    /// reset the connection (and with it the abort waiting there), so rank 2 still hears that
    /// rank 1 was lost, not that rank 0 was.
    #[test]
    fn a_rank_that_arrives_after_rank_0_stopped_still_hears_why() {
        let results = ranks(3, 10.0, |c, _| {
            match c.world().rank {
                1 => return None,
                2 => std::thread::sleep(Duration::from_millis(300)),
                _ => {}
            }
            Some(
                c.sum_f64(&mut [1.0], "summing a step")
                    .unwrap_err()
                    .to_string(),
            )
        });
        let text = results.into_iter().nth(2).unwrap().unwrap().unwrap();
        assert!(text.contains("rank 1") && text.contains("ended"), "{text}");
    }

    #[test]
    fn a_hung_rank_times_out() {
        let results = ranks(2, 0.5, |c, _| {
            if c.world().rank == 1 {
                std::thread::sleep(Duration::from_secs(2));
                return None;
            }
            Some(
                c.sum_f64(&mut [1.0], "summing a step")
                    .unwrap_err()
                    .to_string(),
            )
        });
        let text = results.into_iter().next().unwrap().unwrap().unwrap();
        assert!(text.contains("rank 1 did not answer"), "{text}");
    }

    #[test]
    fn ranks_that_never_arrive_are_listed() {
        let port = free_port();
        let err = Control::join(&launch(0, 3, port, 0.3), "job", || Ok(Vec::new()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("rank(s) 1, 2 of 3 did not arrive"), "{err}");
        let err = Control::join(&launch(1, 3, free_port(), 0.3), "job", || Ok(Vec::new()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("could not reach rank 0"), "{err}");
    }

    #[test]
    fn ranks_started_differently_are_refused() {
        let port = free_port();
        let other = std::thread::spawn(move || {
            Control::join(&launch(1, 2, port, 5.0), "another job", || Ok(Vec::new())).err()
        });
        let err = Control::join(&launch(0, 2, port, 5.0), "job", || Ok(Vec::new()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("rank 1 runs another job"), "{err}");
        let theirs = other.join().unwrap().unwrap().to_string();
        assert!(theirs.contains("another job"), "{theirs}");
    }
}
