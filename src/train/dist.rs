//! Data parallel over processes (one per machine or per GPU): who this process is, from the
//! variables the launchers set ([`DistEnv::from_env`]: torchrun, SLURM's `srun`, Open MPI's
//! `mpirun`), the rendezvous (rank 0 listens on `MASTER_ADDR:MASTER_PORT`, every other rank
//! connects and says who it is; rank 0 checks that the world sizes and the run fingerprints agree
//! and sends everyone the same payload: an NCCL unique id for GPUs), and [`TcpComm`], a
//! [`Communicator`] over those connections (rank 0 sums in rank order and sends the sum back) for
//! ranks without NCCL (CPU ranks, emulated GPUs).
//!
//! Failures end every rank with an error that names the rank at fault, within the timeout: a
//! rank that never connects, a wrong world size or fingerprint, a rank that disconnects or stops
//! answering in a collective. A rank that starts before rank 0 listens retries until the timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::parallel::Communicator;
use crate::backend::Backend;
use crate::error::{Error, Result};

/// The default rendezvous port (torchrun's).
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place in a multi-process run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// Processes in the run.
    pub world: usize,
    /// Rank among the processes of this machine (which GPU it takes by default).
    pub local_rank: usize,
    /// Where rank 0 listens.
    pub master_addr: String,
    /// Rank 0's port.
    pub master_port: u16,
    /// The launcher the variables came from (`torchrun`, `slurm`, `openmpi`).
    pub launcher: &'static str,
}

impl DistEnv {
    /// The run this process belongs to, from the process environment (see [`DistEnv::from_vars`]).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The run described by `var` (a variable's value by name): torchrun's `RANK`, `WORLD_SIZE`,
    /// `LOCAL_RANK`; else Open MPI's `OMPI_COMM_WORLD_RANK`, `_SIZE`, `_LOCAL_RANK`; else SLURM's
    /// `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; with `MASTER_ADDR` (required with more than
    /// one process) and the port rank 0 listens on: `NLI_BERT_RDZV_PORT`, else `MASTER_PORT` + 1
    /// under torchrun (whose agent holds `MASTER_PORT`), else `MASTER_PORT`, else 29500. `None`
    /// for a single process (no variables, or a world of 1).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let num = |k: &str| -> Result<Option<usize>> {
            match var(k) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::usage(format!("{k}={v:?} is not a whole number (a rank or a process count)"))
                }),
            }
        };
        let launchers: [(&'static str, [&str; 3]); 3] = [
            ("torchrun", ["RANK", "WORLD_SIZE", "LOCAL_RANK"]),
            ("openmpi", ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"]),
            ("slurm", ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"]),
        ];
        for (launcher, [rk, wk, lk]) in launchers {
            let (rank, world) = (num(rk)?, num(wk)?);
            let (rank, world) = match (rank, world) {
                (None, None) => continue,
                (Some(r), Some(w)) => (r, w),
                (Some(_), None) => {
                    return Err(Error::usage(format!("{rk} is set but {wk} is not: set both")))
                }
                (None, Some(_)) => {
                    return Err(Error::usage(format!("{wk} is set but {rk} is not: set both")))
                }
            };
            if world == 0 || rank >= world {
                return Err(Error::usage(format!("{rk}={rank} must be below {wk}={world}")));
            }
            if world == 1 {
                return Ok(None);
            }
            let local_rank = num(lk)?.unwrap_or(rank);
            let master_addr = match var("MASTER_ADDR").filter(|v| !v.trim().is_empty()) {
                Some(a) => a.trim().to_string(),
                None => {
                    return Err(Error::usage(format!(
                        "{launcher} started {world} processes but MASTER_ADDR is not set: set it to rank 0's \
                         host name or address (and MASTER_PORT, default {DEFAULT_PORT})"
                    )))
                }
            };
            let port = |k: &str| -> Result<Option<u16>> {
                match var(k).filter(|v| !v.trim().is_empty()) {
                    None => Ok(None),
                    Some(p) => p
                        .trim()
                        .parse::<u16>()
                        .map(Some)
                        .map_err(|_| Error::usage(format!("{k}={p:?} is not a port number"))),
                }
            };
            // torchrun's agent already listens on MASTER_PORT (its store): ours takes the next
            // port there, unless NLI_BERT_RDZV_PORT says which.
            let torchelastic = var("TORCHELASTIC_RUN_ID").is_some();
            let master_port = match (port("NLI_BERT_RDZV_PORT")?, port("MASTER_PORT")?) {
                (Some(p), _) => p,
                (None, Some(p)) if torchelastic => p.checked_add(1).ok_or_else(|| {
                    Error::usage(
                        "MASTER_PORT=65535 leaves no port for the rendezvous: set NLI_BERT_RDZV_PORT",
                    )
                })?,
                (None, Some(p)) => p,
                (None, None) => DEFAULT_PORT,
            };
            return Ok(Some(DistEnv { rank, world, local_rank, master_addr, master_port, launcher }));
        }
        Ok(None)
    }
}

/// What a rank tells rank 0 when it connects.
const MAGIC: &[u8; 4] = b"NLIB";
const VERSION: u32 = 1;

/// Frame kinds on a rank's connection.
const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const ABORT: u8 = 3;
const VALUES: u8 = 4;

fn write_frame(s: &mut TcpStream, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..].copy_from_slice(&(body.len() as u64).to_le_bytes());
    s.write_all(&head)?;
    s.write_all(body)?;
    s.flush()
}

