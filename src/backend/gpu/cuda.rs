//! [`Cuda`]: the [`Device`] of a real NVIDIA GPU, through cudarc's low-level driver API (raw
//! `CUdeviceptr`s, `cuLaunchKernel`), cuBLASLt and cuBLAS for the matrix products (`cuda/lt.rs`,
//! `cuda/cublas.rs`), CUDA graphs for step graphs (`cuda/graphs.rs`), and our kernels loaded
//! once per device: the PTX build.rs precompiled with nvcc when the driver accepts it, else a
//! cubin NVRTC compiles for the device's `sm_XY` (cached in the cache dir, see [`super::nvrtc`]).
//!
//! Nothing here needs CUDA to build. At run time cudarc loads `libcuda`, `libnvrtc` and
//! `libcublas` by bare name and **panics** when one is missing, so every entry point checks for
//! the library first (after [`preload_libraries`], which also searches the toolkit and PyPI
//! wheel folders and `NLI_BERT_CUDA_LIB_DIR`) and returns an error naming it.
//!
//! All work goes to one non-blocking stream, in call order (a second one only zero-fills
//! allocations made while a step graph is captured). Environment:
//! `NLI_BERT_CUDA_LIB_DIR` (library folders), `NLI_BERT_CUDA_KERNELS=auto|ptx|nvrtc` (kernel
//! image; `auto`: the precompiled PTX if usable, else NVRTC), `NLI_BERT_HOME` (cubin cache),
//! `NLI_BERT_CUBLASLT=0` (no cuBLASLt: plain cuBLAS products and separate epilogue kernels).

mod cublas;
mod graphs;
mod libs;
mod lt;
mod module;
pub mod nccl;
mod ptx;

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::result::{self as drv, DriverError};
use cudarc::driver::sys;

pub use libs::{missing_library_error, preload_libraries, LibraryReport};
pub use module::Module;

use super::device::{check_args, DevPtr, Device, Epilogue, Gemm, GemmMath, KArg, LaunchCfg};
use super::graph::{Op, UpdateOutcome};
use super::nvrtc;
use crate::error::{Error, Result};
use ptx::ptx_fits;

fn require_driver() -> Result<()> {
    preload_libraries();
    if libs::driver_present() {
        Ok(())
    } else {
        Err(missing_library_error(
            "CUDA driver",
            "libcuda.so.1",
            "it comes with the NVIDIA driver; without a GPU use --device cpu",
        ))
    }
}

fn drv_err(what: impl std::fmt::Display) -> impl FnOnce(DriverError) -> Error {
    move |e| {
        let name =
            e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
        let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Error::msg(format!("CUDA: {what}: {name} ({text})"))
    }
}

/// The number of CUDA devices, or an error saying why there are none usable (driver library
/// missing, `cuInit` failing).
fn count_devices() -> Result<usize> {
    require_driver()?;
    drv::init().map_err(drv_err("cuInit (is an NVIDIA GPU and driver present?)"))?;
    let n = drv::device::get_count().map_err(drv_err("cuDeviceGetCount"))?;
    Ok(n.max(0) as usize)
}

/// The number of usable CUDA devices: 0 without a driver or GPU. Never panics (for
/// `--device auto`); [`Cuda::device_count`] says why there are none.
pub fn device_count() -> usize {
    std::panic::catch_unwind(|| count_devices().unwrap_or(0)).unwrap_or(0)
}

/// Whether at least one CUDA device is usable. Never panics.
pub fn cuda_available() -> bool {
    device_count() > 0
}

/// The driver's CUDA version as `1000 * major + 10 * minor` (13000 = CUDA 13.0).
pub fn driver_version() -> Result<i32> {
    require_driver()?;
    let mut v = 0;
    // SAFETY: the driver library is loaded; `v` is valid for writes.
    unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(drv_err("cuDriverGetVersion"))?;
    Ok(v)
}

/// Binds `ctx` to the calling thread if it is not already current.
fn bind(ctx: sys::CUcontext) -> Result<()> {
    if drv::ctx::get_current().map_err(drv_err("cuCtxGetCurrent"))? != Some(ctx) {
        // SAFETY: `ctx` is a retained primary context, alive as long as its owner.
        unsafe { drv::ctx::set_current(ctx) }.map_err(drv_err("cuCtxSetCurrent"))?;
    }
    Ok(())
}

