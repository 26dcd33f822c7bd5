//! Finding the CUDA libraries: cudarc `dlopen`s `libcuda`, `libnvrtc` and `libcublas` by bare
//! name (loader path only) and panics when one is missing. [`preload_libraries`] loads them by
//! absolute path with `RTLD_GLOBAL` from `NLI_BERT_CUDA_LIB_DIR` (a `:`-separated list, always
//! first), `$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`, `/usr/local/nvidia/lib64` and the
//! `nvidia/*/lib` folders of the PyPI wheels beside a `python3` on `PATH` (or in `$VIRTUAL_ENV`,
//! `$CONDA_PREFIX`, `~/.local`); cudarc's later lookup by soname then finds them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::sys;

use crate::error::Error;

/// What [`preload_libraries`] searched and loaded.
#[derive(Clone, Debug, Default)]
pub struct LibraryReport {
    /// Folders searched, in order.
    pub searched: Vec<PathBuf>,
    /// Libraries loaded from those folders (absolute paths).
    pub loaded: Vec<PathBuf>,
    /// Files found but not loadable, with `dlopen`'s message.
    pub failed: Vec<String>,
}

/// A family of CUDA libraries: the file names tried per folder, each with the prefix of
/// companion files to load first (`libnvrtc-builtins.so.13.*` for `libnvrtc.so.13`).
struct LibFamily {
    files: &'static [(&'static str, &'static str)],
    /// Whether cudarc's own lookup (loader path) already finds the library.
    present: fn() -> bool,
    /// Whether toolkit / wheel folders may provide it (never for the driver).
    from_toolkit: bool,
}

pub(super) fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names; calls nothing in it.
    unsafe { sys::is_culib_present() }
}
fn nvrtc_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}
fn cublas_present() -> bool {
    // SAFETY: as above.
    unsafe { blas_sys::is_culib_present() }
}
fn nccl_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

const FAMILIES: [LibFamily; 4] = [
    LibFamily {
        files: &[("libcuda.so.1", ""), ("libcuda.so", "")],
        present: driver_present,
        from_toolkit: false,
    },
    LibFamily {
        files: &[
            ("libnvrtc.so.13", "libnvrtc-builtins.so.13."),
            ("libnvrtc.so.12", "libnvrtc-builtins.so.12."),
        ],
        present: nvrtc_present,
        from_toolkit: true,
    },
    LibFamily {
        files: &[("libcublas.so.13", "libcublasLt.so.13"), ("libcublas.so.12", "libcublasLt.so.12")],
        present: cublas_present,
        from_toolkit: true,
    },
    // Only with several GPUs (data parallel); missing, it is an error only then.
    LibFamily { files: &[("libnccl.so.2", "")], present: nccl_present, from_toolkit: true },
];

/// Makes the CUDA libraries findable by cudarc (see the module docs); runs once per process and
/// returns what it did. Never fails: what is still missing shows up as an error naming the
/// library when it is needed.
pub fn preload_libraries() -> &'static LibraryReport {
    static REPORT: OnceLock<LibraryReport> = OnceLock::new();
    REPORT.get_or_init(|| {
        let explicit = explicit_dirs();
        let probed = probe_dirs();
        let mut rep = LibraryReport::default();
        for d in explicit.iter().chain(&probed) {
            if !rep.searched.contains(d) {
                rep.searched.push(d.clone());
            }
        }
        for fam in &FAMILIES {
            // An explicit folder wins over the loader path; probed folders only fill gaps.
            if load_family(fam, &explicit, &mut rep) || (fam.present)() {
                continue;
            }
            let dirs: Vec<PathBuf> = if fam.from_toolkit {
                probed.clone()
            } else {
                probed
                    .iter()
                    .filter(|d| d.starts_with("/usr/local/nvidia") || d.starts_with("/usr/lib/wsl"))
                    .cloned()
                    .collect()
            };
            load_family(fam, &dirs, &mut rep);
        }
        rep
    })
}

/// Loads the first of `fam.files` found in `dirs` (companions first). True if one loaded.
fn load_family(fam: &LibFamily, dirs: &[PathBuf], rep: &mut LibraryReport) -> bool {
    for dir in dirs {
        for (file, companion) in fam.files {
            let path = dir.join(file);
            if !path.is_file() {
                continue;
            }
            if !companion.is_empty() {
                for c in companions(dir, companion) {
                    dlopen_global(&c, rep);
                }
            }
            if dlopen_global(&path, rep) {
                return true;
            }
        }
    }
    false
}

/// Files in `dir` whose name starts with `prefix` (not the `.alt.` variants), sorted.
fn companions(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| n.starts_with(prefix) && !n.contains(".alt."))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn dlopen_global(path: &Path, rep: &mut LibraryReport) -> bool {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a CUDA library runs its initialisers, which only set up the library;
    // the handle is kept open for the life of the process (into_raw), so no symbol dangles.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            let _ = lib.into_raw();
            rep.loaded.push(path.to_path_buf());
            true
        }
        Err(e) => {
            rep.failed.push(format!("{}: {e}", path.display()));
            false
        }
    }
}

fn explicit_dirs() -> Vec<PathBuf> {
    std::env::var_os("NLI_BERT_CUDA_LIB_DIR")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default()
}

/// Toolkit, driver and PyPI-wheel folders that exist on this machine.
fn probe_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = std::env::var_os(var).filter(|s| !s.is_empty()) {
            dirs.push(PathBuf::from(h).join("lib64"));
        }
    }
    for d in ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/nvidia/lib64"]
    {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("/usr/lib/wsl/lib"));
    // Python prefixes: virtual/conda environments, and the parent of every PATH folder with a
    // python3 in it (a venv's bin/..).
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(|v| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from))
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        for bin in std::env::split_paths(&path) {
            if bin.join("python3").exists() {
                if let Some(p) = bin.parent() {
                    prefixes.push(p.to_path_buf());
                }
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        prefixes.push(PathBuf::from(home).join(".local"));
    }
    for prefix in prefixes {
        for site in site_packages(&prefix) {
            for sub in ["nvidia/cu13/lib", "nvidia/cublas/lib", "nvidia/cuda_nvrtc/lib"] {
                dirs.push(site.join(sub));
            }
        }
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if d.is_dir() && !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// `prefix/lib/python3.*/{site,dist}-packages`.
fn site_packages(prefix: &Path) -> Vec<PathBuf> {
    let lib = prefix.join("lib");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("python3")))
                .flat_map(|e| [e.path().join("site-packages"), e.path().join("dist-packages")])
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The error for a CUDA library that cannot be loaded: which one (`what`, `files`), where we
/// looked, and `hint` (how to get it).
pub fn missing_library_error(what: &str, files: &str, hint: &str) -> Error {
    let rep = preload_libraries();
    let searched = if rep.searched.is_empty() {
        "(none of the usual folders exist)".to_string()
    } else {
        rep.searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    };
    let failed = if rep.failed.is_empty() {
        String::new()
    } else {
        format!("; could not load: {}", rep.failed.join("; "))
    };
    Error::msg(format!(
        "CUDA: the {what} library ({files}) was not found: searched the loader path (LD_LIBRARY_PATH, \
         ld.so.cache) and {searched}{failed}. Set NLI_BERT_CUDA_LIB_DIR to the folder that holds it{}{hint}",
        if hint.is_empty() { "" } else { "; " }
    ))
}
