//! Shared by the GPU test files: which devices a backend-parity test runs on.

#![allow(dead_code)]

use nli_bert::backend::cpu::Cpu;
use nli_bert::backend::gpu::cuda::{self, Cuda};
use nli_bert::backend::gpu::emu::Emu;
use nli_bert::backend::gpu::Gpu;
use nli_bert::backend::Backend;
use nli_bert::float::Float;
use nli_bert::rng::HostRng;
use std::path::{Path, PathBuf};
use std::process::Output;

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

/// The float64 reference backend on one thread.
pub fn cpu() -> Cpu<f64> {
    Cpu::<f64>::new(1).expect("thread pool")
}

/// `n` standard normal values.
pub fn randn(rng: &mut HostRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// A buffer on `be` holding `x` rounded to the backend's scalar.
pub fn up<B: Backend>(be: &B, x: &[f64]) -> B::Buf {
    let v: Vec<B::F> = x.iter().map(|&x| <B::F as Float>::from_f64(x)).collect();
    be.upload(&v).expect("upload")
}

/// A buffer's contents widened to f64.
pub fn down<B: Backend>(be: &B, b: &B::Buf) -> Vec<f64> {
    be.download(be.view(b)).expect("download").into_iter().map(<B::F as Float>::to_f64).collect()
}

/// A subprocess's stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A small learnable TSV: negation → contradiction, a prefix → entailment, an added detail → neutral.
pub fn write_tsv(dir: &Path, name: &str, n: usize, offset: usize) -> PathBuf {
    let subjects = ["a man", "a woman", "the dog", "a child", "the cat", "an old man", "two girls"];
    let verbs = ["is running", "is sleeping", "is eating", "is jumping", "is singing", "is reading"];
    let details = ["in the park", "at home", "near the river", "with a friend"];
    let mut s = String::from("label\tpremise\thypothesis\n");
    for i in offset..offset + n {
        let subj = subjects[i % subjects.len()];
        let verb = verbs[(i / 3) % verbs.len()];
        let det = details[(i / 7) % details.len()];
        let (label, p, h) = match i % 3 {
            0 => ("entailment", format!("{subj} {verb} {det}"), format!("{subj} {verb}")),
            1 => ("contradiction", format!("{subj} {verb}"), format!("{subj} is not {}", &verb[3..])),
            _ => ("neutral", format!("{subj} {verb}"), format!("{subj} {verb} {det}")),
        };
        s.push_str(&format!("{label}\t{p}\t{h}\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, s).unwrap();
    path
}
