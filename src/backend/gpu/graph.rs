//! Step graphs: the ops of one training step recorded once and replayed (CUDA graphs on a GPU;
//! the emulator records and replays the same list), shared by both devices.
//!
//! The life of a graph, driven by the step code above the [`Device`](super::device::Device):
//! 1. **Capture.** The step's host code runs once with the device capturing: every op (kernel
//!    launch, matrix product, memset, upload) is recorded instead of run (CUDA: stream capture);
//!    an upload's bytes are staged in host memory the graph copies from at each replay (pinned on
//!    CUDA). Reading device memory back is an error while capturing.
//! 2. **Update.** For the next step the same host code runs again with the device updating: each
//!    op must match the recorded op at its position (same kernel and launch shape, same product,
//!    same memset, an upload of the same size to the same place); a kernel whose arguments changed
//!    (the dropout step, Adam's bias corrections) gets its new arguments written into the graph
//!    (CUDA: `cuGraphExecKernelNodeSetParams`), an upload's new bytes go into its staging buffer.
//!    Nothing runs. A mismatch (a shape that changed) is not an error of the device: the update
//!    ends with [`UpdateOutcome::Mismatch`] and the caller captures a new graph.
//! 3. **Replay**: the recorded ops run in order on the stream.
//!
//! Step-dependent scalars thus reach the kernels as arguments updated in the graph, computed on the
//! host exactly as without graphs (PyTorch's f64 bias corrections), rather than read from device
//! memory: the kernels, and every result, are the same with and without graphs.

use super::device::{DevPtr, Device, Epilogue, Gemm, GemmMath, KArg, LaunchCfg};
use super::memory::{self, Pool};
use super::Gpu;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Which matrix product an op is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GemmOp {
    /// `Device::sgemm`.
    F32,
    /// `Device::gemm_bf16` (C stored as bf16 when true).
    Bf16(bool),
    /// `Device::gemm_fast_bf16`.
    FastBf16,
    /// `Device::gemm_lt`.
    Lt(GemmMath, Epilogue),
}

/// One recorded op.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A kernel launch.
    Launch {
        /// Kernel name.
        name: String,
        /// Launch shape.
        cfg: LaunchCfg,
        /// Arguments (updated in place by an update).
        args: Vec<KArg>,
    },
    /// A matrix product.
    Gemm {
        /// Which product.
        op: GemmOp,
        /// Its operands.
        g: Gemm,
    },
    /// `Device::memset_zero`.
    Memset {
        /// Destination.
        dst: DevPtr,
        /// Bytes.
        bytes: usize,
    },
    /// `Device::mark_uninit`.
    Uninit {
        /// Destination.
        dst: DevPtr,
        /// Bytes.
        bytes: usize,
    },
    /// `Device::copy_htod` from the op's staging buffer.
    Upload {
        /// Destination.
        dst: DevPtr,
        /// Bytes.
        len: usize,
    },
}

impl Op {
    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Op::Launch { name, cfg, .. } => {
                format!("kernel `{name}` grid {:?} block {:?}", cfg.grid, cfg.block)
            }
            Op::Gemm { op, g } => {
                format!(
                    "{op:?} product m={} n={} k={} (A {:#x}, B {:#x}, C {:#x})",
                    g.m, g.n, g.k, g.a, g.b, g.c
                )
            }
            Op::Memset { dst, bytes } => format!("memset {bytes} bytes at {dst:#x}"),
            Op::Uninit { dst, bytes } => format!("scratch {bytes} bytes at {dst:#x}"),
            Op::Upload { dst, len } => format!("upload {len} bytes to {dst:#x}"),
        }
    }
}

/// A recorded op and the device's own data for it (`X`: a CUDA graph node and pinned staging
/// memory; the emulator's staging bytes).
pub struct Recorded<X> {
    /// The op.
    pub op: Op,
    /// The device's data.
    pub extra: X,
}

/// What an update found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Every op matched; the graph holds the new arguments and bytes.
    Updated,
    /// The ops differ from the graph's (the reason): capture a new graph.
    Mismatch(String),
}

/// What a device is doing with graphs.
enum Mode {
    Idle,
    Capturing(Vec<Op>),
    Updating { id: u64, cursor: usize, mismatch: Option<String> },
}

/// What the recorder says a device method should do with an op.
pub enum Intercept<'a, X> {
    /// Not capturing or updating: run the op.
    Run,
    /// Capturing: the op was appended (the device records its own data in `extra` at
    /// [`Graphs::set_last_extra`]); CUDA also runs the call on the capturing stream, the emulator
    /// does nothing more.
    Captured,
    /// Updating: the op matched the recorded one, whose device data is here; `changed` says
    /// whether a launch's arguments differ (they are already written into the recorded op).
    Matched {
        /// The recorded op's device data.
        extra: &'a mut X,
        /// Whether a kernel's arguments changed.
        changed: bool,
        /// The recorded op (with the new arguments).
        op: &'a Op,
    },
    /// Updating, after a mismatch: ignore the op.
    Ignored,
}

