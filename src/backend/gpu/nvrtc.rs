//! NVRTC, the CUDA run-time compiler: compiles the kernel sources ([`COMBINED`](super::COMBINED))
//! for the GPU at hand when no precompiled PTX fits, caches the result, and reads the resource
//! report `ptxas -v` writes into the compile log (registers, spills, shared memory per kernel).
//! Needs only `libnvrtc` (and its `libnvrtc-builtins`), which the PyPI wheel
//! `nvidia-cuda-nvrtc==13.0.88` provides; no GPU and no CUDA toolkit.
//!
//! Loading the library is [`super::cuda::preload_libraries`]'s job; every entry point here first
//! checks that NVRTC is present ([`require`]), because cudarc panics on a missing library.

use std::ffi::{c_char, c_int, CString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::nvrtc::sys;
use sha1::{Digest, Sha1};

use super::cuda;
use crate::error::{Error, Result};

/// What NVRTC produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Machine code (SASS in an ELF) for one `sm_XY`: no JIT at load time.
    Cubin,
    /// PTX text for a `compute_XY` virtual architecture (JIT-compiled by the driver).
    Ptx,
}

/// A compiled program: the image (cubin bytes, or PTX text without its trailing NUL) and the log.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Cubin (ELF) bytes or PTX text.
    pub image: Vec<u8>,
    /// NVRTC's program log (warnings; with `--ptxas-options=-v` the ptxas resource report).
    pub log: String,
}

/// Whether `libnvrtc` can be loaded (after [`cuda::preload_libraries`]). Never panics.
pub fn available() -> bool {
    cuda::preload_libraries();
    // SAFETY: only tries to dlopen the library by its usual names; calls nothing in it.
    unsafe { sys::is_culib_present() }
}

/// `Ok` if NVRTC can be loaded, else an error naming the library and the folders searched.
pub fn require() -> Result<()> {
    if available() {
        Ok(())
    } else {
        Err(cuda::missing_library_error(
            "NVRTC",
            "libnvrtc.so.13 + libnvrtc-builtins.so.13.0",
            "without a CUDA toolkit: `pip install --target DIR nvidia-cuda-nvrtc==13.0.88`, then \
             NLI_BERT_CUDA_LIB_DIR=DIR/nvidia/cu13/lib",
        ))
    }
}

/// NVRTC's version, e.g. `(13, 0)`.
pub fn version() -> Result<(i32, i32)> {
    require()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: NVRTC is loaded (require); both pointers are valid for writes.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    check(r, "nvrtcVersion")?;
    Ok((major, minor))
}

/// The options the engine compiles its kernels with for `arch` (`sm_90` for a cubin,
/// `compute_90` for PTX). No `--use_fast_math`: the kernels must match the CPU reference.
pub fn kernel_options(arch: &str) -> Vec<String> {
    // The flags nvcc also gets at build time (kernels/build/src/flags.rs says why each is there),
    // then the target and NVRTC's own flags.
    let mut v: Vec<String> = super::SHARED_COMPILE_FLAGS.iter().map(|s| s.to_string()).collect();
    v.push(format!("--gpu-architecture={arch}"));
    v.extend(super::NVRTC_ONLY_FLAGS.iter().map(|s| s.to_string()));
    v
}

/// Compiles `src` (one translation unit, no includes) with `options` to `out`. A compile error
/// returns NVRTC's log in the message.
pub fn compile(src: &str, name: &str, options: &[String], out: Output) -> Result<Compiled> {
    require()?;
    let c_src =
        CString::new(src).map_err(|_| Error::msg(format!("NVRTC: source `{name}` contains a NUL byte")))?;
    let c_name = CString::new(name).map_err(|_| Error::msg(format!("NVRTC: bad program name {name:?}")))?;
    let c_opts = options
        .iter()
        .map(|o| CString::new(o.as_str()).map_err(|_| Error::msg(format!("NVRTC: bad option {o:?}"))))
        .collect::<Result<Vec<_>>>()?;
    let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC is loaded; the source and name are NUL-terminated and outlive the program
    // (destroyed below, before they drop); no headers are passed.
    let r = unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            c_src.as_ptr(),
            c_name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    check(r, "nvrtcCreateProgram")?;
    let prog = Program(prog);

    // SAFETY: `prog` is a live program; `opt_ptrs` holds `len` pointers to NUL-terminated
    // strings that live until after the call.
    let compiled = unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    let log = prog.log()?;
    if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::msg(format!(
            "NVRTC could not compile `{name}` ({}) with {}:\n{}",
            error_string(compiled),
            options.join(" "),
            log.trim_end()
        )));
    }
    let image = match out {
        Output::Cubin => prog.cubin()?,
        Output::Ptx => prog.ptx()?,
    };
    Ok(Compiled { image, log })
}