/// A CUDA GPU: primary context, one non-blocking stream, a cuBLAS handle on it, our kernels.
pub struct Cuda {
    ordinal: usize,
    dev: sys::CUdevice,
    name: String,
    cc: (i32, i32),
    /// Null until retained (partial construction is cleaned up by `Drop`).
    ctx: sys::CUcontext,
    /// Whether NCCL collectives have been issued on the side stream (see
    /// [`Cuda::no_collectives_in_flight`]).
    nccl_used: std::sync::atomic::AtomicBool,
    stream: sys::CUstream,
    /// A second stream for zero-filling allocations made while the main stream is being
    /// captured into a step graph (the fill must happen now, once, not in the graph).
    side: sys::CUstream,
    blas: Mutex<blas_sys::cublasHandle_t>,
    /// cuBLASLt (fused epilogues, bf16 products), or why there is none.
    lt: Mutex<std::result::Result<lt::Lt, String>>,
    kernels: Option<Module>,
    kernel_origin: String,
    /// Step graphs being recorded or updated, and their ops (see [`super::graph`]).
    graphs: Mutex<graphs::CudaGraphs>,
    /// The instantiated graphs by id.
    execs: Mutex<std::collections::HashMap<u64, graphs::Exec>>,
    /// Where NVRTC cubins are cached (`$NLI_BERT_HOME`, handed in by the caller).
    cache_dir: PathBuf,
}

// SAFETY: driver handles may be used from any thread once the context is bound, which every
// method does first; the cuBLAS handle is used only under its Mutex; the stream orders the work.
unsafe impl Send for Cuda {}
// SAFETY: as above.
unsafe impl Sync for Cuda {}