/// The graphs of one device and what it is doing with them.
pub struct Graphs<X> {
    mode: Mode,
    graphs: HashMap<u64, Vec<Recorded<X>>>,
    /// Device data of the ops being captured, in order (beside `Mode::Capturing`'s ops).
    capture_extra: Vec<X>,
    next_id: u64,
}

impl<X> Default for Graphs<X> {
    fn default() -> Self {
        Graphs { mode: Mode::Idle, graphs: HashMap::new(), capture_extra: Vec::new(), next_id: 1 }
    }
}

impl<X: Default> Graphs<X> {
    /// Whether ops are being captured.
    pub fn capturing(&self) -> bool {
        matches!(self.mode, Mode::Capturing(_))
    }

    /// The graph being updated, if any.
    pub fn updating(&self) -> Option<u64> {
        match self.mode {
            Mode::Updating { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether anything but plain running is going on (capture or update).
    pub fn busy(&self) -> bool {
        !matches!(self.mode, Mode::Idle)
    }

    /// Starts a capture.
    pub fn begin_capture(&mut self) -> Result<()> {
        if self.busy() {
            return Err(Error::msg("graph capture: already capturing or updating a graph"));
        }
        self.mode = Mode::Capturing(Vec::new());
        self.capture_extra.clear();
        Ok(())
    }

    /// Ends a capture; the ops and their device data become graph `id` (returned).
    pub fn end_capture(&mut self) -> Result<(u64, &mut Vec<Recorded<X>>)> {
        let Mode::Capturing(ops) = std::mem::replace(&mut self.mode, Mode::Idle) else {
            return Err(Error::msg("graph capture: end without a begin"));
        };
        let extra = std::mem::take(&mut self.capture_extra);
        let list: Vec<Recorded<X>> =
            ops.into_iter().zip(extra).map(|(op, extra)| Recorded { op, extra }).collect();
        let id = self.next_id;
        self.next_id += 1;
        Ok((id, self.graphs.entry(id).or_insert(list)))
    }

    /// Abandons a capture (after an error), dropping what was recorded.
    pub fn abort_capture(&mut self) -> Vec<X> {
        if self.capturing() {
            self.mode = Mode::Idle;
        }
        std::mem::take(&mut self.capture_extra)
    }

    /// Starts updating graph `id`.
    pub fn begin_update(&mut self, id: u64) -> Result<()> {
        if self.busy() {
            return Err(Error::msg("graph update: already capturing or updating a graph"));
        }
        if !self.graphs.contains_key(&id) {
            return Err(Error::msg(format!("graph update: no graph {id}")));
        }
        self.mode = Mode::Updating { id, cursor: 0, mismatch: None };
        Ok(())
    }

    /// Ends an update.
    pub fn end_update(&mut self) -> Result<UpdateOutcome> {
        let Mode::Updating { id, cursor, mismatch } = std::mem::replace(&mut self.mode, Mode::Idle) else {
            return Err(Error::msg("graph update: end without a begin"));
        };
        if let Some(why) = mismatch {
            return Ok(UpdateOutcome::Mismatch(why));
        }
        let len = self.graphs.get(&id).map_or(0, Vec::len);
        if cursor != len {
            return Ok(UpdateOutcome::Mismatch(format!("the step issued {cursor} ops, the graph has {len}")));
        }
        Ok(UpdateOutcome::Updated)
    }

    /// Graph `id`'s ops.
    pub fn graph(&mut self, id: u64) -> Result<&mut Vec<Recorded<X>>> {
        self.graphs.get_mut(&id).ok_or_else(|| Error::msg(format!("no graph {id}")))
    }

    /// Puts back graph `id`'s ops (taken out by [`Graphs::remove`] to replay them).
    pub fn insert(&mut self, id: u64, ops: Vec<Recorded<X>>) {
        self.graphs.insert(id, ops);
    }

    /// Removes graph `id`, returning its ops.
    pub fn remove(&mut self, id: u64) -> Option<Vec<Recorded<X>>> {
        self.graphs.remove(&id)
    }

    /// Sets the device data of the op captured last.
    pub fn set_last_extra(&mut self, x: X) {
        if let Some(last) = self.capture_extra.last_mut() {
            *last = x;
        }
    }

    /// Decides what to do with `op` (see [`Intercept`]).
    pub fn intercept(&mut self, op: Op) -> Intercept<'_, X> {
        match &mut self.mode {
            Mode::Idle => Intercept::Run,
            Mode::Capturing(ops) => {
                ops.push(op);
                self.capture_extra.push(X::default());
                Intercept::Captured
            }
            Mode::Updating { id, cursor, mismatch } => {
                if mismatch.is_some() {
                    return Intercept::Ignored;
                }
                let i = *cursor;
                *cursor += 1;
                let Some(rec) = self.graphs.get_mut(id).and_then(|g| g.get_mut(i)) else {
                    *mismatch = Some(format!("op {i} ({}) is past the graph's end", op.describe()));
                    return Intercept::Ignored;
                };
                match (&mut rec.op, &op) {
                    (
                        Op::Launch { name, cfg, args },
                        Op::Launch { name: new_name, cfg: new_cfg, args: new_args },
                    ) if name == new_name
                        && cfg == new_cfg
                        && args.len() == new_args.len()
                        && args.iter().zip(new_args).all(|(a, b)| a.kind() == b.kind()) =>
                    {
                        let changed = args != new_args;
                        if changed {
                            args.clone_from(new_args);
                        }
                        Intercept::Matched { extra: &mut rec.extra, changed, op: &rec.op }
                    }
                    (Op::Upload { dst, len }, Op::Upload { dst: d2, len: l2 }) if dst == d2 && len == l2 => {
                        Intercept::Matched { extra: &mut rec.extra, changed: true, op: &rec.op }
                    }
                    (old, new) if old == new => {
                        Intercept::Matched { extra: &mut rec.extra, changed: false, op: &rec.op }
                    }
                    (old, new) => {
                        *mismatch =
                            Some(format!("op {i} is {}, the graph has {}", new.describe(), old.describe()));
                        Intercept::Ignored
                    }
                }
            }
        }
    }
}

// ---- the GPU backend's side -----------------------------------------------------------------

impl<D: Device> Gpu<D> {
    /// Captures a step graph: `f` issues the step's ops, which are recorded, not run (replay the
    /// graph to run them). Earlier work is waited for first.
    pub fn graph_capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<GpuGraph<D>> {
        self.check()?;
        if self.profiling.load(Ordering::Relaxed) {
            return Err(crate::error::Error::msg("step graphs cannot be captured while ops are timed"));
        }
        self.dev.begin_capture()?;
        self.pool.begin_capture();
        let r = f().and_then(|()| self.sticky_error().map_or(Ok(()), Err));
        if let Err(e) = r {
            self.dev.abort_capture();
            let blocks = self.pool.end_capture();
            self.pool.release(&blocks);
            self.forget_capture_error();
            return Err(e);
        }
        let blocks = self.pool.end_capture();
        match self.dev.end_capture() {
            Ok(id) => Ok(GpuGraph { dev: self.dev.clone(), pool: self.pool.clone(), id, blocks }),
            Err(e) => {
                self.pool.release(&blocks);
                self.forget_capture_error();
                Err(e)
            }
        }
    }

    /// After a failed capture: an op that failed while being captured failed the capture (nothing
    /// ran), not the device, so its error is not kept; the device is checked instead.
    fn forget_capture_error(&self) {
        *self.sticky.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let r = self.dev.synchronize();
        self.record(r);
    }

    /// Re-issues a step's ops into `graph` (new kernel arguments and uploads; nothing runs).
    /// `Ok(Some(why))`: the ops no longer match the graph's (capture a new one).
    pub fn graph_update(
        &self,
        graph: &GpuGraph<D>,
        f: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<String>> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        self.dev.begin_update(graph.id)?;
        self.pool.begin_update(&graph.blocks);
        let r = f();
        let outcome = self.dev.end_update();
        let blocks_ok = self.pool.end_update();
        r?;
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        Ok(match outcome? {
            UpdateOutcome::Mismatch(why) => Some(why),
            UpdateOutcome::Updated if !blocks_ok => {
                Some("the step took other memory blocks than the graph's".to_string())
            }
            UpdateOutcome::Updated => None,
        })
    }

    /// Runs a captured step graph.
    pub fn graph_replay(&self, graph: &GpuGraph<D>) -> Result<()> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        // SAFETY: the graph owns its scratch blocks and its other buffers are kept alive by the
        // step code that captured it (the model, optimizer and activations).
        let r = unsafe { self.dev.replay(graph.id) };
        self.record(r);
        self.sticky_error().map_or(Ok(()), Err)
    }
}

/// A captured step graph of a [`Gpu`] (see [`graph`]): its device id and the pool blocks its
/// ops address; dropping it frees the graph and gives the blocks back.
pub struct GpuGraph<D: Device> {
    dev: Arc<D>,
    pool: Arc<Pool<D>>,
    id: u64,
    blocks: Vec<memory::Block>,
}

impl<D: Device> Drop for GpuGraph<D> {
    fn drop(&mut self) {
        self.dev.drop_graph(self.id);
        self.pool.release(&self.blocks);
    }
}