/// Owns an `nvrtcProgram` and destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Program {
    fn log(&self) -> Result<String> {
        let mut size = 0usize;
        // SAFETY: live program; `size` is valid for writes.
        check(unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut size) }, "nvrtcGetProgramLogSize")?;
        let mut buf = vec![0u8; size.max(1)];
        // SAFETY: `buf` holds at least `size` bytes, the size NVRTC reported for the log.
        check(unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr().cast()) }, "nvrtcGetProgramLog")?;
        Ok(String::from_utf8_lossy(trim_nul(&buf)).into_owned())
    }

    fn cubin(&self) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: live, compiled program; `size` is valid for writes.
        check(unsafe { sys::nvrtcGetCUBINSize(self.0, &mut size) }, "nvrtcGetCUBINSize")?;
        if size == 0 {
            return Err(Error::msg(
                "NVRTC produced no cubin (was the architecture a virtual `compute_XY` one?)",
            ));
        }
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` holds exactly the `size` bytes NVRTC reported.
        check(unsafe { sys::nvrtcGetCUBIN(self.0, buf.as_mut_ptr().cast()) }, "nvrtcGetCUBIN")?;
        Ok(buf)
    }

    fn ptx(&self) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: live, compiled program; `size` is valid for writes.
        check(unsafe { sys::nvrtcGetPTXSize(self.0, &mut size) }, "nvrtcGetPTXSize")?;
        let mut buf = vec![0u8; size.max(1)];
        // SAFETY: `buf` holds at least the `size` bytes NVRTC reported.
        check(unsafe { sys::nvrtcGetPTX(self.0, buf.as_mut_ptr().cast()) }, "nvrtcGetPTX")?;
        Ok(trim_nul(&buf).to_vec())
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once, here.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn trim_nul(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

fn error_string(r: sys::nvrtcResult) -> String {
    // SAFETY: NVRTC is loaded whenever a result exists; nvrtcGetErrorString returns a static
    // NUL-terminated string (or null, handled).
    let p = unsafe { sys::nvrtcGetErrorString(r) };
    if p.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::msg(format!("NVRTC: {what} failed: {}", error_string(r))))
    }
}

/// Compiles `src` to a cubin for `arch` (`sm_XY`) with [`kernel_options`], or reads it from
/// `cache_dir/kernels-<sha1>.cubin` (key: NVRTC version, options, source). Returns the cubin and
/// whether it came from the cache. The cache is best effort: a folder that cannot be written
/// only costs a compile per run.
pub fn compile_cubin_cached(src: &str, arch: &str, cache_dir: &Path) -> Result<(Vec<u8>, bool)> {
    let options = kernel_options(arch);
    let path = cache_path(src, &options, cache_dir)?;
    if let Ok(bytes) = fs::read(&path) {
        if bytes.starts_with(b"\x7fELF") {
            return Ok((bytes, true));
        }
    }
    Ok((recompile_cubin(src, arch, cache_dir)?, false))
}

/// Compiles `src` for `arch` and (over)writes its cache entry, e.g. after a cached cubin failed
/// to load.
pub fn recompile_cubin(src: &str, arch: &str, cache_dir: &Path) -> Result<Vec<u8>> {
    let options = kernel_options(arch);
    let path = cache_path(src, &options, cache_dir)?;
    let c = compile(src, "nli_bert_kernels.cu", &options, Output::Cubin)?;
    let _ = write_atomically(&path, &c.image);
    Ok(c.image)
}

/// The cache file for `src` compiled with `options` by this NVRTC.
pub fn cache_path(src: &str, options: &[String], cache_dir: &Path) -> Result<PathBuf> {
    let (major, minor) = version()?;
    let mut h = Sha1::new();
    h.update(format!("nvrtc {major}.{minor}\0").as_bytes());
    for o in options {
        h.update(o.as_bytes());
        h.update(b"\0");
    }
    h.update(src.as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(cache_dir.join(format!("kernels-{hex}.cubin")))
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Unique per process and call: threads compiling the same source must not share a temporary.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("cubin.tmp.{}.{seq}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// One function's entry in the `ptxas -v` report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// The function's (possibly mangled) name.
    pub name: String,
    /// Whether ptxas compiled it as a kernel entry (`Compiling entry function`).
    pub entry: bool,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of static shared memory.
    pub shared_bytes: u32,
    /// Bytes of stack frame per thread.
    pub stack_bytes: u32,
    /// Bytes of spill stores per thread.
    pub spill_stores: u32,
    /// Bytes of spill loads per thread.
    pub spill_loads: u32,
}

/// Parses the `ptxas info` lines of a `--ptxas-options=-v` log, one entry per function, in the
/// order ptxas reports them:
///
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_90'
/// ptxas info    : Function properties for k
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 12 registers, used 1 barriers, 1024 bytes smem, 368 bytes cmem[0]
/// ```
pub fn parse_ptxas_log(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    // Index into `out` of the function the following lines describe.
    let mut cur: Option<usize> = None;
    let find_or_add = |out: &mut Vec<Resources>, name: &str| -> usize {
        match out.iter().position(|r| r.name == name) {
            Some(i) => i,
            None => {
                out.push(Resources { name: name.to_string(), ..Default::default() });
                out.len() - 1
            }
        }
    };
    for line in log.lines() {
        let l = line.trim();
        let body = l.strip_prefix("ptxas info").map(|s| s.trim_start().trim_start_matches(':').trim());
        if let Some(rest) = body.and_then(|b| b.strip_prefix("Compiling entry function")) {
            if let Some(name) = quoted(rest) {
                let i = find_or_add(&mut out, name);
                out[i].entry = true;
                cur = Some(i);
            }
        } else if let Some(rest) = body.and_then(|b| b.strip_prefix("Function properties for")) {
            cur = Some(find_or_add(&mut out, rest.trim()));
        } else if let Some(rest) = body.and_then(|b| b.strip_prefix("Used")) {
            if let Some(i) = cur {
                for part in rest.split(',') {
                    let p = part.trim();
                    if p.ends_with("registers") {
                        out[i].registers = leading_number(p);
                    } else if p.ends_with("bytes smem") {
                        out[i].shared_bytes = leading_number(p);
                    }
                }
            }
        } else if l.contains("bytes stack frame") {
            if let Some(i) = cur {
                for part in l.split(',') {
                    let p = part.trim();
                    if p.ends_with("stack frame") {
                        out[i].stack_bytes = leading_number(p);
                    } else if p.ends_with("spill stores") {
                        out[i].spill_stores = leading_number(p);
                    } else if p.ends_with("spill loads") {
                        out[i].spill_loads = leading_number(p);
                    }
                }
            }
        }
    }
    out
}

