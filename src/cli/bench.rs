//! `nli-bert bench`: the speed of one training step (forward, backward, Adam) of a model shape with
//! random weights on any engine ([`Engine`]: cpu, emu, cuda), and of the data pipeline (read,
//! tokenise, pack) on a file.
//!
//! Figures (docs/performance.md explains them):
//! - examples/s and tokens/s over the timed steps (the device synchronised before the clock
//!   stops);
//! - TFLOP/s: per example `6·N_mm·T + 12·C·L·T²` (N_mm the matmul parameters a token
//!   touches, `L·(4C² + 2CF)`; the second term attention), summed over the actual batches;
//! - GB/s, an estimate of the bytes the engine moves: per token `66·C·L` activation elements
//!   (22·C per layer forward, twice that backward; 4 bytes each, 2 with bf16 storage), per step
//!   four passes over the matmul weights (forward and two backward products, in bf16 from the
//!   weights' bf16 copy with bf16 storage; the f32 gradient) and Adam's 28 bytes per updated
//!   parameter (30 with the bf16 copy; every parameter but the token-embedding rows the batch does
//!   not touch), plus the embedding gathers and scatters;
//! - on a CUDA device whose card is in [`CEILINGS`] (H100, H200, A100), those figures against its
//!   datasheet ceilings; on another card, a line saying that no ceilings are known for it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::engine::{Engine, OnBackend};
use super::EngineArgs;
use crate::backend::Backend;
use crate::data::batch::{encode_dataset_with, Batch, Encoded, TextEncoder, Truncate};
use crate::data::snli::{read_dataset, Dataset};
use crate::data::vocab::Vocab;
use crate::data::wordpiece::{read_vocab_txt, WordPiece};
use crate::error::{Error, Result};
use crate::model::bert::{cast_params, init_params, Acts, Mode, Model};
use crate::model::config::BertConfig;
use crate::model::params::ParamLayout;
use crate::rng::HostRng;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::step::Stepper;
use clap::Args;

/// The datasheet ceilings of a card: dense bf16 tensor-core and fp32 CUDA-core peaks, memory
/// bandwidth.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Ceilings {
    /// The card, as matched in the device name.
    pub card: &'static str,
    /// Dense bf16 tensor-core peak, FLOP/s.
    pub bf16_flops: f64,
    /// fp32 (non-tensor) peak, FLOP/s.
    pub fp32_flops: f64,
    /// Memory bandwidth, bytes/s.
    pub bytes_per_s: f64,
}

/// Ceilings by card, matched in order against the device name (NVIDIA datasheets, SXM parts;
/// measured on an H200: bf16 GEMM 770-798 TFLOP/s, device copy 4.3 TB/s).
pub const CEILINGS: [Ceilings; 4] = [
    Ceilings { card: "H100 PCIe", bf16_flops: 756e12, fp32_flops: 51e12, bytes_per_s: 2.0e12 },
    Ceilings { card: "H100", bf16_flops: 989e12, fp32_flops: 67e12, bytes_per_s: 3.35e12 },
    Ceilings { card: "H200", bf16_flops: 989e12, fp32_flops: 67e12, bytes_per_s: 4.8e12 },
    Ceilings { card: "A100", bf16_flops: 312e12, fp32_flops: 19.5e12, bytes_per_s: 2.0e12 },
];

/// The ceilings of the card named in `device` (a CUDA device's name holds the card's), if known.
pub fn ceilings(device: &str) -> Option<Ceilings> {
    CEILINGS.iter().copied().find(|c| device.contains(c.card))
}

/// The vocabulary size of d2l's pretrained BERTs.
pub const D2L_VOCAB: usize = 60_005;

/// Model shapes to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// C 64, F 128, 2 heads, 2 blocks, vocabulary 1,000, 128 positions: a smoke test.
    Tiny,
    /// d2l's bert.small: C 256, F 512, 4 heads, 2 blocks, vocabulary 60,005.
    #[value(name = "bert.small")]
    BertSmall,
    /// d2l's bert.base: C 768, F 3072, 12 heads, 12 blocks, vocabulary 60,005.
    #[value(name = "bert.base")]
    BertBase,
}

