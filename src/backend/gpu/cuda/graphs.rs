//! CUDA graphs for [`Cuda`]: stream capture of a training step, kernel-node argument updates and
//! replay (see [`super::super::graph`] for the protocol both devices follow).
//!
//! While capturing, every op runs its real call on the capturing stream (so CUDA records it) and
//! is also recorded by [`Graphs`], a launch with its kernel node (the capture's last node, from
//! `cuStreamGetCaptureInfo_v3`), an upload with the pinned host buffer the memcpy node reads.
//! Capture mode is `RELAXED`, so that the pool may still allocate during a first capture.
//! Updating writes new kernel arguments with `cuGraphExecKernelNodeSetParams` and new upload bytes
//! into the pinned buffers (after waiting for the graph's own last replay, an event recorded after
//! each launch: it may still read them; other graphs keep running).

use std::ffi::c_void;

use cudarc::driver::result as drv;
use cudarc::driver::sys;

use super::super::device::{DevPtr, KArg, LaunchCfg};
use super::super::graph::{Graphs, Intercept, Op, Recorded, UpdateOutcome};
use super::{bind, drv_err, Cuda};
use crate::error::{Error, Result};

/// A recorded op's CUDA data: its kernel node (launches) or pinned staging memory (uploads).
pub(crate) struct CudaOp {
    node: sys::CUgraphNode,
    staging: *mut c_void,
    len: usize,
}

impl Default for CudaOp {
    fn default() -> Self {
        CudaOp { node: std::ptr::null_mut(), staging: std::ptr::null_mut(), len: 0 }
    }
}

// SAFETY: the node handle and the pinned pointer are used only under the device's Mutex.
unsafe impl Send for CudaOp {}

/// An instantiated graph and the event recorded after its last replay.
pub(crate) struct Exec {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    done: sys::CUevent,
}

// SAFETY: used only under the device's Mutex, with the context bound.
unsafe impl Send for Exec {}

/// Frees the pinned staging memory of recorded ops.
fn free_staging(ops: impl IntoIterator<Item = CudaOp>) {
    for op in ops {
        if !op.staging.is_null() {
            // SAFETY: allocated by cuMemAllocHost in `upload`, freed once here.
            let _ = unsafe { sys::cuMemFreeHost(op.staging) };
        }
    }
}

/// What a device method does with an op while graphs are in use.
pub(super) enum Step {
    /// Run the call as usual (idle, or capturing: the stream records it).
    Run,
    /// Recorded or matched: do nothing more.
    Done,
}

impl Cuda {
    /// The op's fate: `Run` when idle or capturing (the real call is then captured), `Done` when
    /// updating (matched; products and memsets have nothing to update).
    pub(super) fn graph_op(&self, op: Op) -> Step {
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        match g.intercept(op) {
            Intercept::Run | Intercept::Captured => Step::Run,
            Intercept::Matched { .. } | Intercept::Ignored => Step::Done,
        }
    }

    /// Whether a graph is being captured or updated.
    pub(super) fn graph_busy(&self) -> bool {
        self.graphs.lock().unwrap_or_else(|p| p.into_inner()).busy()
    }

    /// An error if a graph is being captured or updated (`what` is not allowed then).
    pub(crate) fn not_in_graph(&self, what: &str) -> Result<()> {
        if self.graph_busy() {
            return Err(Error::msg(format!("CUDA: {what} while capturing or updating a step graph")));
        }
        Ok(())
    }