impl Cuda {
    /// Opens device `ordinal`: context, stream, cuBLAS, and the kernels (PTX, or an NVRTC cubin
    /// cached in `cache_dir`).
    pub fn new(ordinal: usize, cache_dir: &Path) -> Result<Cuda> {
        let count = count_devices()?;
        if ordinal >= count {
            return Err(Error::usage(format!(
                "cuda:{ordinal} does not exist: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{})",
                count.saturating_sub(1)
            )));
        }
        let dev =
            drv::device::get(ordinal as i32).map_err(drv_err(format_args!("cuDeviceGet({ordinal})")))?;
        let name = drv::device::get_name(dev).map_err(drv_err("cuDeviceGetName"))?;
        let attr = |a| {
            // SAFETY: `dev` came from cuDeviceGet.
            unsafe { drv::device::get_attribute(dev, a) }.map_err(drv_err("cuDeviceGetAttribute"))
        };
        let cc = (
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let mut cuda = Cuda {
            ordinal,
            dev,
            name,
            cc,
            ctx: std::ptr::null_mut(),
            nccl_used: std::sync::atomic::AtomicBool::new(false),
            stream: std::ptr::null_mut(),
            side: std::ptr::null_mut(),
            blas: Mutex::new(std::ptr::null_mut()),
            lt: Mutex::new(Err("not initialised".into())),
            kernels: None,
            kernel_origin: String::new(),
            graphs: Mutex::default(),
            execs: Mutex::default(),
            cache_dir: cache_dir.to_path_buf(),
        };
        // SAFETY: `dev` came from cuDeviceGet; released in Drop.
        cuda.ctx = unsafe { drv::primary_ctx::retain(dev) }.map_err(drv_err("cuDevicePrimaryCtxRetain"))?;
        bind(cuda.ctx)?;
        cuda.stream =
            drv::stream::create(drv::stream::StreamKind::NonBlocking).map_err(drv_err("cuStreamCreate"))?;
        cuda.side =
            drv::stream::create(drv::stream::StreamKind::NonBlocking).map_err(drv_err("cuStreamCreate"))?;
        cuda.init_cublas()?;
        *cuda.lt.get_mut().unwrap_or_else(|p| p.into_inner()) = lt::Lt::new();
        cuda.load_kernels()?;
        Ok(cuda)
    }

    /// The number of CUDA devices, or an error saying why none is usable.
    pub fn device_count() -> Result<usize> {
        count_devices()
    }

    /// The device ordinal (`N` of `cuda:N`).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Compute capability, e.g. `(9, 0)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// Whether the fused products of cuBLASLt are available, or why not.
    pub fn cublaslt_status(&self) -> std::result::Result<(), String> {
        self.lt.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Where the kernels came from, e.g. `NVRTC 13.0 cubin for sm_90 (cached)`.
    pub fn kernel_origin(&self) -> &str {
        &self.kernel_origin
    }

    fn init_cublas(&mut self) -> Result<()> {
        preload_libraries();
        // SAFETY: only tries to dlopen the library by its usual names.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(missing_library_error(
                "cuBLAS",
                "libcublas.so.13 + libcublasLt.so.13",
                "it comes with the CUDA toolkit (lib64) or `pip install nvidia-cublas`",
            ));
        }
        let cublas_err =
            |what: &'static str| move |e: blas::CublasError| Error::msg(format!("cuBLAS: {what}: {e}"));
        let h = blas::create_handle().map_err(cublas_err("cublasCreate"))?;
        *self.blas.get_mut().unwrap_or_else(|p| p.into_inner()) = h;
        // SAFETY: `h` is a fresh handle and `self.stream` a live stream of the current context.
        unsafe { blas::set_stream(h, self.stream as blas_sys::cudaStream_t) }
            .map_err(cublas_err("cublasSetStream"))?;
        // Exact fp32: no TF32 tensor-op math.
        // SAFETY: `h` is a live handle.
        unsafe { blas_sys::cublasSetMathMode(h, blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH) }
            .result()
            .map_err(cublas_err("cublasSetMathMode"))?;
        Ok(())
    }

    /// The precompiled PTX if the driver and device take it, else NVRTC's cubin for `sm_XY`.
    fn load_kernels(&mut self) -> Result<()> {
        if super::COMBINED.trim().is_empty() {
            self.kernel_origin = "no kernels in this build".into();
            return Ok(());
        }
        let mode = std::env::var("NLI_BERT_CUDA_KERNELS").unwrap_or_default();
        if !["", "auto", "ptx", "nvrtc"].contains(&mode.as_str()) {
            return Err(Error::usage(format!("NLI_BERT_CUDA_KERNELS={mode:?}: expected auto, ptx or nvrtc")));
        }
        let mut why_not_ptx = String::new();
        if mode != "nvrtc" {
            match super::PTX {
                None => why_not_ptx = "this build has no precompiled PTX (no nvcc at build time)".into(),
                Some(ptx) => match ptx_fits(ptx, driver_version()?, self.cc) {
                    Err(why) => why_not_ptx = why,
                    Ok(desc) => match Module::load(self.ctx, ptx.as_bytes(), true) {
                        Ok(m) => {
                            self.kernels = Some(m);
                            self.kernel_origin = desc;
                            return Ok(());
                        }
                        Err(e) => why_not_ptx = e.to_string(),
                    },
                },
            }
            if mode == "ptx" {
                return Err(Error::msg(format!(
                    "NLI_BERT_CUDA_KERNELS=ptx, but the PTX cannot be used: {why_not_ptx}"
                )));
            }
        }
        let arch = format!("sm_{}{}", self.cc.0, self.cc.1);
        let context = |e: Error| {
            if why_not_ptx.is_empty() {
                e
            } else {
                Error::msg(format!("{e}\n(the precompiled PTX was not used: {why_not_ptx})"))
            }
        };
        let (major, minor) = nvrtc::version().map_err(context)?;
        let cache = self.cache_dir.clone();
        let (cubin, mut cached) =
            nvrtc::compile_cubin_cached(super::COMBINED, &arch, &cache).map_err(context)?;
        let module = match Module::load(self.ctx, &cubin, false) {
            // A damaged cache entry: compile again and replace it.
            Err(_) if cached => {
                cached = false;
                let cubin = nvrtc::recompile_cubin(super::COMBINED, &arch, &cache).map_err(context)?;
                Module::load(self.ctx, &cubin, false)?
            }
            other => other?,
        };
        self.kernels = Some(module);
        self.kernel_origin =
            format!("NVRTC {major}.{minor} cubin for {arch}{}", if cached { " (cached)" } else { "" });
        Ok(())
    }

    /// Compiles extra CUDA source with NVRTC for this device (cached like the kernels), e.g.
    /// test kernels. Launch its functions with [`Cuda::launch_in`].
    pub fn load_source(&self, src: &str) -> Result<Module> {
        let arch = format!("sm_{}{}", self.cc.0, self.cc.1);
        let (cubin, _) = nvrtc::compile_cubin_cached(src, &arch, &self.cache_dir)?;
        Module::load(self.ctx, &cubin, false)
    }

    /// Launches function `name` of `module` (loaded on this device) on the stream. Only the
    /// launch shape is checked here, not the arguments.
    ///
    /// # Safety
    /// `args` match the function's parameters, and every pointer addresses memory the kernel
    /// may read/write for this launch shape.
    pub unsafe fn launch_in(
        &self,
        module: &Module,
        name: &str,
        cfg: &LaunchCfg,
        args: &[KArg],
    ) -> Result<()> {
        bind(self.ctx)?;
        let f = module.function(name, cfg.shared_bytes)?;
        // 8-byte aligned slots, one per argument; cuLaunchKernel copies them before returning.
        let mut slots: Vec<u64> = args.iter().map(|a| u64::from_le_bytes(a.to_slot())).collect();
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        let [gx, gy, gz] = cfg.grid;
        let [bx, by, bz] = cfg.block;
        // SAFETY: `f` is a live function of this context; `params` points at one slot per
        // argument holding its value (4-byte types in the low half, little-endian host); the
        // caller vouches for the argument types and the memory the kernel touches.
        unsafe {
            drv::launch_kernel(f, (gx, gy, gz), (bx, by, bz), cfg.shared_bytes, self.stream, &mut params)
        }
        .map_err(drv_err(format_args!("launching `{name}` grid {:?} block {:?}", cfg.grid, cfg.block)))
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        if self.ctx.is_null() || bind(self.ctx).is_err() {
            return;
        }
        if !self.stream.is_null() {
            // SAFETY: live stream of this context.
            let _ = unsafe { drv::stream::synchronize(self.stream) };
        }
        self.graph_drop_all();
        self.kernels = None;
        *self.lt.get_mut().unwrap_or_else(|p| p.into_inner()) = Err("dropped".into());
        let h = *self.blas.get_mut().unwrap_or_else(|p| p.into_inner());
        if !h.is_null() {
            // SAFETY: created in init_cublas, destroyed once here.
            let _ = unsafe { blas::destroy_handle(h) };
        }
        if !self.stream.is_null() {
            // SAFETY: created in `new`, all work done (synchronized above), destroyed once.
            let _ = unsafe { drv::stream::destroy(self.stream) };
        }
        if !self.side.is_null() {
            // SAFETY: created in `new`; its work is synchronized where it is issued.
            let _ = unsafe { drv::stream::destroy(self.side) };
        }
        // SAFETY: retained once in `new`.
        let _ = unsafe { drv::primary_ctx::release(self.dev) };
    }
}