impl Shape {
    /// The model configuration.
    pub fn config(self) -> BertConfig {
        match self {
            Shape::Tiny => BertConfig {
                hidden: 64,
                ffn: 128,
                heads: 2,
                max_positions: 128,
                ..BertConfig::d2l_small(1000)
            },
            Shape::BertSmall => BertConfig::d2l_small(D2L_VOCAB),
            Shape::BertBase => BertConfig::d2l_base(D2L_VOCAB),
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Tiny => "tiny",
            Shape::BertSmall => "bert.small",
            Shape::BertBase => "bert.base",
        }
    }
}

/// What `nli-bert bench` was asked.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// Model shape (random weights).
    pub shape: Shape,
    /// Pairs per step.
    pub batch_size: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Dropout of the training step.
    pub dropout: f64,
    /// Seed of the weights, the data and the dropout masks.
    pub seed: u64,
    /// Token budget per pair (for `--data`).
    pub max_len: usize,
    /// A dataset: time its pipeline, and train on its pairs instead of random ones.
    pub data: Option<PathBuf>,
    /// A WordPiece `vocab.txt`: also time WordPiece on `data`.
    pub wordpiece: Option<PathBuf>,
    /// Runs of the data pipeline (the median is reported).
    pub repeat: usize,
    /// Where to run.
    pub engine: Engine,
    /// Print one JSON object instead of text.
    pub json: bool,
    /// After the timed steps, time `steps` more with an event after every op: time per op family.
    pub breakdown: bool,
    /// Whether the steps run as recorded graphs.
    pub graphs: crate::train::step::GraphsSel,
}

/// The figures of the timed training steps.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Device name.
    pub device: String,
    /// Whether it is a CUDA GPU (card ceilings apply when the card is known).
    pub cuda: bool,
    /// Timed steps.
    pub steps: usize,
    /// Seconds of the timed steps.
    pub seconds: f64,
    /// Examples in the timed steps.
    pub examples: usize,
    /// Tokens in the timed steps.
    pub tokens: usize,
    /// Training FLOPs of the timed steps (`6·N_mm·T + 12·C·L·T²` per example).
    pub flops: f64,
    /// Estimated bytes moved by the timed steps.
    pub bytes: f64,
    /// Parameters of the model.
    pub params: usize,
    /// Mean loss of the timed steps (a sanity check: about ln 3 with random weights).
    pub mean_loss: f64,
    /// Time per op family (`--breakdown`), if asked and the backend can time ops.
    pub breakdown: Option<Breakdown>,
    /// The step graphs, when the steps ran as graphs.
    pub graphs: Option<GraphStats>,
    /// Per cuBLASLt epilogue, the products that ran fused out of those asked (CUDA).
    pub fused: Option<String>,
}

/// How the step graphs of a bench went.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GraphStats {
    /// Tokens per bucket (a batch is padded to the next multiple).
    pub bucket: usize,
    /// Graphs captured (warm-up steps included).
    pub captures: usize,
    /// Steps replayed through an updated graph.
    pub updates: usize,
    /// Captures after an update found the step changed.
    pub recaptures: usize,
    /// Graphs dropped because the activations grew (or a graph failed).
    pub dropped: usize,
    /// Host microseconds per update (re-issuing a step into its graph).
    pub host_us_per_update: f64,
}

/// Where a step's time goes: per op family, from events recorded after every op over extra
/// steps run after the timed ones (so the events do not slow the headline figure).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Breakdown {
    /// Steps timed with events.
    pub steps: usize,
    /// Wall time of those steps, ms per step (events included).
    pub wall_ms_per_step: f64,
    /// The families, in the order they first ran.
    pub families: Vec<FamilyTime>,
}

/// One op family's share of a step.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FamilyTime {
    /// Family (a kernels/<family>.cu stem, `matmul` for cuBLAS, `memset`, `upload`).
    pub family: String,
    /// Milliseconds per step.
    pub ms_per_step: f64,
    /// Share of the summed family times.
    pub share: f64,
    /// Achieved TFLOP/s for the compute families (matmul: `6·N_mm` per token; attention:
    /// `12·C·L` per token pair of a sequence).
    pub tflops: Option<f64>,
    /// Achieved GB/s for the memory-bound families whose traffic is estimated (layernorm,
    /// activation, reduce, adam; f32 activations).
    pub gbps: Option<f64>,
}

