//! `Emu`: the CUDA execution model on the CPU, a [`Device`] for machines without a GPU.
//!
//! build.rs compiles the same kernel sources as the GPU (kernels/*.cu) as C++ over the runtime in
//! `kernels/emu/` (fibers for CUDA threads, `__syncthreads`, warp shuffles/votes, atomics, static
//! and dynamic shared memory) and links them into the crate. Each launch runs on the calling
//! thread: blocks in a random order, and inside a block the threads are resumed in a random order
//! at every barrier and warp collective, driven by a *schedule seed*. A missing `__syncthreads`
//! therefore shows up as a wrong result (unwritten shared memory reads as NaN), and a deadlock or
//! divergent barrier as an error rather than a hang.
//!
//! The seed advances by one per launch (the n-th launch of `Emu::with_seed(s)` uses `s + n`), so
//! repeated launches explore different schedules; an error names its launch's seed, and
//! `Emu::with_seed(seed)` replays that schedule as its first launch. `Emu::new()` starts from
//! `NLI_BERT_EMU_SEED` when set, else from a fixed seed, so runs are reproducible.
//!
//! Memory is host memory (256-byte aligned, zeroed); every copy, launch pointer and GEMM operand
//! is checked against the live allocations, so a stray address is an error, not a crash. GEMMs
//! run on the host in f32 (one accumulator per output element, in `k` order; `emu/gemm.rs`, with
//! cuBLASLt's epilogues as documented).

mod gemm;

use gemm::Operands;