impl Device for Cuda {
    fn name(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.name)
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        bind(self.ctx)?;
        self.no_collectives_in_flight();
        // SAFETY: a plain allocation in the current context; zero-filled on the stream below.
        let p = unsafe { drv::malloc_sync(bytes.max(1)) }
            .map_err(drv_err(format_args!("allocating {bytes} bytes on {}", self.name())))?;
        if bytes > 0 {
            // While a step graph is captured the main stream records instead of running: the
            // fill goes to the side stream and is waited for, so that it happens once, now.
            let capturing = self.graph_busy();
            let stream = if capturing { self.side } else { self.stream };
            // SAFETY: `p .. p + bytes` was just allocated; the main stream orders this zero-fill
            // before any later use, or the side stream's is complete when this returns.
            let r = unsafe {
                drv::memset_d8_async(p, 0, bytes, stream).and_then(|()| {
                    if capturing {
                        drv::stream::synchronize(stream)
                    } else {
                        Ok(())
                    }
                })
            };
            if let Err(e) = r {
                if !capturing {
                    // SAFETY: `p` was allocated above and is not handed out.
                    let _ = unsafe { drv::free_sync(p) };
                }
                return Err(drv_err("zero-filling a new allocation")(e));
            }
        }
        Ok(p)
    }

    unsafe fn free(&self, ptr: DevPtr) {
        if bind(self.ctx).is_ok() {
            // SAFETY: queued work may still use `ptr`: wait for it, then free (caller: `ptr`
            // came from `alloc` and is not used again).
            self.no_collectives_in_flight();
            unsafe {
                let _ = drv::stream::synchronize(self.stream);
                let _ = drv::free_sync(ptr);
            }
        }
    }

    unsafe fn copy_htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        if unsafe { self.graph_upload(dst, src)? } {
            return Ok(());
        }
        bind(self.ctx)?;
        // SAFETY: the caller guarantees `dst .. dst + len` is live. `src` is pageable memory
        // (pinned staging is used only by step graphs), which the driver has staged before returning.
        unsafe { drv::memcpy_htod_async(dst, src, self.stream) }
            .map_err(drv_err(format_args!("copying {} bytes to the device", src.len())))
    }

    unsafe fn copy_dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.not_in_graph("reading device memory back")?;
        bind(self.ctx)?;
        // SAFETY: the caller guarantees the source range is live; `dst` is borrowed until the
        // stream is synchronized below.
        unsafe {
            drv::memcpy_dtoh_async(dst, src, self.stream)
                .map_err(drv_err(format_args!("copying {} bytes from the device", dst.len())))?;
            drv::stream::synchronize(self.stream)
                .map_err(drv_err("synchronizing after a device-to-host copy"))
        }
    }

    unsafe fn memset_zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        if let graphs::Step::Done = self.graph_op(Op::Memset { dst, bytes }) {
            return Ok(());
        }
        bind(self.ctx)?;
        // SAFETY: the caller guarantees the range is live.
        unsafe { drv::memset_d8_async(dst, 0, bytes, self.stream) }
            .map_err(drv_err(format_args!("zeroing {bytes} bytes")))
    }

    unsafe fn launch(&self, name: &str, cfg: &LaunchCfg, args: &[KArg]) -> Result<()> {
        check_args(name, cfg, args)?;
        let m = self.kernels.as_ref().ok_or_else(|| {
            Error::msg(format!(
                "kernel `{name}`: no kernels are loaded on {} ({})",
                self.name(),
                self.kernel_origin
            ))
        })?;
        let _ = m;
        // SAFETY: the arguments match the signature (checked); the caller vouches for memory.
        unsafe { self.graph_launch(name, cfg, args) }
    }

    unsafe fn sgemm(&self, g: &Gemm) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.blas_sgemm(g) }
    }

    unsafe fn gemm_bf16(&self, g: &Gemm, c_bf16: bool) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.blas_gemm_bf16(g, c_bf16) }
    }

    unsafe fn gemm_fast_bf16(&self, g: &Gemm) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.blas_gemm_fast_bf16(g) }
    }

    fn has_fused_gemms(&self) -> bool {
        self.cublaslt_status().is_ok()
    }

    fn fused_report(&self) -> Option<String> {
        self.lt.lock().unwrap_or_else(|p| p.into_inner()).as_ref().ok().map(lt::Lt::report)
    }

    unsafe fn all_reduce_nccl(
        &self,
        comm: &dyn std::any::Any,
        ptr: DevPtr,
        n: usize,
        bf16: bool,
    ) -> Result<bool> {
        let Some(comm) = comm.downcast_ref::<nccl::NcclComm>() else { return Ok(false) };
        // SAFETY: forwarded from the caller.
        unsafe { self.nccl_all_reduce(comm, ptr, n, bf16)? };
        Ok(true)
    }

    fn collectives_wait(&self) -> Result<()> {
        self.nccl_wait()
    }

    unsafe fn gemm_lt(&self, g: &Gemm, math: GemmMath, ep: Epilogue) -> Result<bool> {
        // SAFETY: forwarded.
        unsafe { self.blas_gemm_lt(g, math, ep) }
    }

    fn begin_capture(&self) -> Result<()> {
        self.graph_begin_capture()
    }

    fn end_capture(&self) -> Result<u64> {
        self.graph_end_capture()
    }

    fn abort_capture(&self) {
        self.graph_abort_capture()
    }

    fn begin_update(&self, id: u64) -> Result<()> {
        self.graph_begin_update(id)
    }

    fn end_update(&self) -> Result<UpdateOutcome> {
        self.graph_end_update()
    }

    unsafe fn replay(&self, id: u64) -> Result<()> {
        self.graph_replay(id)
    }

    fn drop_graph(&self, id: u64) {
        self.graph_drop(id)
    }

    fn synchronize(&self) -> Result<()> {
        self.not_in_graph("synchronize")?;
        bind(self.ctx)?;
        // SAFETY: live stream of this context.
        unsafe { drv::stream::synchronize(self.stream) }
            .map_err(drv_err(format_args!("synchronizing {}", self.name())))
    }

    type Mark = CudaMark;

    fn mark(&self) -> Result<CudaMark> {
        self.not_in_graph("a timing mark")?;
        bind(self.ctx)?;
        let e = drv::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv_err("cuEventCreate"))?;
        let m = CudaMark(e);
        // SAFETY: `e` is a fresh event and the stream a live stream of this context.
        unsafe { drv::event::record(m.0, self.stream) }.map_err(drv_err("cuEventRecord"))?;
        Ok(m)
    }

    fn elapsed_ms(&self, a: &CudaMark, b: &CudaMark) -> Result<f64> {
        bind(self.ctx)?;
        // SAFETY: both events were created and recorded on this device's stream and are alive.
        let ms = unsafe { drv::event::elapsed(a.0, b.0) }.map_err(drv_err("cuEventElapsedTime"))?;
        Ok(ms as f64)
    }
}

/// A CUDA event recorded on the device's stream (timing enabled); destroyed on drop.
pub struct CudaMark(sys::CUevent);

// SAFETY: an event handle may be used from any thread of the process (the context is bound by
// each method that uses it).
unsafe impl Send for CudaMark {}

impl Drop for CudaMark {
    fn drop(&mut self) {
        // SAFETY: the event came from cuEventCreate and is destroyed once; destroying an event
        // whose work is pending is allowed (the driver releases it when done).
        let _ = unsafe { drv::event::destroy(self.0) };
    }
}