/// FLOPs and estimated bytes per family of one step over `batch` (see [`FamilyTime`]).
/// `ab`: bytes per stored activation element.
fn family_work(cfg: &BertConfig, batch: &Batch, ab: f64) -> Vec<(&'static str, f64, f64)> {
    let (c, f, l) = (cfg.hidden as f64, cfg.ffn as f64, cfg.layers as f64);
    let t = batch.t() as f64;
    let att: f64 = batch.lens.iter().map(|&n| (n * n) as f64).sum::<f64>() * 12.0 * c * l;
    // layernorm: 2 per layer, forward ~4·T·C floats, backward ~6·T·C.
    let ln = l * 2.0 * 10.0 * t * c * ab;
    // activation.cu: the FFN nonlinearity (2·T·F forward, 3·T·F backward) and the bias adds of
    // the four Linear outputs (read + write T·(5C + F)).
    let act = l * (5.0 * t * f + 2.0 * t * (5.0 * c + f)) * ab;
    // reduce.cu: the column sums of the bias gradients read each Linear's dout once.
    let red = l * t * (5.0 * c + f) * ab;
    let mut rows: Vec<i32> = batch.tokens.clone();
    rows.sort_unstable();
    rows.dedup();
    let params = cfg.param_count().unwrap_or(0) as f64;
    let untouched = (cfg.vocab_size.saturating_sub(rows.len())) as f64 * c;
    let adam = adam_bytes(ab) * (params - untouched).max(0.0);
    vec![
        ("matmul", 6.0 * matmul_params(cfg) * t, 0.0),
        ("attention", att, 0.0),
        ("layernorm", 0.0, ln),
        ("activation", 0.0, act),
        ("reduce", 0.0, red),
        ("adam", 0.0, adam),
    ]
}

impl StepReport {
    /// Examples per second.
    pub fn examples_per_s(&self) -> f64 {
        self.examples as f64 / self.seconds.max(1e-12)
    }
    /// Tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-12)
    }
    /// Achieved TFLOP/s.
    pub fn tflops(&self) -> f64 {
        self.flops / self.seconds.max(1e-12) / 1e12
    }
    /// Estimated GB/s.
    pub fn gbps(&self) -> f64 {
        self.bytes / self.seconds.max(1e-12) / 1e9
    }
}

/// Bytes Adam moves per updated parameter: reads p, g, m, v and writes p, m, v (28), and with bf16
/// storage (`ab` = 2 bytes per activation) the weight's bf16 copy (30).
fn adam_bytes(ab: f64) -> f64 {
    if ab < 4.0 {
        30.0
    } else {
        28.0
    }
}

/// Matmul parameters one token touches: `L·(4C² + 2CF)`.
pub fn matmul_params(cfg: &BertConfig) -> f64 {
    let (c, f) = (cfg.hidden as f64, cfg.ffn as f64);
    cfg.layers as f64 * (4.0 * c * c + 2.0 * c * f)
}

/// Training FLOPs of one packed batch: `Σ_i 6·N_mm·T_i + 12·C·L·T_i²`.
pub fn train_flops(cfg: &BertConfig, lens: &[usize]) -> f64 {
    let nmm = matmul_params(cfg);
    let att = 12.0 * cfg.hidden as f64 * cfg.layers as f64;
    lens.iter().map(|&t| 6.0 * nmm * t as f64 + att * (t * t) as f64).sum()
}

/// Estimated bytes a training step moves over one packed batch (see the module docs); `ab`: bytes
/// per stored activation element (4, or 2 with bf16 storage).
pub fn train_bytes(cfg: &BertConfig, batch: &Batch, ab: f64) -> f64 {
    let (c, l) = (cfg.hidden as f64, cfg.layers as f64);
    let t = batch.t() as f64;
    let acts = 66.0 * c * l * t * ab;
    let weights = (3.0 * ab + 4.0) * matmul_params(cfg);
    let embed = 2.0 * 3.0 * t * c * 4.0;
    let mut rows: Vec<i32> = batch.tokens.clone();
    rows.sort_unstable();
    rows.dedup();
    let params = cfg.param_count().unwrap_or(0) as f64;
    let untouched = (cfg.vocab_size.saturating_sub(rows.len())) as f64 * c;
    acts + weights + embed + adam_bytes(ab) * (params - untouched).max(0.0)
}

