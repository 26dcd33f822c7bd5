//! Data-parallel training: every rank holds a copy of the model and of the optimizer state, takes
//! a contiguous run of each batch's sequences with about `1/N` of its tokens ([`shard_batch`]),
//! and the ranks sum their gradients ([`Communicator::all_reduce_sum`], in buckets of parameters)
//! before every rank takes the same Adam step. The loss sum and the correct count are summed too.
//!
//! The result is the one-rank result on the whole batch up to the order of the sums: the
//! gradient of `Σ losses` is the sum of the shards' gradients, and each shard drops the units the
//! whole batch would (its [`Origin`] shifts its dropout element indices). d2l trains the same way
//! on every GPU it finds (`nn.DataParallel`: the batch split across GPUs, one Adam step).
//!
//! [`Communicator`] is what a rank needs from its group; [`LocalGroup`] is the in-process
//! implementation (one thread per rank, sums on the host in rank order: CPU ranks and emulated
//! GPUs, and the tests). A rank that fails or stops answering ends the step on every rank with an
//! error that names it, after at most the group's timeout, never a hang.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{Backend, BatchLayout, Origin};
use crate::data::batch::Batch;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::bert::{upload_batch_with, Acts, Mode, Model, Output};
use crate::train::optim::Adam;

/// Parameters per gradient all-reduce: 25 MiB of f32, as PyTorch DDP's default bucket.
pub const BUCKET_ELEMS: usize = 25 << 18;

/// What a rank needs from its group.
pub trait Communicator<B: Backend>: Send {
    /// This rank, `0..world`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world(&self) -> usize;
    /// `buf ← Σ_ranks buf`, the same values on every rank afterwards. Every rank calls the
    /// collectives in the same order with views of the same length.
    fn all_reduce_sum(&self, be: &B, buf: B::SliceMut<'_>) -> Result<()>;
    /// Host values summed over the ranks (losses, counts), the same on every rank.
    fn all_reduce_host(&self, v: &mut [f64]) -> Result<()>;
    /// Tells the other ranks that this one stopped (`why`): their next or current collective
    /// fails with an error that names this rank.
    fn abort(&self, why: &str);
}

/// `buf ← reduce(buf)` through the host: the view's values (as f64) to `reduce`, which returns
/// the sum over the ranks, and back into the view. The collectives of [`LocalComm`] and
/// [`crate::train::dist::TcpComm`].
pub(crate) fn sum_through_host<B: Backend>(
    be: &B,
    buf: B::SliceMut<'_>,
    reduce: impl FnOnce(Vec<f64>) -> Result<Vec<f64>>,
) -> Result<()> {
    let mut buf = buf;
    let host: Vec<f64> = be.download(be.as_slice(&buf))?.iter().map(|x| x.to_f64()).collect();
    let back: Vec<B::F> = reduce(host)?.iter().map(|&x| <B::F as Float>::from_f64(x)).collect();
    be.upload_into(be.reborrow_mut(&mut buf), &back)
}

/// How long a rank waits for the others in a collective before it gives up (seconds), unless
/// `NLI_BERT_RANK_TIMEOUT` says otherwise.
pub const DEFAULT_TIMEOUT_S: u64 = 300;

/// The collective timeout: `NLI_BERT_RANK_TIMEOUT` seconds, else [`DEFAULT_TIMEOUT_S`].
pub fn rank_timeout() -> Duration {
    let s = std::env::var("NLI_BERT_RANK_TIMEOUT").ok().and_then(|v| v.parse::<f64>().ok());
    Duration::from_secs_f64(s.filter(|s| *s > 0.0).unwrap_or(DEFAULT_TIMEOUT_S as f64))
}

/// A group of ranks in one process (one thread each): a collective gathers every rank's values,
/// the last to arrive sums them in rank order (f64), and every rank reads the same sum.
pub struct LocalGroup {
    world: usize,
    timeout: Duration,
    state: Mutex<GroupState>,
    cv: Condvar,
}

struct GroupState {
    slots: Vec<Option<Vec<f64>>>,
    arrived: usize,
    generation: u64,
    result: Arc<Vec<f64>>,
    failed: Option<String>,
}

impl LocalGroup {
    /// A group of `world` ranks whose collectives wait at most `timeout` for the others.
    pub fn new(world: usize, timeout: Duration) -> Arc<LocalGroup> {
        Arc::new(LocalGroup {
            world,
            timeout,
            state: Mutex::new(GroupState {
                slots: vec![None; world],
                arrived: 0,
                generation: 0,
                result: Arc::new(Vec::new()),
                failed: None,
            }),
            cv: Condvar::new(),
        })
    }