fn quoted(s: &str) -> Option<&str> {
    let a = s.find('\'')?;
    let b = s[a + 1..].find('\'')?;
    Some(&s[a + 1..a + 1 + b])
}

fn leading_number(s: &str) -> u32 {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

/// A plain-text table of `parse_ptxas_log`'s result (one row per function, by name).
pub fn resource_table(arch: &str, rows: &[Resources]) -> String {
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(6);
    let mut s = format!(
        "{:<w$}  {:>5}  {:>4}  {:>9}  {:>5}  {:>12}  {:>11}\n",
        format!("kernel ({arch})"),
        "entry",
        "regs",
        "smem (B)",
        "stack",
        "spill stores",
        "spill loads"
    );
    let mut sorted: Vec<&Resources> = rows.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for r in sorted {
        s.push_str(&format!(
            "{:<w$}  {:>5}  {:>4}  {:>9}  {:>5}  {:>12}  {:>11}\n",
            r.name,
            if r.entry { "yes" } else { "no" },
            r.registers,
            r.shared_bytes,
            r.stack_bytes,
            r.spill_stores,
            r.spill_loads
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'layernorm_forward' for 'sm_90'
ptxas info    : Function properties for layernorm_forward
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 24 registers, used 1 barriers, 256 bytes smem, 392 bytes cmem[0]
ptxas info    : Function properties for _Z6helperf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Compiling entry function 'adam' for 'sm_90'
ptxas info    : Function properties for adam
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 18 registers, 400 bytes cmem[0]
";

    #[test]
    fn parses_ptxas_verbose_log() {
        let r = parse_ptxas_log(LOG);
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0],
            Resources {
                name: "layernorm_forward".into(),
                entry: true,
                registers: 24,
                shared_bytes: 256,
                stack_bytes: 0,
                spill_stores: 0,
                spill_loads: 0
            }
        );
        assert_eq!(
            (r[1].name.as_str(), r[1].entry, r[1].spill_stores, r[1].spill_loads),
            ("_Z6helperf", false, 4, 12)
        );
        assert_eq!((r[1].stack_bytes, r[1].registers), (8, 0));
        assert_eq!((r[2].name.as_str(), r[2].registers, r[2].shared_bytes), ("adam", 18, 0));
        let t = resource_table("sm_90", &r);
        assert!(t.lines().count() == 4 && t.contains("layernorm_forward") && t.contains("sm_90"), "{t}");
    }

    #[test]
    fn kernel_options_are_exact_math() {
        let o = kernel_options("sm_80");
        assert!(o.contains(&"--gpu-architecture=sm_80".to_string()));
        assert!(!o.iter().any(|x| x.contains("fast_math") || x.contains("ftz=true")));
    }
}