/// `n` random pairs with SNLI-like lengths (premise 8..=20 tokens, hypothesis 4..=12, so about
/// 25 with `<cls>` and two `<sep>`) and Zipf-like ids below `vocab`.
pub fn random_pairs(n: usize, vocab: usize, seed: u64) -> Vec<Encoded> {
    let mut r = HostRng::new(seed, 0xbe4c);
    let v = vocab.max(6) as f64;
    (0..n)
        .map(|k| {
            let (p, h) = (8 + r.below(13) as usize, 4 + r.below(9) as usize);
            let len = p + h + 3;
            let ids = (0..len)
                .map(|_| {
                    let u = r.uniform();
                    (5.0 + (v - 6.0) * u * u * u) as u32
                })
                .collect();
            let mut segments = vec![0u8; p + 2];
            segments.resize(len, 1);
            Encoded { ids, segments, label: (k % 3) as u8 }
        })
        .collect()
}

/// Times `warmup + steps` training steps on `be` over `pairs` (cycled, `batch_size` per step).
/// The device is synchronised ([`Backend::synchronize`]) before the clock starts and stops.
pub fn time_steps<B: Backend>(
    be: &B,
    cfg: &BertConfig,
    pairs: &[Encoded],
    a: &BenchArgs,
) -> Result<StepReport> {
    let sync = || be.synchronize();
    if pairs.is_empty() || a.batch_size == 0 || a.steps == 0 {
        return Err(Error::usage("bench needs at least one pair, --batch-size >= 1 and --steps >= 1 (--steps 0 with --data times the data pipeline only)"));
    }
    let vocab = cfg.vocab_size as u32;
    let batches: Vec<Batch> = (0..(a.warmup + a.steps).min(pairs.len().div_ceil(a.batch_size)).max(1))
        .map(|i| {
            let items: Vec<Encoded> = (0..a.batch_size)
                .map(|k| {
                    let mut e = pairs[(i * a.batch_size + k) % pairs.len()].clone();
                    e.ids.iter_mut().for_each(|x| *x %= vocab);
                    e
                })
                .collect();
            Batch::from_encoded(&items.iter().collect::<Vec<_>>())
        })
        .collect();
    let layout = ParamLayout::new(cfg);
    let host = cast_params::<B::F>(&init_params(&layout, a.seed));
    let mut model = Model::from_host(be, cfg.clone(), &host)?;
    drop(host);
    let mut opt = Adam::new(be, &model, AdamConfig::adam(1e-4))?;
    let mut acts = Acts::new(be, cfg)?;
    let mut rep = StepReport {
        device: be.name(),
        steps: a.steps,
        params: cfg.param_count().unwrap_or(0),
        ..StepReport::default()
    };
    let mut stepper = Stepper::new(be, a.graphs, cfg.heads, cfg.hidden)?;
    let mut loss = 0.0;
    // Outputs come in step order, possibly several steps after the step (queued graph steps).
    let mut drained = 0;
    let mut take = |outs: Vec<crate::model::bert::Output>, loss: &mut f64| {
        for o in outs {
            if drained >= a.warmup {
                *loss += o.loss_sum;
            }
            drained += 1;
        }
    };
    let mut t0 = Instant::now();
    for step in 0..a.warmup + a.steps {
        if step == a.warmup {
            take(stepper.drain(be)?, &mut loss);
            sync()?;
            t0 = Instant::now();
        }
        let b = &batches[step % batches.len()];
        let mode = Mode { dropout: a.dropout, seed: a.seed, step: step as u64 };
        stepper.step(&mut model, be, &mut opt, &mut acts, b, mode)?;
        if stepper.should_drain() {
            take(stepper.drain(be)?, &mut loss);
        }
        if step >= a.warmup {
            rep.examples += b.b();
            rep.tokens += b.t();
            rep.flops += train_flops(cfg, &b.lens);
            rep.bytes += train_bytes(cfg, b, be.act_bytes() as f64);
        }
    }
    take(stepper.drain(be)?, &mut loss);
    sync()?;
    rep.seconds = t0.elapsed().as_secs_f64();
    rep.mean_loss = loss / rep.examples.max(1) as f64;
    if let Some(g) = stepper.graphs() {
        rep.device.push_str(", step graphs");
        rep.graphs = Some(GraphStats {
            bucket: g.bucket,
            captures: g.captures,
            updates: g.updates,
            recaptures: g.recaptures,
            dropped: g.dropped,
            host_us_per_update: 1e6 * g.update_secs / g.updates.max(1) as f64,
        });
    }
    rep.fused = be.fused_report();
    // Events cannot be recorded inside a graph: the breakdown's steps run op by op.
    drop(stepper);
    if a.breakdown && be.breakdown_start()? {
        let mut work: Vec<(&'static str, f64, f64)> = Vec::new();
        let t0 = Instant::now();
        for k in 0..a.steps {
            let step = a.warmup + a.steps + k;
            let b = &batches[step % batches.len()];
            let mode = Mode { dropout: a.dropout, seed: a.seed, step: step as u64 };
            model.train_step(be, &mut opt, &mut acts, b, mode)?;
            for (fam, flops, bytes) in family_work(cfg, b, be.act_bytes() as f64) {
                match work.iter_mut().find(|w| w.0 == fam) {
                    Some(w) => (w.1, w.2) = (w.1 + flops, w.2 + bytes),
                    None => work.push((fam, flops, bytes)),
                }
            }
        }
        let times = be.breakdown_take()?;
        let wall = t0.elapsed().as_secs_f64();
        let total: f64 = times.iter().map(|(_, ms)| ms).sum();
        let n = a.steps.max(1) as f64;
        let families = times
            .into_iter()
            .map(|(family, ms)| {
                let w = work.iter().find(|w| w.0 == family);
                let secs = ms / 1e3;
                FamilyTime {
                    ms_per_step: ms / n,
                    share: ms / total.max(1e-12),
                    tflops: w.filter(|w| w.1 > 0.0).map(|w| w.1 / secs.max(1e-12) / 1e12),
                    gbps: w.filter(|w| w.2 > 0.0).map(|w| w.2 / secs.max(1e-12) / 1e9),
                    family,
                }
            })
            .collect();
        rep.breakdown = Some(Breakdown { steps: a.steps, wall_ms_per_step: 1e3 * wall / n, families });
    }
    Ok(rep)
}

/// Timings of the data pipeline on one file (medians over the runs).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DataReport {
    /// The file.
    pub file: String,
    /// Labelled pairs read.
    pub pairs: usize,
    /// Rows skipped (`-`).
    pub skipped: usize,
    /// Runs.
    pub runs: usize,
    /// Seconds to read and parse the file.
    pub read_s: f64,
    /// Seconds to build d2l's vocabulary (min_freq 5, as `--model scratch` with SNLI).
    pub vocab_s: f64,
    /// Tokens of that vocabulary.
    pub vocab_len: usize,
    /// Seconds to tokenise and pack with d2l words.
    pub encode_s: f64,
    /// Mean packed length with d2l words.
    pub mean_len: f64,
    /// Seconds to tokenise and pack with WordPiece, if a vocab.txt was given.
    pub wordpiece_s: Option<f64>,
    /// Mean packed length with WordPiece.
    pub wordpiece_mean_len: Option<f64>,
}