    /// Rank `rank`'s handle.
    pub fn comm(self: &Arc<Self>, rank: usize) -> LocalComm {
        assert!(rank < self.world, "rank {rank} of a group of {}", self.world);
        LocalComm { group: self.clone(), rank }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, why: String) {
        let mut s = self.lock();
        if s.failed.is_none() {
            s.failed = Some(why);
        }
        drop(s);
        self.cv.notify_all();
    }

    /// The rank-ordered sum of every rank's `v`.
    fn reduce(&self, rank: usize, what: &str, v: Vec<f64>) -> Result<Arc<Vec<f64>>> {
        let mut s = self.lock();
        if let Some(f) = &s.failed {
            return Err(Error::msg(format!("rank {rank}: {what}: {f}")));
        }
        let gen = s.generation;
        s.slots[rank] = Some(v);
        s.arrived += 1;
        if s.arrived == self.world {
            let n = s.slots[0].as_ref().map_or(0, Vec::len);
            if let Some(r) = s.slots.iter().position(|x| x.as_ref().map_or(0, Vec::len) != n) {
                let why = format!(
                    "the ranks disagree on the size of {what} (rank 0: {n} values, rank {r}: {})",
                    s.slots[r].as_ref().map_or(0, Vec::len)
                );
                s.failed = Some(why.clone());
                drop(s);
                self.cv.notify_all();
                return Err(Error::msg(why));
            }
            let mut sum = vec![0f64; n];
            for slot in s.slots.iter_mut() {
                for (acc, x) in sum.iter_mut().zip(slot.take().unwrap_or_default()) {
                    *acc += x;
                }
            }
            s.result = Arc::new(sum);
            s.arrived = 0;
            s.generation += 1;
            let r = s.result.clone();
            drop(s);
            self.cv.notify_all();
            return Ok(r);
        }
        let start = Instant::now();
        loop {
            if s.generation != gen {
                return Ok(s.result.clone());
            }
            if let Some(f) = &s.failed {
                return Err(Error::msg(format!("rank {rank}: {what}: {f}")));
            }
            let left = self.timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                let missing: Vec<String> =
                    (0..self.world).filter(|&r| s.slots[r].is_none()).map(|r| r.to_string()).collect();
                let why = format!(
                    "rank {} did not reach {what} within {:.0} s (a rank died, hangs or runs other \
                     steps; NLI_BERT_RANK_TIMEOUT sets the wait)",
                    missing.join(", "),
                    self.timeout.as_secs_f64()
                );
                s.failed = Some(why.clone());
                drop(s);
                self.cv.notify_all();
                return Err(Error::msg(format!("rank {rank}: {why}")));
            }
            s = self.cv.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// One rank's handle on a [`LocalGroup`].
pub struct LocalComm {
    group: Arc<LocalGroup>,
    rank: usize,
}

impl<B: Backend> Communicator<B> for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.group.world
    }

    fn all_reduce_sum(&self, be: &B, buf: B::SliceMut<'_>) -> Result<()> {
        sum_through_host(be, buf, |v| {
            self.group.reduce(self.rank, "a gradient all-reduce", v).map(|s| s.to_vec())
        })
    }

    fn all_reduce_host(&self, v: &mut [f64]) -> Result<()> {
        let sum = self.group.reduce(self.rank, "a metrics all-reduce", v.to_vec())?;
        v.copy_from_slice(&sum);
        Ok(())
    }

