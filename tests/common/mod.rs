//! Shared by the GPU test files: which devices a backend-parity test runs on.

#![allow(dead_code)]

use nli_bert::backend::gpu::cuda::{self, Cuda};
use nli_bert::backend::gpu::emu::Emu;
use nli_bert::backend::gpu::Gpu;

/// The GPU backend a parity test runs: our kernels on the emulator, or on a real CUDA device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dev {
    /// `Gpu<Emu>`.
    Emu,
    /// `Gpu<Cuda>` on device 0.
    Cuda,
}

/// `Gpu<Emu>`.
pub fn emu() -> Gpu<Emu> {
    Gpu::new(Emu::new().expect("the CUDA emulator is built with the crate"))
}

/// `Gpu<Cuda>` on device 0 (call [`have_cuda`] first).
pub fn cuda() -> Gpu<Cuda> {
    Gpu::new(Cuda::new(0).unwrap_or_else(|e| panic!("Cuda::new(0): {e}")))
}

/// Whether a CUDA device is usable. Without one, prints a notice and returns false, unless
/// `NLI_BERT_REQUIRE_CUDA=1` (set by `scripts/gpu_run.sh run` on a GPU machine): then it panics.
pub fn have_cuda(test: &str) -> bool {
    if cuda::cuda_available() {
        return true;
    }
    let why = Cuda::device_count().err().map(|e| e.to_string()).unwrap_or_else(|| "0 devices".into());
    if std::env::var("NLI_BERT_REQUIRE_CUDA").as_deref() == Ok("1") {
        panic!("{test}: NLI_BERT_REQUIRE_CUDA=1 but no CUDA device is usable: {why}");
    }
    println!("skipping {test}: no CUDA device ({why})");
    false
}