impl DataReport {
    /// Pairs per second of read + build vocabulary + pack (`--model scratch`).
    pub fn scratch_pairs_per_s(&self) -> f64 {
        self.pairs as f64 / (self.read_s + self.vocab_s + self.encode_s).max(1e-12)
    }
    /// Pairs per second of read + pack with a given vocabulary (bert.small, bert.base).
    pub fn given_vocab_pairs_per_s(&self) -> f64 {
        self.pairs as f64 / (self.read_s + self.encode_s).max(1e-12)
    }
    /// Pairs per second of read + WordPiece pack (Hugging Face models).
    pub fn wordpiece_pairs_per_s(&self) -> Option<f64> {
        self.wordpiece_s.map(|w| self.pairs as f64 / (self.read_s + w).max(1e-12))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Times the data pipeline on `path` `runs` times: read; d2l's vocabulary (min_freq 5);
/// tokenise + pack with it; and WordPiece with `wordpiece`'s vocab.txt (lower-casing). Returns
/// the medians and the last run's dataset and d2l encoding.
pub fn time_data(
    path: &Path,
    max_len: usize,
    wordpiece: Option<&Path>,
    runs: usize,
) -> Result<(DataReport, Vec<Encoded>)> {
    let reserved = ["<pad>", "<mask>", "<cls>", "<sep>"];
    let wv = wordpiece.map(read_vocab_txt).transpose()?;
    let wp = wv.as_ref().map(|v| WordPiece::new(v, true)).transpose()?;
    let mut rep = DataReport { file: path.display().to_string(), runs: runs.max(1), ..DataReport::default() };
    let (mut read, mut vocab_t, mut enc_t, mut wp_t) = (vec![], vec![], vec![], vec![]);
    let mut last = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let ds: Dataset = read_dataset(path)?;
        read.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let sentences: Vec<&str> =
            ds.examples.iter().flat_map(|e| [e.premise.as_str(), e.hypothesis.as_str()]).collect();
        let vocab = Vocab::build_from_text(&sentences, 5, &reserved);
        drop(sentences);
        vocab_t.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (enc, st) = encode_dataset_with(&ds, &TextEncoder::D2l(&vocab), max_len, Truncate::Longest)?;
        enc_t.push(t.elapsed().as_secs_f64());
        if let Some(wp) = &wp {
            let t = Instant::now();
            let (_, wst) =
                encode_dataset_with(&ds, &TextEncoder::WordPiece(wp.clone()), max_len, Truncate::Longest)?;
            wp_t.push(t.elapsed().as_secs_f64());
            rep.wordpiece_mean_len = Some(wst.mean_len);
        }
        (rep.pairs, rep.skipped, rep.vocab_len, rep.mean_len) =
            (ds.examples.len(), ds.skipped, vocab.len(), st.mean_len);
        last = enc;
    }
    rep.read_s = median(read);
    rep.vocab_s = median(vocab_t);
    rep.encode_s = median(enc_t);
    rep.wordpiece_s = (!wp_t.is_empty()).then(|| median(wp_t));
    Ok((rep, last))
}

/// Runs `nli-bert bench` and prints its figures.
pub fn run(a: &BenchArgs) -> Result<()> {
    let cfg = a.shape.config();
    cfg.validate()?;
    if a.max_len < 5 || a.max_len > cfg.max_positions {
        return Err(Error::usage(format!(
            "--max-len {} must be between 5 and the shape's {} positions",
            a.max_len, cfg.max_positions
        )));
    }
    let mut data = None;
    let pairs = match &a.data {
        Some(path) => {
            let (rep, enc) = time_data(path, a.max_len, a.wordpiece.as_deref(), a.repeat)?;
            data = Some(rep);
            enc
        }
        None => random_pairs(a.batch_size * (a.warmup + a.steps).clamp(1, 8), cfg.vocab_size, a.seed),
    };
    // `--steps 0 --data FILE`: the data pipeline only
    let step = if a.steps == 0 && data.is_some() {
        None
    } else {
        Some(a.engine.run(TimeSteps { cfg: &cfg, pairs: &pairs, a })?)
    };
    if a.json {
        let v = serde_json::json!({
            "shape": a.shape.name(),
            "batch_size": a.batch_size,
            "warmup": a.warmup,
            "step": step,
            "examples_per_s": step.as_ref().map(StepReport::examples_per_s),
            "tokens_per_s": step.as_ref().map(StepReport::tokens_per_s),
            "tflops": step.as_ref().map(StepReport::tflops),
            "gbps": step.as_ref().map(StepReport::gbps),
            "ceilings": step.as_ref().filter(|s| s.cuda).and_then(|s| ceilings(&s.device).map(|c| (s, c))).map(|(s, c)| {
                serde_json::json!({
                    "card": c.card,
                    "bf16_fraction": s.tflops() * 1e12 / c.bf16_flops,
                    "fp32_fraction": s.tflops() * 1e12 / c.fp32_flops,
                    "bandwidth_fraction": s.gbps() * 1e9 / c.bytes_per_s,
                })
            }),
            "data": data.as_ref().map(|d| serde_json::json!({
                "report": d,
                "scratch_pairs_per_s": d.scratch_pairs_per_s(),
                "given_vocab_pairs_per_s": d.given_vocab_pairs_per_s(),
                "wordpiece_pairs_per_s": d.wordpiece_pairs_per_s(),
            })),
        });
        println!("{v}");
        return Ok(());
    }
    for line in report_lines(a, &cfg, step.as_ref(), data.as_ref()) {
        println!("{line}");
    }
    Ok(())
}

/// The text report.
pub fn report_lines(
    a: &BenchArgs,
    cfg: &BertConfig,
    step: Option<&StepReport>,
    data: Option<&DataReport>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = step {
        out.extend(step_lines(a, cfg, s));
    }
    if let Some(d) = data {
        out.extend(data_lines(d));
    }
    out
}

fn step_lines(a: &BenchArgs, cfg: &BertConfig, s: &StepReport) -> Vec<String> {
    let mut out = vec![
        format!(
            "bench {}: hidden {}, ffn {}, heads {}, layers {}, vocab {}, {:.2} M parameters; batch {}, {} steps after {} warm-up, on {}",
            a.shape.name(),
            cfg.hidden,
            cfg.ffn,
            cfg.heads,
            cfg.layers,
            cfg.vocab_size,
            s.params as f64 / 1e6,
            a.batch_size,
            s.steps,
            a.warmup,
            s.device
        ),
        format!(
            "train step: {:.2} ms/step, {:.1} examples/s, {:.0} tokens/s ({:.1} tokens/pair), {:.4} TFLOP/s ({:.1} MFLOP/example), {:.2} GB/s (estimate), mean loss {:.4}",
            1e3 * s.seconds / s.steps.max(1) as f64,
            s.examples_per_s(),
            s.tokens_per_s(),
            s.tokens as f64 / s.examples.max(1) as f64,
            s.tflops(),
            s.flops / s.examples.max(1) as f64 / 1e6,
            s.gbps(),
            s.mean_loss
        ),
    ];
    if let Some(f) = &s.fused {
        out.push(format!("fused products (cuBLASLt epilogue: run fused / asked): {f}"));
    }
    if let Some(g) = &s.graphs {
        out.push(format!(
            "step graphs: {} captured ({} after a changed step), {} steps replayed through an updated graph \
             ({:.0} µs of host time per update); batches padded to multiples of {} tokens",
            g.captures, g.recaptures, g.updates, g.host_us_per_update, g.bucket
        ));
    }
    if s.cuda {
        out.push(match ceilings(&s.device) {
            Some(c) => format!(
                "{} ceilings (datasheet): {:.2}% of {:.0} TFLOP/s bf16, {:.2}% of {:.1} TFLOP/s fp32, {:.2}% of {:.2} TB/s",
                c.card,
                100.0 * s.tflops() * 1e12 / c.bf16_flops,
                c.bf16_flops / 1e12,
                100.0 * s.tflops() * 1e12 / c.fp32_flops,
                c.fp32_flops / 1e12,
                100.0 * s.gbps() * 1e9 / c.bytes_per_s,
                c.bytes_per_s / 1e12
            ),
            None => format!("no ceilings are known for {} (known: H100, H200, A100)", s.device),
        });
    }
    if a.breakdown {
        match &s.breakdown {
            Some(b) => out.extend(breakdown_lines(b, s)),
            None => out.push(format!(
                "breakdown: {} cannot time single ops (a GPU device can: --device cuda, or emu)",
                s.device
            )),
        }
    }
    out
}

/// The `--breakdown` table: ms per step, share, and achieved rates against the card's ceilings
/// (bf16 tensor-core peak when the device runs bf16 GEMMs or flash attention, else fp32).
fn breakdown_lines(b: &Breakdown, s: &StepReport) -> Vec<String> {
    let ceil = if s.cuda { ceilings(&s.device) } else { None };
    let tensor = s.device.contains("bf16") || s.device.contains("flash");
    let summed: f64 = b.families.iter().map(|f| f.ms_per_step).sum();
    let mut out = vec![
        format!(
            "breakdown over {} more steps with an event after every op (launched one by one): {:.2} ms/step of ops, {:.2} ms/step wall",
            b.steps, summed, b.wall_ms_per_step
        ),
        format!("  {:<12} {:>10} {:>7}  {}", "family", "ms/step", "share", "achieved"),
    ];
    for f in &b.families {
        let rate = match (f.tflops, f.gbps, ceil) {
            (Some(t), _, Some(c)) => {
                let peak = if tensor && (f.family == "matmul" || f.family == "attention") {
                    c.bf16_flops
                } else {
                    c.fp32_flops
                };
                format!("{t:.1} TFLOP/s ({:.1}% of {:.0})", 100.0 * t * 1e12 / peak, peak / 1e12)
            }
            (Some(t), _, None) => format!("{t:.3} TFLOP/s"),
            (None, Some(g), Some(c)) => {
                format!(
                    "{g:.0} GB/s est. ({:.1}% of {:.1} TB/s)",
                    100.0 * g * 1e9 / c.bytes_per_s,
                    c.bytes_per_s / 1e12
                )
            }
            (None, Some(g), None) => format!("{g:.2} GB/s est."),
            (None, None, _) => String::new(),
        };
        out.push(format!("  {:<12} {:>10.3} {:>6.1}%  {}", f.family, f.ms_per_step, 100.0 * f.share, rate));
    }
    out
}

fn data_lines(d: &DataReport) -> Vec<String> {
    vec![
        format!(
            "data {}: {} pairs ({} skipped), median of {} runs: read {:.3} s, vocabulary (min_freq 5, {} tokens) {:.3} s, d2l tokenise + pack {:.3} s ({:.1} tokens/pair){}",
            d.file,
            d.pairs,
            d.skipped,
            d.runs,
            d.read_s,
            d.vocab_len,
            d.vocab_s,
            d.encode_s,
            d.mean_len,
            match (d.wordpiece_s, d.wordpiece_mean_len) {
                (Some(w), Some(l)) => format!(", WordPiece tokenise + pack {w:.3} s ({l:.1} tokens/pair)"),
                _ => String::new(),
            }
        ),
        format!(
            "data pipeline: {:.0} pairs/s with the vocabulary built (--model scratch, {:.3} s), {:.0} pairs/s with a given vocabulary (bert.small, {:.3} s){}",
            d.scratch_pairs_per_s(),
            d.read_s + d.vocab_s + d.encode_s,
            d.given_vocab_pairs_per_s(),
            d.read_s + d.encode_s,
            match d.wordpiece_pairs_per_s() {
                Some(p) => format!(", {p:.0} pairs/s with WordPiece ({:.3} s)", d.pairs as f64 / p),
                None => String::new(),
            }
        ),
    ]
}

/// [`time_steps`] as work for [`Engine::run`]; a CUDA device's report is marked as such.
struct TimeSteps<'a> {
    cfg: &'a BertConfig,
    pairs: &'a [Encoded],
    a: &'a BenchArgs,
}

