//! NCCL for data parallel over several GPUs: the gradients of the ranks summed on the devices
//! (`ncclAllReduce` on each rank's stream) instead of through the host. Communicators come from
//! `ncclCommInitAll` for the GPUs of one process, or from `ncclCommInitRank` with the unique id
//! rank 0 sends at the rendezvous (one process per GPU, any number of machines). `libnccl.so.2` is
//! loaded at run time like the other CUDA libraries (`NLI_BERT_CUDA_LIB_DIR`, the PyPI wheels'
//! `nvidia/nccl/lib`); it is needed only when more than one GPU takes part.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::driver::{result as drv, sys};
use cudarc::nccl::{result as nccl, sys as nccl_sys};

use super::libs::{missing_library_error, preload_libraries};
use super::{bind, Cuda};
use crate::backend::gpu::device::DevPtr;
use crate::error::{Error, Result};

/// One rank's NCCL communicator.
pub struct NcclComm {
    inner: Arc<Handle>,
    /// The rank in the communicator.
    pub rank: usize,
    /// Ranks in the communicator.
    pub world: usize,
}

/// The communicator handle, shared with [`NcclAbort`].
struct Handle {
    comm: nccl_sys::ncclComm_t,
    aborted: AtomicBool,
}

// SAFETY: an NCCL communicator may be used from any thread, one collective at a time (each rank
// uses only its own), and ncclCommAbort may be called from another thread to end a hung one.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

/// Aborts a communicator from any thread (its pending collectives return): what a failed rank
/// does to every communicator of the process, so that no rank waits for it forever.
#[derive(Clone)]
pub struct NcclAbort(Arc<Handle>);

impl NcclAbort {
    /// `ncclCommAbort`, once.
    pub fn abort(&self) {
        if !self.0.aborted.swap(true, Ordering::SeqCst) && !self.0.comm.is_null() {
            // SAFETY: a live communicator, aborted once (it is freed by the call).
            let _ = unsafe { nccl::comm_abort(self.0.comm) };
        }
    }
}

impl NcclComm {
    /// A handle that aborts this communicator.
    pub fn abort_handle(&self) -> NcclAbort {
        NcclAbort(self.inner.clone())
    }

    fn raw(&self) -> Result<nccl_sys::ncclComm_t> {
        if self.inner.aborted.load(Ordering::SeqCst) {
            return Err(Error::msg("NCCL: the communicator was aborted (another rank failed)"));
        }
        Ok(self.inner.comm)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.comm.is_null() && !*self.aborted.get_mut() {
            // SAFETY: a live communicator: its collectives are flushed, then it is freed once.
            unsafe {
                let _ = nccl::comm_finalize(self.comm);
                let _ = nccl::comm_destroy(self.comm);
            }
        }
    }
}

fn wrap(comm: nccl_sys::ncclComm_t, rank: usize, world: usize) -> NcclComm {
    NcclComm { inner: Arc::new(Handle { comm, aborted: AtomicBool::new(false) }), rank, world }
}

fn nccl_err(what: &str) -> impl FnOnce(nccl::NcclError) -> Error + '_ {
    move |e| Error::msg(format!("NCCL {what}: {e:?}"))
}

/// Whether NCCL can be loaded; the error says where we looked and how to get it.
pub fn nccl_available() -> Result<()> {
    preload_libraries();
    // SAFETY: only tries to dlopen the library by its usual names.
    if unsafe { nccl_sys::is_culib_present() } {
        Ok(())
    } else {
        Err(missing_library_error(
            "NCCL",
            "libnccl.so.2",
            "pip install nvidia-nccl-cu13 (its nvidia/nccl/lib), or NLI_BERT_NCCL=0 to sum the gradients \
             through the host (slow); NCCL is needed only with more than one GPU",
        ))
    }
}

/// Communicators for the GPUs `ordinals` of this process, rank `i` on `ordinals[i]`
/// (`ncclCommInitAll`, from the calling thread: it may make GPU 0's context current there; the
/// engine instead joins each rank from its own thread with [`Cuda::nccl_init_rank`]).
pub fn init_all(ordinals: &[usize]) -> Result<Vec<NcclComm>> {
    nccl_available()?;
    let devs: Vec<i32> = ordinals.iter().map(|&o| o as i32).collect();
    let mut comms: Vec<nccl_sys::ncclComm_t> = vec![std::ptr::null_mut(); devs.len()];
    // SAFETY: `comms` has room for one communicator per device of `devs`.
    unsafe { nccl::comm_init_all(comms.as_mut_ptr(), devs.len() as i32, devs.as_ptr()) }
        .map_err(nccl_err("ncclCommInitAll"))?;
    let world = comms.len();
    Ok(comms.into_iter().enumerate().map(|(rank, comm)| wrap(comm, rank, world)).collect())
}

