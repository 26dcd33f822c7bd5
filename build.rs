//! Build script for the CUDA kernels in `kernels/`: reads the sources, hands the text work to
//! `nli-bert-kernel-build` (kernels/build/, tested on its own), runs the compilers, and writes
//! `OUT_DIR/kernels.rs` (included by `src/backend/gpu/mod.rs`) with:
//! - `COMBINED`: `common.cuh` then every `*.cu` (sorted) as one translation unit for NVRTC, with
//!   `#include "common.cuh"` dropped and `#line` directives naming the original files;
//! - `KERNELS`: every `extern "C" __global__ void NAME(PARAMS)` with its parameter kinds;
//!   `EMU_TEST_KERNELS` / `EMU_TEST_SOURCES`: the emulator's own test kernels (kernels/emu/tests/);
//! - `SHARED_COMPILE_FLAGS` / `NVRTC_ONLY_FLAGS`: NVRTC's flags at run time, the first set the
//!   same that nvcc gets here;
//! - `PTX`: `COMBINED` precompiled by nvcc when one is found (never required);
//! - `EMU_AVAILABLE`: whether the CUDA emulator (kernels/emu/: the kernels compiled as C++ over a
//!   fiber runtime) was built; it needs a C++17 compiler, and its absence is a warning. The
//!   emulator's test kernels are linked into test executables only.
//!
//! Kernel author errors (a parameter type the launcher cannot pass, kernels that do not compile
//! as C++ for the emulator, nvcc present but failing) fail the build with `file:line`.

use nli_bert_kernel_build::{emu, flags, generate, signature, Unit};
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "NLI_BERT_CUDA_ARCH", "CXX"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rustc-check-cfg=cfg(nli_emu)");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("cargo did not set OUT_DIR")));
    let kdir = manifest.join("kernels");
    let test_dir = kdir.join("emu").join("tests");

    let cu = list(&kdir, &["cu"]);
    let mut units: Vec<Unit> = Vec::new();
    if kdir.join("common.cuh").is_file() {
        units.push(read(&kdir.join("common.cuh"), "kernels"));
    }
    units.extend(cu.iter().map(|p| read(p, "kernels")));
    let test_files = list(&test_dir, &["cu"]);
    let tests: Vec<Unit> = test_files.iter().map(|p| read(p, "kernels/emu/tests")).collect();

    let kernels =
        signature::parse_all(units.iter().filter(|u| u.path.ends_with(".cu"))).unwrap_or_else(|e| fail(&e));
    let test_kernels = signature::parse_all(&tests).unwrap_or_else(|e| fail(&e));
    // names are unique across both sets too: the emulator looks kernels up by name
    signature::parse_all(units.iter().filter(|u| u.path.ends_with(".cu")).chain(&tests))
        .unwrap_or_else(|e| fail(&e));

    write(&out_dir.join("kernels_combined.cu"), &generate::combine(&units, false));
    let ptx = compile_ptx(&out_dir, !cu.is_empty());
    let emu = build_emu(&kdir.join("emu"), &out_dir, &units, &tests, &kernels, &test_kernels);
    if emu {
        println!("cargo:rustc-cfg=nli_emu");
    }

    let embed = |files: &[PathBuf]| -> String {
        files
            .iter()
            .map(|f| format!("    ({:?}, include_str!({:?})),\n", file_name(f), f.display().to_string()))
            .collect()
    };
    let mut out = String::new();
    out.push_str(
        "/// `common.cuh` then every `kernels/*.cu` (sorted) as one translation unit, `#line`-annotated.\n",
    );
    out.push_str(&format!(
        "pub const COMBINED: &str = include_str!({:?});\n",
        out_dir.join("kernels_combined.cu").display().to_string()
    ));
    out.push_str("/// Every `extern \"C\" __global__` kernel in kernels/*.cu with its parameter kinds.\n");
    out.push_str(&generate::kernel_table("KERNELS", &kernels));
    out.push_str(
        "/// The op family of every kernel in [`KERNELS`]: its file's stem (`kernels/<family>.cu`).\n",
    );
    out.push_str(&generate::family_table("KERNEL_FAMILIES", &kernels));
    out.push_str(
        "/// Sources of the emulator's test kernels (kernels/emu/tests/*.cu), valid CUDA of their own.\n",
    );
    out.push_str(&format!("pub const EMU_TEST_SOURCES: &[(&str, &str)] = &[\n{}];\n", embed(&test_files)));
    out.push_str("/// The emulator's own test kernels (kernels/emu/tests/*.cu); not part of `COMBINED`.\n");
    out.push_str(&generate::kernel_table("EMU_TEST_KERNELS", &test_kernels));
    out.push_str("/// The compile flags nvcc (here) and NVRTC (at run time) share; `--gpu-architecture=ARCH` follows.\n");
    out.push_str(&format!("pub const SHARED_COMPILE_FLAGS: &[&str] = &{:?};\n", flags::SHARED));
    out.push_str("/// The flags NVRTC alone takes, after the target.\n");
    out.push_str(&format!("pub const NVRTC_ONLY_FLAGS: &[&str] = &{:?};\n", flags::NVRTC_ONLY));
    out.push_str("/// `COMBINED` compiled to PTX by nvcc at build time (None without nvcc).\n");
    match &ptx {
        Some(path) => out.push_str(&format!(
            "pub const PTX: Option<&str> = Some(include_str!({:?}));\n",
            path.display().to_string()
        )),
        None => out.push_str("pub const PTX: Option<&str> = None;\n"),
    }
    out.push_str("/// Whether the CUDA emulator (kernels/emu/) was compiled into this binary.\n");
    out.push_str(&format!("pub const EMU_AVAILABLE: bool = {emu};\n"));
    write(&out_dir.join("kernels.rs"), &out);
}