impl OnBackend for TimeSteps<'_> {
    type Out = StepReport;
    fn run<B: Backend>(self, be: &B) -> Result<StepReport> {
        let rep = time_steps(be, self.cfg, self.pairs, self.a)?;
        Ok(StepReport { cuda: rep.device.starts_with("cuda"), ..rep })
    }
}

/// `nli-bert bench`.
#[derive(Args)]
pub struct BenchCmd {
    /// Model shape, with random weights.
    #[arg(long, value_enum, default_value = "bert.small")]
    pub shape: Shape,
    /// Pairs per training step.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Timed steps (0 with --data: time the data pipeline only).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Dropout of the training step.
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f64,
    /// Seed of the weights, the random pairs and the dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A dataset (SNLI .txt, .jsonl, TSV): time reading, tokenising and packing it, and train on
    /// its pairs instead of random ones.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With --data: also time WordPiece with this vocab.txt.
    #[arg(long, requires = "data")]
    pub wordpiece: Option<PathBuf>,
    /// With --data: runs of the data pipeline (the median is printed).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// With --data: maximum tokens per pair.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Then time as many steps again with an event after every op, and print where the time goes
    /// per op family (ms per step, share, TFLOP/s or estimated GB/s against the card's ceilings).
    #[arg(long)]
    pub breakdown: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl BenchCmd {
    /// Runs `nli-bert bench`.
    pub fn run(self) -> Result<()> {
        let a = self;
        run(&BenchArgs {
            shape: a.shape,
            batch_size: a.batch_size,
            steps: a.steps,
            warmup: a.warmup,
            dropout: a.dropout,
            seed: a.seed,
            max_len: a.max_len,
            data: a.data,
            wordpiece: a.wordpiece,
            repeat: a.repeat,
            engine: a.engine.engine(),
            json: a.json,
            breakdown: a.breakdown,
            graphs: a.engine.graphs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_follow_the_card_in_the_device_name() {
        let card = |d: &str| ceilings(d).map(|c| (c.card, c.bytes_per_s));
        assert_eq!(card("cuda:0 (NVIDIA H200)"), Some(("H200", 4.8e12)));
        assert_eq!(card("cuda:0 (NVIDIA H100 80GB HBM3)"), Some(("H100", 3.35e12)));
        assert_eq!(card("cuda:1 (NVIDIA H100 PCIe)"), Some(("H100 PCIe", 2.0e12)));
        assert_eq!(card("cuda:0 (NVIDIA A100-SXM4-80GB)"), Some(("A100", 2.0e12)));
        assert_eq!(card("cuda:0 (Tesla V100-SXM2-16GB)"), None);
        assert_eq!(card("cpu (2 threads)"), None);
    }
}
