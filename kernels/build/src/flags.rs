//! The flags the kernels are compiled with, one set for nvcc (PTX at build time) and NVRTC (PTX or
//! a cubin at run time), so that both compile the same code the same way.
//!
//! - `-std=c++17`, `-lineinfo` (source lines in profiles and compute-sanitizer reports) and the
//!   target, `--gpu-architecture=ARCH`: both compilers take them as they are.
//! - No `--use_fast_math` and no `-O` flag: device code is optimised fully by default in both, and
//!   fast math would break the match with the CPU reference.
//! - NVRTC alone gets `-default-device` (functions without `__host__`/`__device__` are device
//!   code; nvcc has no such flag, and every helper in `common.cuh` is marked `__device__`), and nvcc
//!   alone gets `-ptx` and `-o FILE` (its output mode and file).

/// Flags shared by nvcc and NVRTC.
pub const SHARED: &[&str] = &["-std=c++17", "-lineinfo"];

/// Flags NVRTC alone takes, after the target.
pub const NVRTC_ONLY: &[&str] = &["-default-device"];

/// nvcc's flags for PTX of `arch` (`sm_80`), before `-o FILE INPUT`.
pub fn nvcc_ptx(arch: &str) -> Vec<String> {
    let mut v = vec!["-ptx".to_string()];
    v.extend(SHARED.iter().map(|s| s.to_string()));
    v.push(format!("--gpu-architecture={arch}"));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvcc_and_nvrtc_share_every_flag_but_their_own() {
        // NVRTC's list as the engine builds it (nvrtc::kernel_options): shared, target, its own.
        let mut a: Vec<String> = SHARED.iter().map(|s| s.to_string()).collect();
        a.push("--gpu-architecture=sm_90".into());
        a.extend(NVRTC_ONLY.iter().map(|s| s.to_string()));
        let b = nvcc_ptx("sm_90");
        for f in SHARED.iter().map(|s| s.to_string()).chain(["--gpu-architecture=sm_90".to_string()]) {
            assert!(a.contains(&f) && b.contains(&f), "{f}");
        }
        let only_a: Vec<_> = a.iter().filter(|f| !b.contains(f)).collect();
        let only_b: Vec<_> = b.iter().filter(|f| !a.contains(f)).collect();
        assert_eq!(only_a, ["-default-device"]);
        assert_eq!(only_b, ["-ptx"]);
        assert!(!a.iter().chain(&b).any(|f| f.contains("fast_math") || f.starts_with("-O")));
    }
}