fn read_frame(s: &mut TcpStream, limit: usize) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().unwrap_or([0; 8])) as usize;
    if len > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// Bytes a collective may carry (a bert.base gradient bucket is 26 MB of f64 at most).
const FRAME_LIMIT: usize = 1 << 31;

/// The connections of a rendezvous: rank 0 holds one per other rank, the others one to rank 0.
pub struct Rendezvous {
    /// This rank.
    pub rank: usize,
    /// Ranks in the run.
    pub world: usize,
    /// What rank 0 sent to every rank (an NCCL unique id, or nothing).
    pub payload: Vec<u8>,
    peers: Vec<Option<TcpStream>>,
    timeout: Duration,
}

impl Rendezvous {
    /// Meets the other ranks: rank 0 listens on `MASTER_ADDR:MASTER_PORT` and waits up to
    /// `timeout` for every other rank; they connect (retrying while rank 0 is not up yet) and
    /// send their rank, world size and `fingerprint` (a hash of what must agree: the model and
    /// the run's settings). Rank 0 refuses a wrong world size, a duplicate rank or another
    /// fingerprint, and sends `payload` to everyone once all are there.
    pub fn meet(env: &DistEnv, fingerprint: u64, payload: &[u8], timeout: Duration) -> Result<Rendezvous> {
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        if env.rank == 0 {
            Self::host(env, &addr, fingerprint, payload, timeout)
        } else {
            Self::join(env, &addr, fingerprint, timeout)
        }
    }

