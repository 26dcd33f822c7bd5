//! Every CUDA kernel compiles with NVRTC 13.0 (the run-time path of `--device cuda`) for sm_80
//! and sm_90, with no errors and **no register spills**; registers, shared memory and stack per
//! kernel are printed (`cargo test --test kernels_nvrtc -- --nocapture`). No GPU needed: only
//! `libnvrtc` (PyPI `nvidia-cuda-nvrtc==13.0.88`; point `NLI_BERT_CUDA_LIB_DIR` at its
//! `nvidia/cu13/lib`). Without NVRTC the tests skip with a notice, unless
//! `NLI_BERT_REQUIRE_NVRTC=1` (set by `.ci/run`), which turns the skip into a failure.

mod common;

use std::collections::BTreeSet;

use nli_bert::backend::gpu::nvrtc::{self, Output, Resources};
use nli_bert::backend::gpu::{COMBINED, EMU_TEST_KERNELS, EMU_TEST_SOURCES, KERNELS};

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// A small self-contained kernel that uses what ours use (static and dynamic shared memory,
/// warp shuffles, atomics, a bf16 conversion in inline PTX), so NVRTC is exercised even before
/// kernels/ has any.
const SELFTEST: &str = r#"
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ unsigned short to_bf16(float f) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
extern "C" __global__ void selftest_block_sum(float* out, unsigned short* out_bf16, const float* x, int n,
                                              int* counter) {
    __shared__ float part[32];
    extern __shared__ float dyn[];
    float v = 0.f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
    dyn[threadIdx.x] = v;
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : 0.f;
        w = warp_sum(w);
        if (threadIdx.x == 0) {
            out[blockIdx.x] = w + 0.f * dyn[0];
            out_bf16[blockIdx.x] = to_bf16(w);
            atomicAdd(counter, 1);
        }
    }
}
"#;

/// True if NVRTC can be used; otherwise prints why and returns false, or fails the test when
/// `NLI_BERT_REQUIRE_NVRTC=1`.
fn nvrtc_ready(test: &str) -> bool {
    match nvrtc::require() {
        Ok(()) => true,
        Err(e) => {
            common::missing(common::Need::Nvrtc, test, &format!("NVRTC is not usable ({e})"));
            false
        }
    }
}

/// Compiles `src` to a cubin for `arch` with `ptxas -v` and returns the resource report.
fn compile_verbose(src: &str, arch: &str) -> (Vec<Resources>, String, Vec<u8>) {
    let mut opts = nvrtc::kernel_options(arch);
    opts.push("--ptxas-options=-v".into());
    let c =
        nvrtc::compile(src, "kernels_nvrtc_test.cu", &opts, Output::Cubin).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.image.starts_with(b"\x7fELF"), "{arch}: NVRTC's cubin is not an ELF image");
    (nvrtc::parse_ptxas_log(&c.log), c.log, c.image)
}

/// Prints the table and checks: every expected kernel was compiled as an entry, nothing else
/// was, no function spills, ptxas reported no error or warning.
fn check_report(arch: &str, rows: &[Resources], log: &str, expected: &BTreeSet<&str>) {
    println!("{}", nvrtc::resource_table(arch, rows));
    let low = log.to_lowercase();
    assert!(!low.contains("error") && !low.contains("warning"), "{arch}: NVRTC/ptxas complained:\n{log}");
    let entries: BTreeSet<&str> = rows.iter().filter(|r| r.entry).map(|r| r.name.as_str()).collect();
    assert_eq!(&entries, expected, "{arch}: kernels compiled vs kernels expected\nlog:\n{log}");
    let spilling: Vec<String> = rows
        .iter()
        .filter(|r| r.spill_stores > 0 || r.spill_loads > 0)
        .map(|r| format!("{} ({} B stores, {} B loads)", r.name, r.spill_stores, r.spill_loads))
        .collect();
    assert!(spilling.is_empty(), "{arch}: register spills in {}", spilling.join(", "));
    for r in rows.iter().filter(|r| r.entry) {
        assert!(r.registers > 0, "{arch}: no register count for {} in the log:\n{log}", r.name);
    }
}

#[test]
fn nvrtc_selftest_kernel_compiles_without_spills_sm80_sm90() {
    if !nvrtc_ready("nvrtc_selftest_kernel_compiles_without_spills_sm80_sm90") {
        return;
    }
    let (major, minor) = nvrtc::version().unwrap_or_else(|e| panic!("{e}"));
    println!("NVRTC {major}.{minor}");
    for arch in ARCHS {
        let (rows, log, _) = compile_verbose(SELFTEST, arch);
        check_report(arch, &rows, &log, &BTreeSet::from(["selftest_block_sum"]));
        let r = rows.iter().find(|r| r.entry).unwrap_or_else(|| panic!("no entry in\n{log}"));
        assert_eq!(r.shared_bytes, 128, "{arch}: static shared memory of `part[32]`\n{log}");
    }
}