use super::device::{
    check_args, kernel_signature, ArgKind, DevPtr, Device, Epilogue, Gemm, GemmMath, KArg, LaunchCfg,
};
use super::graph::{GemmOp, Graphs, Intercept, Op, UpdateOutcome};
use crate::error::{Error, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Alignment of every allocation (cudaMalloc gives at least 256).
const ALIGN: usize = 256;
/// The schedule seed of the first launch when neither `with_seed` nor `NLI_BERT_EMU_SEED` says.
const DEFAULT_SEED: u64 = 0x5eed_c0de_2024_0001;

/// The CUDA emulator device (see the module docs).
pub struct Emu {
    /// Live allocations: start address → length in bytes.
    allocs: Mutex<BTreeMap<u64, usize>>,
    /// The schedule seed of the next launch.
    next_seed: AtomicU64,
    /// The first error of a kernel that ran (deadlock, trap, ...) or a bad `free`.
    sticky: Mutex<Option<String>>,
    /// Held by every operation that touches device memory, so that calls from several host
    /// threads run one at a time, in order, as on one CUDA stream.
    stream: Mutex<()>,
    /// Whether [`Device::gemm_lt`] runs fused products (as a GPU with cuBLASLt) or declines them
    /// all (as a GPU without it), so tests cover both of the launch code's paths.
    lt: bool,
    /// Refuse to capture step graphs (as a device whose capture fails), for the fallback's tests.
    refuse_capture: bool,
    /// Step graphs: recorded ops (an upload's staging bytes as device data), and whether the
    /// emulator is capturing or updating one (see [`super::graph`]).
    graphs: Mutex<Graphs<Vec<u8>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Emu {
    /// An emulator whose first launch uses seed `NLI_BERT_EMU_SEED` (decimal or 0x-hex) if set,
    /// else a fixed seed.
    pub fn new() -> Result<Self> {
        let seed = match std::env::var("NLI_BERT_EMU_SEED") {
            Ok(s) => parse_seed(&s).ok_or_else(|| {
                Error::usage(format!(
                    "NLI_BERT_EMU_SEED=`{s}`: expected an unsigned integer (decimal or 0x-hex)"
                ))
            })?,
            Err(_) => DEFAULT_SEED,
        };
        Self::with_seed(seed)
    }

    /// The same emulator with fused products ([`Device::gemm_lt`]) on (the default) or declined.
    pub fn with_fused_gemms(mut self, on: bool) -> Self {
        self.lt = on;
        self
    }

    /// The same emulator refusing (true) to capture step graphs, as a device on which capture
    /// fails: tests of the op-by-op fallback.
    pub fn with_capture_refused(mut self, refuse: bool) -> Self {
        self.refuse_capture = refuse;
        self
    }

    /// An emulator whose n-th launch (from 0) uses schedule seed `seed + n`.
    pub fn with_seed(seed: u64) -> Result<Self> {
        if !super::EMU_AVAILABLE {
            return Err(Error::msg(
                "the CUDA emulator was not built: no C++ compiler found at build time (install g++)",
            ));
        }
        Ok(Emu {
            allocs: Mutex::new(BTreeMap::new()),
            next_seed: AtomicU64::new(seed),
            sticky: Mutex::default(),
            stream: Mutex::default(),
            lt: true,
            refuse_capture: false,
            graphs: Mutex::default(),
        })
    }

    /// The schedule seed the next launch will use.
    pub fn next_seed(&self) -> u64 {
        self.next_seed.load(Ordering::Relaxed)
    }

    /// Checks that `[ptr, ptr + bytes)` lies inside one live allocation (`what` names it).
    fn check_range(&self, ptr: DevPtr, bytes: usize, what: &str) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let allocs = lock(&self.allocs);
        let inside = allocs.range(..=ptr).next_back().is_some_and(|(&start, &len)| {
            (ptr - start).checked_add(bytes as u64).is_some_and(|end| end <= len as u64)
        });
        if inside {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "emu: {what}: {bytes} bytes at {ptr:#x} are not inside one live allocation"
            )))
        }
    }

    /// Whether `ptr` is null or points into (or just past) a live allocation.
    fn valid_pointer(&self, ptr: DevPtr) -> bool {
        ptr == 0
            || lock(&self.allocs)
                .range(..=ptr)
                .next_back()
                .is_some_and(|(&start, &len)| ptr - start <= len as u64)
    }

    fn set_sticky(&self, msg: &str) {
        lock(&self.sticky).get_or_insert_with(|| msg.to_string());
    }
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Argument kinds and count against a signature (the emulator's own test kernels, which are not
/// in `KERNELS`; the C++ side checks the launch shape).
fn check_kinds(name: &str, sig: &[ArgKind], args: &[KArg]) -> Result<()> {
    if sig.len() != args.len() {
        return Err(Error::msg(format!(
            "kernel `{name}` takes {} arguments, launch passed {}",
            sig.len(),
            args.len()
        )));
    }
    for (i, (k, a)) in sig.iter().zip(args).enumerate() {
        if *k != a.kind() {
            return Err(Error::msg(format!(
                "kernel `{name}` argument {i}: expected {k:?}, launch passed {:?}",
                a.kind()
            )));
        }
    }
    Ok(())
}

impl Drop for Emu {
    fn drop(&mut self) {
        for (&start, &len) in lock(&self.allocs).iter() {
            if let Ok(layout) = Layout::from_size_align(len.max(1), ALIGN) {
                // SAFETY: `start` came from `alloc_zeroed` with this layout and was not freed.
                unsafe { dealloc(start as *mut u8, layout) };
            }
        }
    }
}

impl Device for Emu {
    fn name(&self) -> String {
        "emu".into()
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|_| Error::msg(format!("emu: cannot allocate {bytes} bytes")))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        if p.is_null() {
            return Err(Error::msg(format!("emu: out of memory allocating {bytes} bytes")));
        }
        lock(&self.allocs).insert(p as u64, bytes.max(1));
        Ok(p as u64)
    }

    unsafe fn free(&self, ptr: DevPtr) {
        let _stream = lock(&self.stream);
        let len = lock(&self.allocs).remove(&ptr);
        match len.map(|len| (len, Layout::from_size_align(len, ALIGN))) {
            // SAFETY: `ptr` was allocated by `alloc` with this layout and is now untracked.
            Some((_, Ok(layout))) => unsafe { dealloc(ptr as *mut u8, layout) },
            _ => self.set_sticky(&format!("emu: free of {ptr:#x}, which is not a live allocation")),
        }
    }

    unsafe fn copy_htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.check_range(dst, src.len(), "copy_htod destination")?;
        {
            let mut g = lock(&self.graphs);
            match g.intercept(Op::Upload { dst, len: src.len() }) {
                Intercept::Run => {}
                Intercept::Captured => {
                    g.set_last_extra(src.to_vec());
                    return Ok(());
                }
                Intercept::Ignored => return Ok(()),
                Intercept::Matched { extra, .. } => {
                    extra.clear();
                    extra.extend_from_slice(src);
                    return Ok(());
                }
            }
        }
        let _stream = lock(&self.stream);
        self.check_range(dst, src.len(), "copy_htod destination")?;
        if !src.is_empty() {
            // SAFETY: the destination range lies inside a live allocation (checked above), which
            // no Rust reference aliases; `src` is a distinct host slice.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        }
        Ok(())
    }

    unsafe fn copy_dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.not_in_graph("copy_dtoh (reading device memory back)")?;
        let _stream = lock(&self.stream);
        self.check_range(src, dst.len(), "copy_dtoh source")?;
        if !dst.is_empty() {
            // SAFETY: the source range lies inside a live allocation (checked above); `dst` is a
            // distinct host slice.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        }
        Ok(())
    }

    unsafe fn memset_zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.check_range(dst, bytes, "memset_zero")?;
        if self.recorded(Op::Memset { dst, bytes }) {
            return Ok(());
        }
        let _stream = lock(&self.stream);
        if bytes > 0 {
            // SAFETY: the range lies inside a live allocation (checked above).
            unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        }
        Ok(())
    }

    unsafe fn mark_uninit(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.check_range(dst, bytes, "mark_uninit")?;
        if self.recorded(Op::Uninit { dst, bytes }) {
            return Ok(());
        }
        let _stream = lock(&self.stream);
        if bytes > 0 {
            // SAFETY: the range lies inside a live allocation (checked above).
            unsafe { std::ptr::write_bytes(dst as *mut u8, 0xFF, bytes) };
        }
        Ok(())
    }

    unsafe fn launch(&self, name: &str, cfg: &LaunchCfg, args: &[KArg]) -> Result<()> {
        if kernel_signature(name).is_some() {
            check_args(name, cfg, args)?;
        } else if let Some((_, sig)) = super::EMU_TEST_KERNELS.iter().find(|(n, _)| *n == name) {
            check_kinds(name, sig, args)?;
        } else {
            return Err(Error::msg(format!("no kernel named `{name}` in kernels/*.cu")));
        }
        for (i, a) in args.iter().enumerate() {
            if let KArg::Ptr(p) = *a {
                if !self.valid_pointer(p) {
                    return Err(Error::msg(format!(
                        "emu: kernel `{name}` argument {i}: {p:#x} is not null and not inside a live allocation"
                    )));
                }
            }
        }
        if lock(&self.graphs).busy()
            && self.recorded(Op::Launch { name: name.to_string(), cfg: *cfg, args: args.to_vec() })
        {
            return Ok(());
        }
        let cname =
            CString::new(name).map_err(|_| Error::msg(format!("kernel name {name:?} contains NUL")))?;
        let mut slots: Vec<[u8; 8]> = args.iter().map(KArg::to_slot).collect();
        let mut ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| s.as_mut_ptr().cast::<c_void>()).collect();
        let nargs = c_int::try_from(ptrs.len()).map_err(|_| Error::msg("too many kernel arguments"))?;
        let seed = self.next_seed.fetch_add(1, Ordering::Relaxed);
        let mut err = vec![0u8; 4096];
        let stream = lock(&self.stream);
        // SAFETY: `cname` is NUL-terminated; grid/block point to 3 u32 each; `ptrs` holds `nargs`
        // pointers to 8-byte slots that outlive the call; `err` is writable for its length. The
        // kernel's own memory accesses are the caller's contract (`Device::launch`), and every
        // pointer argument was checked to be null or inside a live allocation above.
        let rc = unsafe {
            ffi::nli_emu_launch(
                cname.as_ptr(),
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.shared_bytes,
                ptrs.as_mut_ptr(),
                nargs,
                seed,
                err.as_mut_ptr().cast::<c_char>(),
                err.len(),
            )
        };
        drop(stream);
        if rc == 0 {
            return Ok(());
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        let msg = format!(
            "emu: kernel `{name}` (grid {:?}, block {:?}, {} B dynamic shared, schedule seed {seed}; replay with \
             Emu::with_seed({seed}) as the first launch): {}",
            cfg.grid,
            cfg.block,
            cfg.shared_bytes,
            String::from_utf8_lossy(&err[..end])
        );
        // Codes 3 and up are faults of a kernel that ran: sticky, as on a GPU.
        if rc >= 3 {
            self.set_sticky(&msg);
        }
        Err(Error::msg(msg))
    }

    unsafe fn sgemm(&self, g: &Gemm) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.gemm_plain(g, GemmOp::F32, Operands::F32) }
    }

    unsafe fn gemm_bf16(&self, g: &Gemm, c_bf16: bool) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.gemm_plain(g, GemmOp::Bf16(c_bf16), Operands::Bf16) }
    }

    unsafe fn gemm_fast_bf16(&self, g: &Gemm) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.gemm_plain(g, GemmOp::FastBf16, Operands::RoundedToBf16) }
    }

    fn has_fused_gemms(&self) -> bool {
        self.lt
    }

    unsafe fn gemm_lt(&self, g: &Gemm, math: GemmMath, ep: Epilogue) -> Result<bool> {
        // SAFETY: forwarded.
        unsafe { self.gemm_fused(g, math, ep) }
    }

    fn begin_capture(&self) -> Result<()> {
        if self.refuse_capture {
            return Err(Error::msg("emu: step graph capture refused (Emu::with_capture_refused)"));
        }
        lock(&self.graphs).begin_capture()
    }

    fn end_capture(&self) -> Result<u64> {
        lock(&self.graphs).end_capture().map(|(id, _)| id)
    }

    fn abort_capture(&self) {
        lock(&self.graphs).abort_capture();
    }

    fn begin_update(&self, id: u64) -> Result<()> {
        lock(&self.graphs).begin_update(id)
    }

    fn end_update(&self) -> Result<UpdateOutcome> {
        lock(&self.graphs).end_update()
    }

    unsafe fn replay(&self, id: u64) -> Result<()> {
        let ops = {
            let mut g = lock(&self.graphs);
            if g.busy() {
                return Err(Error::msg("emu: replaying a graph while capturing or updating one"));
            }
            g.remove(id).ok_or_else(|| Error::msg(format!("emu: no graph {id}")))?
        };
        // Run the ops through the ordinary methods (the emulator is idle, so they run), then
        // put the graph back, also when an op failed.
        let mut result = Ok(());
        for r in &ops {
            // SAFETY: the caller guarantees the memory the recorded ops address is still live;
            // every op was checked when it was recorded and is checked again as it runs.
            let res = unsafe {
                match &r.op {
                    Op::Launch { name, cfg, args } => self.launch(name, cfg, args),
                    Op::Gemm { op, g } => match op {
                        GemmOp::F32 => self.sgemm(g),
                        GemmOp::Bf16(c_bf16) => self.gemm_bf16(g, *c_bf16),
                        GemmOp::FastBf16 => self.gemm_fast_bf16(g),
                        GemmOp::Lt(math, ep) => self.gemm_lt(g, *math, *ep).map(|_| ()),
                    },
                    Op::Memset { dst, bytes } => self.memset_zero(*dst, *bytes),
                    Op::Uninit { dst, bytes } => self.mark_uninit(*dst, *bytes),
                    Op::Upload { dst, .. } => self.copy_htod(*dst, &r.extra),
                }
            };
            if let Err(e) = res {
                result = Err(Error::msg(format!("emu: replaying graph {id}: {}: {e}", r.op.describe())));
                break;
            }
        }
        lock(&self.graphs).insert(id, ops);
        result
    }

    fn drop_graph(&self, id: u64) {
        lock(&self.graphs).remove(id);
    }

    fn synchronize(&self) -> Result<()> {
        self.not_in_graph("synchronize")?;
        match lock(&self.sticky).as_ref() {
            Some(msg) => Err(Error::msg(msg.clone())),
            None => Ok(()),
        }
    }

    type Mark = std::time::Instant;

    fn mark(&self) -> Result<std::time::Instant> {
        self.not_in_graph("a timing mark")?;
        Ok(std::time::Instant::now())
    }

    fn elapsed_ms(&self, a: &std::time::Instant, b: &std::time::Instant) -> Result<f64> {
        Ok(b.saturating_duration_since(*a).as_secs_f64() * 1e3)
    }
}