    /// A kernel launch under the graph protocol.
    ///
    /// # Safety
    /// As for [`Cuda::launch_in`].
    pub(super) unsafe fn graph_launch(&self, name: &str, cfg: &LaunchCfg, args: &[KArg]) -> Result<()> {
        let module = self.kernels.as_ref().ok_or_else(|| Error::msg("no kernels are loaded"))?;
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        if !g.busy() {
            drop(g);
            // SAFETY: forwarded.
            return unsafe { self.launch_in(module, name, cfg, args) };
        }
        let updating = g.updating();
        match g.intercept(Op::Launch { name: name.to_string(), cfg: *cfg, args: args.to_vec() }) {
            Intercept::Run => {
                drop(g);
                // SAFETY: forwarded.
                unsafe { self.launch_in(module, name, cfg, args) }
            }
            Intercept::Captured => {
                // SAFETY: forwarded; the stream is capturing, so this records a kernel node.
                unsafe { self.launch_in(module, name, cfg, args)? };
                let node = self.last_captured_node()?;
                g.set_last_extra(CudaOp { node, ..CudaOp::default() });
                Ok(())
            }
            Intercept::Matched { extra, changed, .. } => {
                if !changed {
                    return Ok(());
                }
                let exec = updating
                    .and_then(|id| {
                        self.execs.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|e| e.exec)
                    })
                    .ok_or_else(|| {
                        Error::msg("CUDA graph update: the graph being updated has no executable")
                    })?;
                bind(self.ctx)?;
                let f = module.function(name, cfg.shared_bytes)?;
                let mut slots: Vec<u64> = args.iter().map(|a| u64::from_le_bytes(a.to_slot())).collect();
                let mut params: Vec<*mut c_void> =
                    slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
                let p = sys::CUDA_KERNEL_NODE_PARAMS {
                    func: f,
                    gridDimX: cfg.grid[0],
                    gridDimY: cfg.grid[1],
                    gridDimZ: cfg.grid[2],
                    blockDimX: cfg.block[0],
                    blockDimY: cfg.block[1],
                    blockDimZ: cfg.block[2],
                    sharedMemBytes: cfg.shared_bytes,
                    kernelParams: params.as_mut_ptr(),
                    extra: std::ptr::null_mut(),
                    kern: std::ptr::null_mut(),
                    ctx: std::ptr::null_mut(),
                };
                // SAFETY: `exec` and the node belong to this context's graph; the parameters
                // point at one slot per argument (copied by the call), as for cuLaunchKernel.
                unsafe { sys::cuGraphExecKernelNodeSetParams_v2(exec, extra.node, &p) }
                    .result()
                    .map_err(drv_err(format_args!("updating the arguments of `{name}` in a step graph")))
            }
            Intercept::Ignored => Ok(()),
        }
    }

    /// The kernel node the capturing stream recorded last.
    fn last_captured_node(&self) -> Result<sys::CUgraphNode> {
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        let mut deps: *const sys::CUgraphNode = std::ptr::null();
        let mut n = 0usize;
        // SAFETY: the stream is live; the out-pointers are valid; the dependency array is owned
        // by the driver and read before the next call on the stream.
        unsafe {
            sys::cuStreamGetCaptureInfo_v3(
                self.stream,
                &mut status,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut deps,
                std::ptr::null_mut(),
                &mut n,
            )
        }
        .result()
        .map_err(drv_err("cuStreamGetCaptureInfo"))?;
        if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE {
            return Err(Error::msg(format!("CUDA graph capture: the stream is not capturing ({status:?})")));
        }
        if n != 1 || deps.is_null() {
            return Err(Error::msg(format!(
                "CUDA graph capture: expected one node after a launch, the stream has {n} dependencies"
            )));
        }
        // SAFETY: `deps` points at `n` = 1 node handles.
        Ok(unsafe { *deps })
    }

    /// An upload under the graph protocol; `Ok(false)`: not in a graph, copy as usual.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` lies inside one live allocation.
    pub(super) unsafe fn graph_upload(&self, dst: DevPtr, src: &[u8]) -> Result<bool> {
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        match g.intercept(Op::Upload { dst, len: src.len() }) {
            Intercept::Run => Ok(false),
            Intercept::Captured => {
                bind(self.ctx)?;
                let mut staging: *mut c_void = std::ptr::null_mut();
                // SAFETY: allocates pinned host memory, freed with the graph.
                unsafe { sys::cuMemAllocHost_v2(&mut staging, src.len().max(1)) }
                    .result()
                    .map_err(drv_err(format_args!("allocating {} bytes of pinned staging", src.len())))?;
                g.set_last_extra(CudaOp { staging, len: src.len(), ..CudaOp::default() });
                // SAFETY: `staging` holds src.len() bytes; the copy is captured as a memcpy node
                // that reads the pinned buffer at each replay.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), staging.cast::<u8>(), src.len());
                    drv::memcpy_htod_async(
                        dst,
                        std::slice::from_raw_parts(staging.cast::<u8>(), src.len()),
                        self.stream,
                    )
                }
                .map_err(drv_err("capturing an upload"))?;
                Ok(true)
            }
            Intercept::Matched { extra, .. } => {
                if extra.len != src.len() || extra.staging.is_null() {
                    return Err(Error::msg("CUDA graph update: an upload's staging buffer does not fit"));
                }
                // SAFETY: the staging buffer holds `len` bytes; begin_update waited for the
                // stream, so no replay reads it now.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), extra.staging.cast::<u8>(), src.len()) };
                Ok(true)
            }
            Intercept::Ignored => Ok(true),
        }
    }

    pub(super) fn graph_begin_capture(&self) -> Result<()> {
        bind(self.ctx)?;
        self.graphs.lock().unwrap_or_else(|p| p.into_inner()).begin_capture()?;
        // SAFETY: a live stream of this context.
        let r = unsafe {
            sys::cuStreamBeginCapture_v2(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
            )
        }
        .result()
        .map_err(drv_err("cuStreamBeginCapture"));
        if r.is_err() {
            free_staging(self.graphs.lock().unwrap_or_else(|p| p.into_inner()).abort_capture());
        }
        r
    }

    pub(super) fn graph_end_capture(&self) -> Result<u64> {
        bind(self.ctx)?;
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: the stream is capturing (begin_capture); the graph is returned to us.
        let ended = unsafe { sys::cuStreamEndCapture(self.stream, &mut graph) }
            .result()
            .map_err(drv_err("cuStreamEndCapture"));
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        let inst = ended.and_then(|()| {
            // SAFETY: `graph` is the captured graph.
            unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) }
                .result()
                .map_err(drv_err("cuGraphInstantiateWithFlags"))
        });
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = inst {
            free_staging(g.abort_capture());
            if !graph.is_null() {
                // SAFETY: the graph came from cuStreamEndCapture and is not used again.
                let _ = unsafe { sys::cuGraphDestroy(graph) };
            }
            return Err(e);
        }
        let done = match drv::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING) {
            Ok(e) => e,
            Err(e) => {
                free_staging(g.abort_capture());
                // SAFETY: made above, not used again.
                unsafe {
                    let _ = sys::cuGraphExecDestroy(exec);
                    let _ = sys::cuGraphDestroy(graph);
                }
                return Err(drv_err("cuEventCreate")(e));
            }
        };
        let id = match g.end_capture() {
            Ok((id, _)) => id,
            Err(e) => {
                // SAFETY: made above, not used again.
                unsafe {
                    let _ = sys::cuGraphExecDestroy(exec);
                    let _ = sys::cuGraphDestroy(graph);
                    let _ = sys::cuEventDestroy_v2(done);
                }
                return Err(e);
            }
        };
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Exec { graph, exec, done });
        Ok(id)
    }

    pub(super) fn graph_abort_capture(&self) {
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        if !g.capturing() {
            return;
        }
        if bind(self.ctx).is_ok() {
            let mut graph: sys::CUgraph = std::ptr::null_mut();
            // SAFETY: the stream is capturing; the partial graph is destroyed at once.
            unsafe {
                if sys::cuStreamEndCapture(self.stream, &mut graph).result().is_ok() && !graph.is_null() {
                    let _ = sys::cuGraphDestroy(graph);
                }
            }
        }
        free_staging(g.abort_capture());
    }

    pub(super) fn graph_begin_update(&self, id: u64) -> Result<()> {
        bind(self.ctx)?;
        // The graph's last replay may still read its staging buffers: wait for that replay only
        // (an event never recorded is complete), so that the host updates this graph while the
        // device runs others.
        let done = self.execs.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|e| e.done);
        if let Some(done) = done {
            // SAFETY: an event of this context.
            unsafe { sys::cuEventSynchronize(done) }
                .result()
                .map_err(drv_err("waiting for a graph's last replay"))?;
        }
        self.graphs.lock().unwrap_or_else(|p| p.into_inner()).begin_update(id)
    }

    pub(super) fn graph_end_update(&self) -> Result<UpdateOutcome> {
        self.graphs.lock().unwrap_or_else(|p| p.into_inner()).end_update()
    }

    pub(super) fn graph_replay(&self, id: u64) -> Result<()> {
        self.not_in_graph("replaying a graph")?;
        bind(self.ctx)?;
        let (exec, done) = self
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|e| (e.exec, e.done))
            .ok_or_else(|| Error::msg(format!("CUDA: no step graph {id}")))?;
        // SAFETY: `exec` is an instantiated graph of this context and `done` an event of it; the
        // caller keeps the graph's memory live.
        unsafe {
            sys::cuGraphLaunch(exec, self.stream).result().map_err(drv_err("cuGraphLaunch"))?;
            sys::cuEventRecord(done, self.stream).result().map_err(drv_err("cuEventRecord after a graph"))
        }
    }

    pub(super) fn graph_drop(&self, id: u64) {
        let ops: Option<Vec<Recorded<CudaOp>>> =
            self.graphs.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let exec = self.execs.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if bind(self.ctx).is_err() {
            return;
        }
        // SAFETY: wait for a replay that may still run, then destroy what belongs to graph `id`.
        unsafe {
            let _ = drv::stream::synchronize(self.stream);
            if let Some(e) = exec {
                let _ = sys::cuGraphExecDestroy(e.exec);
                let _ = sys::cuGraphDestroy(e.graph);
                let _ = sys::cuEventDestroy_v2(e.done);
            }
        }
        free_staging(ops.into_iter().flatten().map(|r| r.extra));
    }

    /// Drops every graph (before the context goes).
    pub(super) fn graph_drop_all(&self) {
        let ids: Vec<u64> = self.execs.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        for id in ids {
            self.graph_drop(id);
        }
    }
}

/// The graphs state of a [`Cuda`].
pub(crate) type CudaGraphs = Graphs<CudaOp>;