    fn abort(&self, why: &str) {
        self.group.fail(format!("rank {} stopped: {why}", self.rank));
    }
}

/// A group handle of any kind, usable with any backend.
pub enum AnyComm {
    /// In-process ranks.
    Local(LocalComm),
    /// Processes over TCP ([`crate::train::dist`]).
    Tcp(crate::train::dist::TcpComm),
    /// GPUs summing their gradients with NCCL on the devices; the few host values (metrics) go
    /// through `host`.
    Nccl(crate::backend::gpu::cuda::nccl::NcclComm, Box<AnyComm>),
}

impl<B: Backend> Communicator<B> for AnyComm {
    fn rank(&self) -> usize {
        match self {
            AnyComm::Local(c) => <LocalComm as Communicator<B>>::rank(c),
            AnyComm::Tcp(c) => <crate::train::dist::TcpComm as Communicator<B>>::rank(c),
            AnyComm::Nccl(c, _) => c.rank,
        }
    }
    fn world(&self) -> usize {
        match self {
            AnyComm::Local(c) => <LocalComm as Communicator<B>>::world(c),
            AnyComm::Tcp(c) => <crate::train::dist::TcpComm as Communicator<B>>::world(c),
            AnyComm::Nccl(c, _) => c.world,
        }
    }
    fn all_reduce_sum(&self, be: &B, buf: B::SliceMut<'_>) -> Result<()> {
        match self {
            AnyComm::Local(c) => c.all_reduce_sum(be, buf),
            AnyComm::Tcp(c) => c.all_reduce_sum(be, buf),
            AnyComm::Nccl(c, _) => {
                if be.device_all_reduce(buf, c)? {
                    Ok(())
                } else {
                    Err(Error::msg(format!("{}: NCCL sums tensors of CUDA devices only", be.name())))
                }
            }
        }
    }
    fn all_reduce_host(&self, v: &mut [f64]) -> Result<()> {
        match self {
            AnyComm::Local(c) => <LocalComm as Communicator<B>>::all_reduce_host(c, v),
            AnyComm::Tcp(c) => <crate::train::dist::TcpComm as Communicator<B>>::all_reduce_host(c, v),
            AnyComm::Nccl(_, host) => <AnyComm as Communicator<B>>::all_reduce_host(host, v),
        }
    }
    fn abort(&self, why: &str) {
        match self {
            AnyComm::Local(c) => <LocalComm as Communicator<B>>::abort(c, why),
            AnyComm::Tcp(c) => <crate::train::dist::TcpComm as Communicator<B>>::abort(c, why),
            AnyComm::Nccl(c, host) => {
                c.abort_handle().abort();
                <AnyComm as Communicator<B>>::abort(host, why)
            }
        }
    }
}

/// Runs `f(rank, comm)` on `world` threads of one [`LocalGroup`] and returns each rank's result.
/// A rank whose `f` fails aborts the group (the others fail at their next collective); the error
/// returned is the first rank's own failure, not the others' reports of it.
pub fn run_local_ranks<T: Send>(
    world: usize,
    timeout: Duration,
    f: impl Fn(usize, LocalComm) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    if world == 0 {
        return Err(Error::msg("a data-parallel run needs at least one rank"));
    }
    let group = LocalGroup::new(world, timeout);
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (f, group) = (&f, group.clone());
                scope.spawn(move || {
                    let r = f(rank, group.comm(rank));
                    if let Err(e) = &r {
                        group.fail(format!("rank {rank} stopped: {e}"));
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| h.join().unwrap_or_else(|_| Err(Error::msg(format!("rank {rank} panicked")))))
            .collect()
    });
    let cause = group.lock().failed.clone();
    let mut out = Vec::with_capacity(world);
    let mut first_err: Option<Error> = None;
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => out.push(v),
            Err(e) => {
                // Prefer the rank whose own failure caused the others'.
                let own = cause.as_deref().is_some_and(|c| c.starts_with(&format!("rank {rank} stopped")));
                if first_err.is_none() || own {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Splits a batch into `world` contiguous shards with about equal token counts: rank `r` takes
/// the sequences whose middle falls in `[r·T/world, (r+1)·T/world)`. A shard may be empty (a batch
/// with fewer sequences than ranks). Each comes with its [`Origin`] in the whole batch.
pub fn shard_batch(batch: &Batch, world: usize) -> Vec<(Batch, Origin)> {
    (0..world).map(|r| shard_of(batch, world, r)).collect()
}

/// Rank `rank`'s shard of [`shard_batch`] alone (what each rank builds at every step).
pub fn shard_of(batch: &Batch, world: usize, rank: usize) -> (Batch, Origin) {
    let t: usize = batch.lens.iter().sum();
    // The owner of each sequence, from twice its middle to stay in integers: (2·start + len) / 2T
    // · world; non-decreasing along the batch.
    let (mut start, mut origin, mut seqs) = (0usize, Origin::default(), 0..0);
    for (i, &len) in batch.lens.iter().enumerate() {
        let owner = if t == 0 { 0 } else { ((2 * start + len) * world / (2 * t)).min(world - 1) };
        if owner < rank {
            origin = Origin { rows: origin.rows + len, seqs: i + 1, att: origin.att + len * len };
        } else if owner == rank {
            seqs = if seqs.is_empty() { i..i + 1 } else { seqs.start..i + 1 };
        }
        start += len;
    }
    let seqs = if seqs.is_empty() { origin.seqs..origin.seqs } else { seqs };
    let rows = origin.rows..origin.rows + batch.lens[seqs.clone()].iter().sum::<usize>();
    let shard = Batch {
        tokens: batch.tokens[rows.clone()].to_vec(),
        segments: batch.segments[rows.clone()].to_vec(),
        positions: batch.positions[rows].to_vec(),
        lens: batch.lens[seqs.clone()].to_vec(),
        labels: batch.labels[seqs].to_vec(),
    };
    (shard, origin)
}

/// The gradient buckets: the trainable ranges, last parameters first (the order the backward
/// finishes them), cut into pieces of at most `bucket` elements.
pub fn gradient_buckets(ranges: &[Range<usize>], bucket: usize) -> Vec<Range<usize>> {
    let bucket = bucket.max(1);
    let mut out = Vec::new();
    for r in ranges.iter().rev() {
        let mut end = r.end;
        while end > r.start {
            let start = end.saturating_sub(bucket).max(r.start);
            out.push(start..end);
            end = start;
        }
    }
    out
}

impl<B: Backend> Model<B> {
    /// One data-parallel training step of rank `comm.rank()` on the whole `batch` (every rank
    /// passes the same batch and takes its shard): forward and backward on the shard, the loss
    /// sum, correct count and gradients summed over the ranks, then the same Adam step as every
    /// other rank. Returns the whole batch's metrics. After a non-finite loss (on any rank) no
    /// rank steps, as [`Model::train_step`].
    pub fn train_step_parallel(
        &mut self,
        be: &B,
        opt: &mut Adam<B>,
        acts: &mut Acts<B>,
        batch: &Batch,
        mode: Mode,
        comm: &dyn Communicator<B>,
    ) -> Result<Output> {
        let world = comm.world();
        let (shard, origin) = shard_of(batch, world, comm.rank());
        opt.zero_grad(be, self);
        let device_batch = if shard.lens.is_empty() {
            None
        } else {
            let layout = BatchLayout::new(&shard.lens).with_origin(origin);
            Some(upload_batch_with(be, &shard, layout)?)
        };
        let local = match &device_batch {
            Some(db) => self.forward(be, acts, db, mode)?,
            None => Output::default(),
        };
        let mut m = [local.loss_sum, local.correct as f64, local.n as f64];
        comm.all_reduce_host(&mut m)?;
        let out = Output { loss_sum: m[0], correct: m[1] as usize, n: m[2] as usize };
        if out.loss_sum.is_finite() {
            // Each group of gradients is summed as soon as the backward has completed it (the
            // head, then the blocks from the top), the rest (the embeddings) at the end: every
            // rank issues the same collectives in the same order, an empty shard included.
            let trainable = self.layout.trainable_ranges();
            let stages = self.grad_stages();
            let stages = if stages.len() == self.cfg.layers + 1 { stages } else { Vec::new() };
            let reduce = |be: &B, grads: &mut B::Buf, r: Range<usize>| -> Result<()> {
                let parts: Vec<Range<usize>> = trainable
                    .iter()
                    .map(|t| t.start.max(r.start)..t.end.min(r.end))
                    .filter(|x| x.start < x.end)
                    .collect();
                for b in gradient_buckets(&parts, BUCKET_ELEMS) {
                    comm.all_reduce_sum(be, be.slice_mut(grads, b))?;
                }
                Ok(())
            };
            match &device_batch {
                Some(db) => self.backward_with(be, acts, db, mode, &mut |be, g, r| reduce(be, g, r))?,
                None => {
                    for r in stages.iter().cloned() {
                        reduce(be, &mut self.grads, r)?;
                    }
                }
            }
            // What no stage covered, in buffer order.
            let mut covered = stages.clone();
            covered.sort_by_key(|r| r.start);
            let mut at = 0;
            let total = self.layout.total;
            for r in covered.iter().cloned().chain(std::iter::once(total..total)) {
                if at < r.start {
                    reduce(be, &mut self.grads, at..r.start)?;
                }
                at = at.max(r.end);
            }
            be.collectives_wait()?;
            opt.step_batch(be, self, &batch.tokens);
        }
        Ok(out)
    }
}