/// A new unique id (rank 0 of a multi-process run; the rendezvous carries it to the others).
pub fn unique_id() -> Result<Vec<u8>> {
    nccl_available()?;
    let id = nccl::get_uniqueid().map_err(nccl_err("ncclGetUniqueId"))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

impl Cuda {
    /// Rank `rank` of `world` on this GPU, in the communicator of unique id `id`.
    pub fn nccl_init_rank(&self, world: usize, rank: usize, id: &[u8]) -> Result<NcclComm> {
        nccl_available()?;
        let mut uid = nccl_sys::ncclUniqueId { internal: [0; 128] };
        if id.len() != uid.internal.len() {
            return Err(Error::msg(format!("NCCL: a unique id of {} bytes (expected 128)", id.len())));
        }
        for (d, &s) in uid.internal.iter_mut().zip(id) {
            *d = s as _;
        }
        bind(self.ctx)?;
        let mut comm: nccl_sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: the context of this GPU is current; `comm` receives the new communicator.
        unsafe { nccl::comm_init_rank(&mut comm, world as i32, uid, rank as i32) }
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(wrap(comm, rank, world))
    }

    /// `n` elements (bf16 or f32) at `ptr` summed in place over the ranks of `comm`. The
    /// collective runs on the side stream once the work issued so far on the main stream (which
    /// computed these gradients) is done, so the backward of the layers below goes on meanwhile;
    /// [`Cuda::nccl_wait`] joins the two before anything reads the sums.
    ///
    /// # Safety
    /// `ptr .. ptr + n` elements lie in a live allocation of this GPU, which the main stream does
    /// not write until [`Cuda::nccl_wait`].
    pub(crate) unsafe fn nccl_all_reduce(
        &self,
        comm: &NcclComm,
        ptr: DevPtr,
        n: usize,
        bf16: bool,
    ) -> Result<()> {
        self.not_in_graph("an NCCL all-reduce")?;
        bind(self.ctx)?;
        self.nccl_used.store(true, std::sync::atomic::Ordering::Relaxed);
        self.stream_waits_for(self.side, self.stream)?;
        let ty =
            if bf16 { nccl_sys::ncclDataType_t::ncclBfloat16 } else { nccl_sys::ncclDataType_t::ncclFloat32 };
        // SAFETY: forwarded from the caller; the stream belongs to this GPU's context.
        unsafe {
            nccl::all_reduce(
                ptr as *const c_void,
                ptr as *mut c_void,
                n,
                ty,
                nccl_sys::ncclRedOp_t::ncclSum,
                comm.raw()?,
                self.side as nccl_sys::cudaStream_t,
            )
        }
        .map(|_| ())
        .map_err(nccl_err("ncclAllReduce"))
    }

    /// Before `cuMemAlloc` / `cuMemFree`, which may synchronize the device while holding the
    /// driver's locks: waits until this GPU's collectives are done. Then no NCCL kernel of this
    /// GPU waits for another rank while another rank's thread waits for those locks to launch
    /// its part (the deadlock NCCL's documentation warns of for several GPUs in one process).
    /// Allocations are rare: the pool reuses its blocks.
    pub(crate) fn no_collectives_in_flight(&self) {
        if self.nccl_used.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: the side stream belongs to this GPU's context, which the caller made current.
            let _ = unsafe { drv::stream::synchronize(self.side) };
        }
    }

    /// The main stream waits for the collectives issued so far (on the side stream).
    pub(crate) fn nccl_wait(&self) -> Result<()> {
        bind(self.ctx)?;
        self.stream_waits_for(self.stream, self.side)
    }

    /// `waiter` runs nothing issued after this call until the work issued so far on `signaller`
    /// is done.
    fn stream_waits_for(&self, waiter: sys::CUstream, signaller: sys::CUstream) -> Result<()> {
        let ev = drv::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| Error::msg(format!("cuEventCreate: {e}")))?;
        // SAFETY: both streams and the event belong to this GPU's context, which is current;
        // destroying an event that a stream still waits on is allowed (released when done).
        let r = unsafe {
            drv::event::record(ev, signaller).and_then(|()| {
                drv::stream::wait_event(waiter, ev, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
            })
        };
        // SAFETY: created above, destroyed once.
        let _ = unsafe { drv::event::destroy(ev) };
        r.map_err(|e| Error::msg(format!("ordering the NCCL stream: {e}")))
    }
}
