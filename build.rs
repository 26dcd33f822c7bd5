//! Build script: embeds the CUDA kernel sources in `kernels/` into the binary
//! (`OUT_DIR/kernels.rs`: `pub const SOURCES: &[(&str, &str)]`, file name and text), so the GPU
//! engine can compile them with NVRTC at run time. It never needs a CUDA toolkit and never fails
//! because one is missing.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let dir = manifest.join("kernels");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu") | Some("cuh")))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from("/// Kernel sources (file name, text), embedded by build.rs.\npub const SOURCES: &[(&str, &str)] = &[\n");
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.push_str(&format!("    ({name:?}, include_str!({:?})),\n", f.display().to_string()));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out_dir.join("kernels.rs"), out).expect("writing OUT_DIR/kernels.rs");
}