    fn host(
        env: &DistEnv,
        addr: &str,
        fingerprint: u64,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Rendezvous> {
        let bind: SocketAddr = format!("0.0.0.0:{}", env.master_port)
            .parse()
            .map_err(|e| Error::msg(format!("rendezvous: port {}: {e}", env.master_port)))?;
        let listener = TcpListener::bind(bind).map_err(|e| {
            Error::msg(format!(
                "rank 0 cannot listen on port {} for the other ranks: {e} (another run may hold it; set \
                 MASTER_PORT to a free port on every rank)",
                env.master_port
            ))
        })?;
        listener.set_nonblocking(true).map_err(|e| Error::msg(format!("rendezvous: {e}")))?;
        let mut peers: Vec<Option<TcpStream>> = (0..env.world).map(|_| None).collect();
        let start = Instant::now();
        let mut refused: Option<String> = None;
        while peers.iter().skip(1).any(Option::is_none) && refused.is_none() {
            if start.elapsed() > timeout {
                let missing: Vec<String> =
                    (1..env.world).filter(|&r| peers[r].is_none()).map(|r| r.to_string()).collect();
                refused = Some(format!(
                    "rank {} did not connect to {addr} within {:.0} s (not started, crashed, or given \
                     another MASTER_ADDR / MASTER_PORT)",
                    missing.join(", "),
                    timeout.as_secs_f64()
                ));
                break;
            }
            let (mut s, from) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(Error::msg(format!("rendezvous on {addr}: {e}"))),
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_nodelay(true);
            let hello = match read_frame(&mut s, 64) {
                Ok((HELLO, b)) if b.len() == 28 && &b[..4] == MAGIC => b,
                _ => continue, // not one of ours: ignore it
            };
            // MAGIC, protocol version (u32), rank (u64), world (u32), fingerprint (u64)
            let version = u32::from_le_bytes(hello[4..8].try_into().unwrap_or([0; 4]));
            let rank = u64::from_le_bytes(hello[8..16].try_into().unwrap_or([0; 8])) as usize;
            let world = u32::from_le_bytes(hello[16..20].try_into().unwrap_or([0; 4])) as usize;
            let fp = u64::from_le_bytes(hello[20..28].try_into().unwrap_or([0; 8]));
            let why = if version != VERSION {
                Some(format!("a rank from {from} speaks protocol {version}, rank 0 speaks {VERSION} (another nli-bert version)"))
            } else if world != env.world {
                Some(format!(
                    "rank {rank} was started with a world of {world} processes, rank 0 with {}: start every rank \
                     with the same WORLD_SIZE",
                    env.world
                ))
            } else if rank == 0 || rank >= env.world {
                Some(format!("a process from {from} says it is rank {rank}, outside 1..{}", env.world))
            } else if peers[rank].is_some() {
                Some(format!("two processes say they are rank {rank} (the second from {from})"))
            } else if fp != fingerprint {
                Some(format!(
                    "rank {rank} runs another model or other settings than rank 0 (fingerprint {fp:016x} vs \
                     {fingerprint:016x}): give every rank the same model, data and flags"
                ))
            } else {
                None
            };
            match why {
                Some(w) => {
                    let _ = write_frame(&mut s, ABORT, w.as_bytes());
                    refused = Some(w);
                }
                None => peers[rank] = Some(s),
            }
        }
        if let Some(why) = refused {
            for s in peers.iter_mut().flatten() {
                let _ = write_frame(s, ABORT, why.as_bytes());
            }
            return Err(Error::msg(format!("rank 0: {why}")));
        }
        for s in peers.iter_mut().flatten() {
            write_frame(s, WELCOME, payload)
                .map_err(|e| Error::msg(format!("rank 0: sending the welcome: {e}")))?;
        }
        Ok(Rendezvous { rank: 0, world: env.world, payload: payload.to_vec(), peers, timeout })
    }

    fn join(env: &DistEnv, addr: &str, fingerprint: u64, timeout: Duration) -> Result<Rendezvous> {
        let start = Instant::now();
        let target: Vec<SocketAddr> = loop {
            match addr.to_socket_addrs() {
                Ok(a) => break a.collect(),
                Err(e) if start.elapsed() > timeout => {
                    return Err(Error::msg(format!(
                        "rank {}: cannot resolve MASTER_ADDR {addr}: {e}",
                        env.rank
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let mut s = loop {
            let tried =
                target.iter().find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).ok());
            match tried {
                Some(s) => break s,
                None if start.elapsed() > timeout => {
                    return Err(Error::msg(format!(
                        "rank {}: rank 0 did not answer at {addr} within {:.0} s (not started, crashed, or \
                         another MASTER_ADDR / MASTER_PORT)",
                        env.rank,
                        timeout.as_secs_f64()
                    )))
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(timeout));
        let mut hello = Vec::with_capacity(28);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&(env.rank as u64).to_le_bytes());
        hello.extend_from_slice(&(env.world as u32).to_le_bytes());
        hello.extend_from_slice(&fingerprint.to_le_bytes());
        let io = |e: std::io::Error| {
            Error::msg(format!("rank {}: rendezvous with rank 0 at {addr}: {e}", env.rank))
        };
        write_frame(&mut s, HELLO, &hello).map_err(io)?;
        match read_frame(&mut s, 1 << 20).map_err(io)? {
            (WELCOME, payload) => {
                let mut peers: Vec<Option<TcpStream>> = (0..env.world).map(|_| None).collect();
                peers[0] = Some(s);
                Ok(Rendezvous { rank: env.rank, world: env.world, payload, peers, timeout })
            }
            (ABORT, why) => Err(Error::msg(format!(
                "rank {}: rank 0 ended the run: {}",
                env.rank,
                String::from_utf8_lossy(&why)
            ))),
            (k, _) => Err(Error::msg(format!(
                "rank {}: rank 0 sent frame kind {k} instead of the welcome",
                env.rank
            ))),
        }
    }

    /// The collectives over these connections.
    pub fn into_comm(self) -> TcpComm {
        TcpComm { inner: Mutex::new(self) }
    }
}

/// A [`Communicator`] over a [`Rendezvous`]'s connections: every rank sends its values to rank 0,
/// which adds them in rank order (f64) and sends the sum back.
pub struct TcpComm {
    inner: Mutex<Rendezvous>,
}

impl TcpComm {
    fn reduce(&self, what: &str, v: &[f64]) -> Result<Vec<f64>> {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (rank, world) = (r.rank, r.world);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let decode = |b: &[u8]| -> Vec<f64> {
            b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
        };
        let timeout = r.timeout;
        if rank != 0 {
            let s = r.peers[0].as_mut().ok_or_else(|| Error::msg("rendezvous: no connection to rank 0"))?;
            let io = |e: std::io::Error| {
                Error::msg(format!(
                    "rank {rank}: {what}: rank 0 did not answer within {:.0} s or disconnected ({e})",
                    timeout.as_secs_f64()
                ))
            };
            write_frame(s, VALUES, &bytes).map_err(io)?;
            return match read_frame(s, FRAME_LIMIT).map_err(io)? {
                (VALUES, b) => Ok(decode(&b)),
                (ABORT, why) => {
                    Err(Error::msg(format!("rank {rank}: {what}: {}", String::from_utf8_lossy(&why))))
                }
                (k, _) => Err(Error::msg(format!("rank {rank}: {what}: unexpected frame kind {k}"))),
            };
        }
        let mut sum = v.to_vec();
        let mut failure: Option<String> = None;
        for peer in 1..world {
            let Some(s) = r.peers[peer].as_mut() else { continue };
            match read_frame(s, FRAME_LIMIT) {
                Ok((VALUES, b)) if b.len() == bytes.len() => {
                    for (acc, x) in sum.iter_mut().zip(decode(&b)) {
                        *acc += x;
                    }
                }
                Ok((VALUES, b)) => {
                    failure = Some(format!(
                        "the ranks disagree on the size of {what} (rank 0: {} values, rank {peer}: {})",
                        v.len(),
                        b.len() / 8
                    ));
                    break;
                }
                Ok((ABORT, why)) => {
                    failure = Some(format!("rank {peer} stopped: {}", String::from_utf8_lossy(&why)));
                    break;
                }
                Ok((k, _)) => {
                    failure = Some(format!("rank {peer} sent frame kind {k} in {what}"));
                    break;
                }
                Err(e) => {
                    failure = Some(format!(
                        "rank {peer} did not reach {what} within {:.0} s or disconnected ({e}; NLI_BERT_RANK_TIMEOUT \
                         sets the wait)",
                        timeout.as_secs_f64()
                    ));
                    break;
                }
            }
        }
        if let Some(why) = failure {
            for s in r.peers.iter_mut().flatten() {
                let _ = write_frame(s, ABORT, why.as_bytes());
            }
            r.peers.iter_mut().for_each(|p| *p = None);
            return Err(Error::msg(format!("rank 0: {why}")));
        }
        let out: Vec<u8> = sum.iter().flat_map(|x| x.to_le_bytes()).collect();
        for peer in 1..world {
            if let Some(s) = r.peers[peer].as_mut() {
                write_frame(s, VALUES, &out).map_err(|e| {
                    Error::msg(format!("rank 0: {what}: sending the sum to rank {peer}: {e}"))
                })?;
            }
        }
        Ok(sum)
    }
}

impl<B: Backend> Communicator<B> for TcpComm {
    fn rank(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).rank
    }

    fn world(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).world
    }

    fn all_reduce_sum(&self, be: &B, buf: B::SliceMut<'_>) -> Result<()> {
        super::parallel::sum_through_host(be, buf, |v| self.reduce("a gradient all-reduce", &v))
    }

    fn all_reduce_host(&self, v: &mut [f64]) -> Result<()> {
        let sum = self.reduce("a metrics all-reduce", v)?;
        v.copy_from_slice(&sum);
        Ok(())
    }

    fn abort(&self, why: &str) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let msg = format!("rank {} stopped: {why}", r.rank);
        for s in r.peers.iter_mut().flatten() {
            let _ = write_frame(s, ABORT, msg.as_bytes());
        }
    }
}