#[test]
fn nvrtc_all_kernels_compile_without_spills_sm80_sm90() {
    if !nvrtc_ready("nvrtc_all_kernels_compile_without_spills_sm80_sm90") {
        return;
    }
    if COMBINED.trim().is_empty() {
        println!("nvrtc_all_kernels_compile_without_spills_sm80_sm90: kernels/ has no kernels yet");
        return;
    }
    let expected: BTreeSet<&str> = KERNELS.iter().map(|(n, _)| *n).collect();
    for arch in ARCHS {
        let (rows, log, cubin) = compile_verbose(COMBINED, arch);
        println!("{arch}: cubin {} bytes, {} kernels", cubin.len(), expected.len());
        check_report(arch, &rows, &log, &expected);
    }
}

/// The emulator's own test kernels (kernels/emu/tests/) are real CUDA too: what the emulator is
/// shown to catch is what a GPU would run. Spills do not matter here; errors do.
#[test]
fn nvrtc_emu_test_kernels_compile_sm80_sm90() {
    if !nvrtc_ready("nvrtc_emu_test_kernels_compile_sm80_sm90") {
        return;
    }
    let expected: BTreeSet<&str> = EMU_TEST_KERNELS.iter().map(|(n, _)| *n).collect();
    for arch in ARCHS {
        let mut compiled = BTreeSet::new();
        for (file, src) in EMU_TEST_SOURCES {
            let mut opts = nvrtc::kernel_options(arch);
            opts.push("--ptxas-options=-v".into());
            let c = nvrtc::compile(src, file, &opts, Output::Cubin).unwrap_or_else(|e| panic!("{e}"));
            let rows = nvrtc::parse_ptxas_log(&c.log);
            compiled.extend(rows.iter().filter(|r| r.entry).map(|r| r.name.clone()));
        }
        let compiled: BTreeSet<&str> = compiled.iter().map(String::as_str).collect();
        assert_eq!(compiled, expected, "{arch}: emulator test kernels compiled vs listed");
        println!("{arch}: {} emulator test kernels compile", compiled.len());
    }
}

#[test]
fn nvrtc_all_kernels_compile_to_ptx() {
    if !nvrtc_ready("nvrtc_all_kernels_compile_to_ptx") {
        return;
    }
    let (major, minor) = nvrtc::version().unwrap_or_else(|e| panic!("{e}"));
    for arch in ["compute_80", "compute_90"] {
        let src = if COMBINED.trim().is_empty() { SELFTEST } else { COMBINED };
        let c = nvrtc::compile(src, "kernels_nvrtc_test.cu", &nvrtc::kernel_options(arch), Output::Ptx)
            .unwrap_or_else(|e| panic!("{e}"));
        let ptx = String::from_utf8_lossy(&c.image);
        let sm = arch.replace("compute_", "sm_");
        assert!(ptx.lines().any(|l| l.trim() == format!(".target {sm}")), "{arch}: no `.target {sm}`");
        if major == 13 {
            // The ISA a CUDA 13.0 driver (580) JIT-compiles; a newer NVRTC would write a newer one.
            assert!(ptx.contains(&format!(".version 9.{minor}")), "{arch}: NVRTC 13.{minor} PTX ISA");
        }
        let names: Vec<&str> = if COMBINED.trim().is_empty() {
            vec!["selftest_block_sum"]
        } else {
            KERNELS.iter().map(|(n, _)| *n).collect()
        };
        for n in names {
            assert!(ptx.contains(&format!(".entry {n}(")), "{arch}: no `.entry {n}(` in the PTX");
        }
        println!("{arch}: PTX {} bytes", c.image.len());
    }
}

#[test]
fn nvrtc_cubin_cache_roundtrip() {
    if !nvrtc_ready("nvrtc_cubin_cache_roundtrip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (a, cached_a) =
        nvrtc::compile_cubin_cached(SELFTEST, "sm_90", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let (b, cached_b) =
        nvrtc::compile_cubin_cached(SELFTEST, "sm_90", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!cached_a && cached_b, "first call compiles, second reads the cache");
    assert_eq!(a, b);
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(files.len(), 1, "one cache file, no temporary left: {files:?}");
    assert!(files[0].starts_with("kernels-") && files[0].ends_with(".cubin") && files[0].len() == 8 + 40 + 6);
    // Another architecture is another entry.
    let (_, cached_c) =
        nvrtc::compile_cubin_cached(SELFTEST, "sm_80", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!cached_c);
}

#[test]
fn nvrtc_compile_error_shows_the_log() {
    if !nvrtc_ready("nvrtc_compile_error_shows_the_log") {
        return;
    }
    let bad = "extern \"C\" __global__ void broken(float* x) { x[0] = undeclared_name; }";
    let e = nvrtc::compile(bad, "broken.cu", &nvrtc::kernel_options("sm_90"), Output::Cubin)
        .err()
        .unwrap_or_else(|| panic!("a kernel with an undeclared name compiled"));
    let msg = e.to_string();
    assert!(msg.contains("broken.cu") && msg.contains("undeclared_name") && msg.contains("error"), "{msg}");
}