/// Prints `msg` and fails the build.
fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

fn read(p: &Path, dir: &str) -> Unit {
    let text = fs::read_to_string(p).unwrap_or_else(|e| fail(&format!("reading {}: {e}", p.display())));
    Unit::new(format!("{dir}/{}", file_name(p)), text)
}

fn write(path: &Path, text: &str) {
    // Unchanged files keep their mtime, so cargo and cc do not redo work needlessly.
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return;
    }
    if let Err(e) = fs::write(path, text) {
        fail(&format!("writing {}: {e}", path.display()));
    }
}

fn ext(p: &Path) -> &str {
    p.extension().and_then(|e| e.to_str()).unwrap_or("")
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Files in `dir` with one of the extensions, sorted (none if `dir` does not exist).
fn list(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && exts.contains(&ext(p)))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The emulator: the kernels as C++ over kernels/emu/runtime.cpp, a static library linked into
/// everything; the test kernels as an object file passed to test links only.
fn build_emu(
    emu_dir: &Path,
    out: &Path,
    units: &[Unit],
    tests: &[Unit],
    kernels: &[signature::Kernel],
    test_kernels: &[signature::Kernel],
) -> bool {
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .std("c++17")
            .opt_level(2)
            .warnings(true)
            .extra_warnings(false)
            .flag("-Wno-unknown-pragmas")
            .flag("-fno-strict-aliasing")
            .flag_if_supported("-ffp-contract=off")
            .include(emu_dir);
        b
    };
    let usable = base()
        .try_get_compiler()
        .ok()
        .and_then(|tool| tool.to_command().arg("--version").output().ok())
        .is_some_and(|o| o.status.success());
    if !usable {
        println!(
            "cargo:warning=no C++ compiler found (install g++, or set CXX): the CUDA emulator is not built, so \
             the `emu` device and its tests are unavailable"
        );
        return false;
    }
    let header = emu_dir.join("emu.h").display().to_string();
    let generated = |file: &str, src: &str, text: String, table: &str, ks: &[signature::Kernel]| {
        write(&out.join(src), &text);
        let src_path = out.join(src).display().to_string();
        write(&out.join(file), &emu::trampolines(&header, &src_path, table, ks));
        out.join(file)
    };
    let main_cpp = generated(
        "emu_kernels.cpp",
        "kernels_combined_emu.cu",
        generate::combine(units, true),
        "nli_emu_kernels_main",
        kernels,
    );
    let test_cpp = generated(
        "emu_test_kernels.cpp",
        "kernels_emu_tests.cu",
        generate::combine(tests, true),
        "nli_emu_kernels_test",
        test_kernels,
    );
    let bad = |e: &dyn std::fmt::Display| -> ! {
        fail(&format!(
            "the kernels do not compile as C++ for the CUDA emulator (kernels/emu/); the compiler's messages \
             are above. {e}"
        ))
    };
    if let Err(e) = base().file(emu_dir.join("runtime.cpp")).file(&main_cpp).try_compile("nli_emu") {
        bad(&e);
    }
    match base().file(&test_cpp).try_compile_intermediates() {
        Ok(objects) => {
            for o in objects {
                println!("cargo:rustc-link-arg-tests={}", o.display());
            }
        }
        Err(e) => bad(&e),
    }
    true
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(h) = env::var_os("CUDA_HOME").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(h).join("bin").join("nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    env::split_paths(&env::var_os("PATH")?).map(|d| d.join("nvcc")).find(|p| p.is_file())
}

/// The PTX file nvcc wrote for `COMBINED`, or None without a working nvcc.
fn compile_ptx(out: &Path, any_kernel: bool) -> Option<PathBuf> {
    if !any_kernel {
        return None;
    }
    let nvcc =
        find_nvcc().filter(|n| Command::new(n).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(nvcc) = nvcc else {
        println!(
            "cargo:warning=nvcc not found ($NVCC, $CUDA_HOME/bin, PATH): no precompiled PTX; the CUDA device \
             compiles the kernels with NVRTC at run time"
        );
        return None;
    };
    let arch =
        env::var("NLI_BERT_CUDA_ARCH").ok().filter(|a| !a.is_empty()).unwrap_or_else(|| "sm_80".into());
    let ptx = out.join("kernels.ptx");
    let output = Command::new(&nvcc)
        .args(flags::nvcc_ptx(&arch))
        .arg("-o")
        .arg(&ptx)
        .arg(out.join("kernels_combined.cu"))
        .output()
        .unwrap_or_else(|e| fail(&format!("running {}: {e}", nvcc.display())));
    if !output.status.success() {
        fail(&format!(
            "{} failed to compile the kernels to PTX for {arch}:\n{}{}",
            nvcc.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Some(ptx)
}