impl Emu {
    /// Whether `op` was recorded (capturing) or matched (updating) instead of being run.
    fn recorded(&self, op: Op) -> bool {
        !matches!(lock(&self.graphs).intercept(op), Intercept::Run)
    }

    /// An error if a graph is being captured or updated (`what` is not allowed then).
    fn not_in_graph(&self, what: &str) -> Result<()> {
        if lock(&self.graphs).busy() {
            return Err(Error::msg(format!("emu: {what} while capturing or updating a step graph")));
        }
        Ok(())
    }
}

#[cfg(nli_emu)]
mod ffi {
    use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};
    extern "C" {
        /// kernels/emu/runtime.cpp: runs one launch; 0 or an error code with a message in `err`.
        pub fn nli_emu_launch(
            name: *const c_char,
            grid: *const c_uint,
            block: *const c_uint,
            shared_bytes: c_uint,
            args: *mut *mut c_void,
            nargs: c_int,
            seed: c_ulonglong,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
    }
}

#[cfg(not(nli_emu))]
mod ffi {
    use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};
    /// Stand-in when build.rs found no C++ compiler (`Emu::new` refuses before any launch).
    pub unsafe fn nli_emu_launch(
        _name: *const c_char,
        _grid: *const c_uint,
        _block: *const c_uint,
        _shared_bytes: c_uint,
        _args: *mut *mut c_void,
        _nargs: c_int,
        _seed: c_ulonglong,
        _err: *mut c_char,
        _errlen: usize,
    ) -> c_int {
        5
    }
}
