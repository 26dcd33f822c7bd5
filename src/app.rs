//! The commands behind the CLI: resolve a model source, load data, fine-tune, evaluate, predict,
//! save. `main.rs` only parses arguments and calls these.

use crate::backend::cpu::Cpu;
use crate::backend::gpu::cuda::{self, Cuda};
use crate::backend::gpu::emu::Emu;
use crate::backend::gpu::Gpu;
use crate::backend::Backend;
use crate::data::batch::{encode_dataset_with, Encoded, TextEncoder, Truncate};
use crate::data::snli::{Dataset, Example, LABELS};
use crate::data::vocab::Vocab;
use crate::data::{hub, snli, wordpiece};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::bert::{cast_params, init_output_layer, init_params, Acts, Model};
use crate::model::checkpoint::{names, safetensors as st, torch};
use crate::model::config::{BertConfig, TokenizerKind};
use crate::model::hf;
use crate::model::params::ParamLayout;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::report;
use crate::train::trainer::{self, EpochMetrics, EvalResult, TrainOptions, TrainState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Numeric precision of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float64: the reference (gradient checks, parity with PyTorch to ~1e-10). CPU only.
    F64,
    /// float32: the fast trainer.
    F32,
    /// bf16 matrix products with fp32 accumulation; weights, Adam, LayerNorm, softmax and the
    /// loss in f32. GPU (or emulator) only.
    Bf16,
}

/// Where computation runs (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSel {
    /// A CUDA GPU when one is usable, else the CPU.
    #[default]
    Auto,
    /// The multi-threaded CPU engine.
    Cpu,
    /// CUDA device N (our kernels + cuBLAS).
    Cuda(usize),
    /// The CUDA emulator: our kernels on the CPU, one fiber per CUDA thread (slow; for checking).
    Emu,
}

impl std::str::FromStr for DeviceSel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSel::Auto),
            "cpu" => Ok(DeviceSel::Cpu),
            "emu" => Ok(DeviceSel::Emu),
            "cuda" => Ok(DeviceSel::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSel::Cuda)
                .ok_or_else(|| format!("`{s}`: expected auto, cpu, cuda, cuda:N (N = 0, 1, ...) or emu")),
        }
    }
}

/// The engine a command runs on: device, precision and CPU threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Engine {
    /// Where to compute.
    pub device: DeviceSel,
    /// CPU precision (the GPU computes in f32).
    pub precision: Precision,
    /// CPU worker threads (0 = all cores).
    pub threads: usize,
}

impl Engine {
    /// The CPU engine in f32 on `threads` threads.
    pub fn cpu(threads: usize) -> Self {
        Engine { device: DeviceSel::Cpu, precision: Precision::F32, threads }
    }
}

/// A backend, chosen at run time.
pub enum AnyBackend {
    /// `Cpu<f32>`.
    CpuF32(Cpu<f32>),
    /// `Cpu<f64>`.
    CpuF64(Cpu<f64>),
    /// Our kernels on a CUDA GPU.
    Cuda(Gpu<Cuda>),
    /// Our kernels on the emulator.
    Emu(Gpu<Emu>),
}

impl Engine {
    /// Opens the backend: `auto` takes CUDA device 0 when a driver and a GPU are present (and
    /// the precision is f32), else the CPU.
    pub fn open(&self) -> Result<AnyBackend> {
        let gpu_precision = |what: &str| -> Result<()> {
            if self.precision == Precision::F64 {
                return Err(Error::usage(format!(
                    "--precision f64 runs on the CPU only; use --device cpu, or --precision f32 on {what}"
                )));
            }
            Ok(())
        };
        let bf16 = self.precision == Precision::Bf16;
        match self.device {
            DeviceSel::Cpu => self.open_cpu(),
            DeviceSel::Auto => {
                if self.precision != Precision::F64 && cuda::device_count() > 0 {
                    match Cuda::new(0) {
                        Ok(dev) => return Ok(AnyBackend::Cuda(gpu(dev, bf16))),
                        Err(e) => {
                            eprintln!("warning: a CUDA device is present but unusable ({e}); using the CPU")
                        }
                    }
                }
                self.open_cpu()
            }
            DeviceSel::Cuda(n) => {
                gpu_precision("a GPU")?;
                Ok(AnyBackend::Cuda(gpu(Cuda::new(n)?, bf16)))
            }
            DeviceSel::Emu => {
                gpu_precision("the emulator")?;
                Ok(AnyBackend::Emu(gpu(Emu::new()?, bf16)))
            }
        }
    }

    fn open_cpu(&self) -> Result<AnyBackend> {
        Ok(match self.precision {
            Precision::F32 => AnyBackend::CpuF32(Cpu::new(self.threads)?),
            Precision::F64 => AnyBackend::CpuF64(Cpu::new(self.threads)?),
            Precision::Bf16 => {
                return Err(Error::usage(
                    "--precision bf16 needs a GPU: use --device cuda (or emu to check it on the CPU), or \
                     --precision f32 on the CPU",
                ))
            }
        })
    }
}

/// The GPU backend on `dev`, with bf16 matrix products when asked.
fn gpu<D: crate::backend::gpu::device::Device>(dev: D, bf16: bool) -> Gpu<D> {
    if bf16 {
        Gpu::new_bf16(dev)
    } else {
        Gpu::new(dev)
    }
}

/// The `config.json` this tool writes next to `model.safetensors` and `vocab.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// Always `"nli-bert"`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// Architecture.
    pub model: BertConfig,
    /// Maximum sequence length used for tokens (d2l: 128).
    pub max_len: usize,
    /// Pair truncation rule.
    pub truncate: String,
    /// Precision of the stored tensors.
    pub precision: Precision,
    /// Class names in logit order.
    pub labels: Vec<String>,
}

/// A model ready to run: configuration, vocabulary, f64 host parameters and where they came from.
pub struct LoadedModel {
    /// Architecture.
    pub cfg: BertConfig,
    /// Vocabulary.
    pub vocab: Vocab,
    /// All parameters in f64 (cast to the engine's precision later).
    pub params: Vec<f64>,
    /// Human-readable origin (for messages).
    pub origin: String,
    /// Default max_len recorded with a saved model.
    pub max_len: Option<usize>,
    /// Truncation recorded with a saved model.
    pub truncate: Option<Truncate>,
}

/// Architecture flags for `--model scratch`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScratchArgs {
    /// Hidden size C.
    pub hidden: usize,
    /// FFN size F.
    pub ffn: usize,
    /// Heads.
    pub heads: usize,
    /// Blocks.
    pub layers: usize,
    /// Minimum token frequency for the vocabulary.
    pub min_freq: usize,
}

fn exists(p: &Path) -> bool {
    p.is_file()
}

/// Loads a model from `bert.small`, `bert.base`, a d2l directory (`vocab.json` +
/// `pretrained.params`), a directory this tool saved (`config.json` + `model.safetensors` +
/// `vocab.json` or `vocab.txt`), a Hugging Face BERT directory (`config.json` +
/// `model.safetensors` or `pytorch_model.bin` + `vocab.txt`, see [`hf`]) or `hf:ORG/NAME`
/// (downloaded from the hub). `heads` overrides the head count of d2l weights (it is not stored
/// in them).
pub fn load_model(
    spec: &str,
    heads: Option<usize>,
    train_pos_embedding: bool,
    seed: u64,
) -> Result<LoadedModel> {
    let dir = match spec {
        "bert.small" | "bert.base" => hub::download_extract(spec)?,
        _ => match spec.strip_prefix("hf:") {
            Some(repo) => hf::download_hub_model(repo)?,
            None => PathBuf::from(spec),
        },
    };
    if !dir.is_dir() {
        return Err(Error::usage(format!(
            "--model {spec}: not a directory and not one of bert.small, bert.base, scratch, hf:ORG/NAME; \
             give a directory holding vocab.json + pretrained.params (d2l), a Hugging Face BERT (config.json + \
             model.safetensors + vocab.txt) or one saved by `nli-bert finetune --out`"
        )));
    }
    if hf::is_hf_dir(&dir) {
        let m = hf::load_hf_dir(&dir, seed)?;
        for n in &m.notices {
            eprintln!("note: {n}");
        }
        let origin = format!("{} (Hugging Face)", dir.display());
        return Ok(LoadedModel {
            cfg: m.cfg,
            vocab: m.vocab,
            params: m.params,
            origin,
            max_len: None,
            truncate: None,
        });
    }
    if exists(&dir.join("config.json")) && exists(&dir.join("model.safetensors")) {
        return load_saved(&dir);
    }
    let params_path = dir.join("pretrained.params");
    let vocab_path = dir.join("vocab.json");
    if !(exists(&params_path) && exists(&vocab_path)) {
        return Err(Error::usage(format!(
            "{}: expected vocab.json + pretrained.params (d2l), config.json + model.safetensors + vocab.json \
             (saved by nli-bert) or a Hugging Face BERT (config.json with hidden_size + model.safetensors or \
             pytorch_model.bin + vocab.txt); found none of these",
            dir.display()
        )));
    }
    let vocab = Vocab::from_json_file(&vocab_path)?;
    let tensors = torch::load_torch_state_dict(&params_path)?;
    let (v, hidden, ffn, layers, max_positions) = names::infer_d2l_dims(&tensors, &params_path)?;
    let mut cfg = BertConfig::d2l_small(v);
    cfg.hidden = hidden;
    cfg.ffn = ffn;
    cfg.layers = layers;
    cfg.max_positions = max_positions;
    cfg.heads = heads.unwrap_or(if hidden % 64 == 0 { hidden / 64 } else { 1 });
    cfg.train_pos_embedding = train_pos_embedding;
    cfg.validate()?;
    if cfg.vocab_size != vocab.len() {
        return Err(Error::checkpoint(
            &params_path,
            format!(
                "token embedding has {} rows but {} holds {} tokens: the two files do not belong together",
                cfg.vocab_size,
                vocab_path.display(),
                vocab.len()
            ),
        ));
    }
    let layout = ParamLayout::new(&cfg);
    names::check_layout_fits(&tensors, &layout, &cfg, &params_path)?;
    // Every tensor but a missing `output.*` comes from the checkpoint (checked by the loader).
    let mut params = vec![0.0; layout.total];
    let rep = names::load_into_params(&tensors, &layout, &mut params, &params_path)?;
    rep.refuse_non_finite(&params_path)?;
    if rep.output_initialized_fresh {
        init_output_layer(&layout, &mut params, seed);
    }
    Ok(LoadedModel {
        cfg,
        vocab,
        params,
        origin: format!("{} (d2l weights)", dir.display()),
        max_len: None,
        truncate: None,
    })
}

fn load_saved(dir: &Path) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let saved: SavedConfig = serde_json::from_str(&text)
        .map_err(|e| Error::parse(&cfg_path, e.line(), format!("not an nli-bert config.json: {e}")))?;
    if saved.format != "nli-bert" {
        return Err(Error::parse(
            &cfg_path,
            1,
            format!("format is {:?}, expected \"nli-bert\"", saved.format),
        ));
    }
    let cfg = saved.model;
    cfg.validate().map_err(|e| Error::checkpoint(&cfg_path, e.to_string()))?;
    let (vocab, vocab_file) = match cfg.tokenizer {
        TokenizerKind::D2lWords => (Vocab::from_json_file(dir.join("vocab.json"))?, "vocab.json"),
        TokenizerKind::WordPiece => (wordpiece::read_vocab_txt(dir.join("vocab.txt"))?, "vocab.txt"),
    };
    if vocab.len() != cfg.vocab_size {
        return Err(Error::checkpoint(
            dir,
            format!(
                "config.json says vocab_size {} but {vocab_file} has {} tokens",
                cfg.vocab_size,
                vocab.len()
            ),
        ));
    }
    let wpath = dir.join("model.safetensors");
    let tensors = st::load_safetensors(&wpath)?;
    let layout = ParamLayout::new(&cfg);
    names::check_layout_fits(&tensors, &layout, &cfg, &wpath)?;
    let mut params = vec![0.0; layout.total];
    let rep = names::load_into_params(&tensors, &layout, &mut params, &wpath)?;
    rep.refuse_non_finite(&wpath)?;
    if rep.output_initialized_fresh {
        return Err(Error::checkpoint(&wpath, "the saved classifier has no output.weight / output.bias"));
    }
    let truncate = match saved.truncate.as_str() {
        "ratio" => Truncate::Ratio,
        _ => Truncate::Longest,
    };
    Ok(LoadedModel {
        cfg,
        vocab,
        params,
        origin: format!("{} (nli-bert)", dir.display()),
        max_len: Some(saved.max_len),
        truncate: Some(truncate),
    })
}

/// A fresh model for `--model scratch`: vocabulary from `train` (d2l's `Vocab` with
/// `min_freq` and reserved `<pad> <mask> <cls> <sep>`), PyTorch default initialisation.
pub fn scratch_model(train: &Dataset, a: &ScratchArgs, max_len: usize, seed: u64) -> Result<LoadedModel> {
    let sentences: Vec<&str> =
        train.examples.iter().flat_map(|e| [e.premise.as_str(), e.hypothesis.as_str()]).collect();
    let vocab = Vocab::build_from_text(&sentences, a.min_freq, &["<pad>", "<mask>", "<cls>", "<sep>"]);
    let mut cfg = BertConfig::d2l_small(vocab.len());
    cfg.hidden = a.hidden;
    cfg.ffn = a.ffn;
    cfg.heads = a.heads;
    cfg.layers = a.layers;
    cfg.max_positions = max_len;
    cfg.train_pos_embedding = true;
    cfg.validate()?;
    let layout = ParamLayout::new(&cfg);
    let params = init_params(&layout, seed);
    Ok(LoadedModel { cfg, vocab, params, origin: "scratch".into(), max_len: None, truncate: None })
}

/// Reads `--data`: `snli` (downloads SNLI; returns train and test) or a file.
pub fn read_data(spec: &str) -> Result<(Dataset, Option<Dataset>)> {
    if spec == "snli" {
        let dir = hub::download_extract("SNLI")?;
        return Ok((snli::read_snli_dir(&dir, true)?, Some(snli::read_snli_dir(&dir, false)?)));
    }
    Ok((snli::read_dataset(Path::new(spec))?, None))
}

impl LoadedModel {
    /// The model's tokenizer: d2l words or WordPiece, as its configuration says.
    pub fn text_encoder(&self) -> Result<TextEncoder<'_>> {
        TextEncoder::for_model(&self.cfg, &self.vocab)
    }
}

/// Tokenises and packs a dataset, printing d2l's `read N examples`. `text` is a d2l `&Vocab` or
/// a model's [`LoadedModel::text_encoder`].
pub fn encode<'a>(
    ds: &Dataset,
    text: impl Into<TextEncoder<'a>>,
    max_len: usize,
    how: Truncate,
    quiet: bool,
) -> Result<Vec<Encoded>> {
    let (enc, stats) = encode_dataset_with(ds, &text.into(), max_len, how)?;
    if !quiet {
        let skipped = if ds.skipped > 0 {
            format!(" ({} without a gold label skipped)", ds.skipped)
        } else {
            String::new()
        };
        let trunc = if stats.truncated > 0 {
            format!(", {} truncated to {max_len} tokens", stats.truncated)
        } else {
            String::new()
        };
        eprintln!("read {} examples from {}{skipped}{trunc}", enc.len(), ds.source);
    }
    Ok(enc)
}

/// Writes `config.json`, `vocab.json` (`vocab.txt` for WordPiece models) and `model.safetensors`
/// into `dir` (each atomically).
pub fn save_model<F: Float>(
    dir: &Path,
    cfg: &BertConfig,
    vocab: &Vocab,
    params: &[F],
    max_len: usize,
    truncate: Truncate,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let precision = if F::NAME == "f64" { Precision::F64 } else { Precision::F32 };
    let saved = SavedConfig {
        format: "nli-bert".into(),
        version: 1,
        model: cfg.clone(),
        max_len,
        truncate: match truncate {
            Truncate::Longest => "longest".into(),
            Truncate::Ratio => "ratio".into(),
        },
        precision,
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
    };
    let json =
        serde_json::to_vec_pretty(&saved).map_err(|e| Error::msg(format!("serialising config: {e}")))?;
    report::write_atomic(&dir.join("config.json"), &json)?;
    match cfg.tokenizer {
        TokenizerKind::D2lWords => vocab.save_json(dir.join("vocab.json"))?,
        TokenizerKind::WordPiece => wordpiece::save_vocab_txt(vocab, dir.join("vocab.txt"))?,
    }
    let layout = ParamLayout::new(cfg);
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "nli-bert".to_string());
    st::save_params(&dir.join("model.safetensors"), &layout, params, &meta)
}

/// Everything `finetune` needs besides the data.
#[derive(Clone, Debug)]
pub struct FinetuneArgs {
    /// Loop settings.
    pub train: TrainOptions,
    /// Optimizer.
    pub adam: AdamConfig,
    /// Token budget per pair.
    pub max_len: usize,
    /// Pair truncation.
    pub truncate: Truncate,
    /// Device, precision and CPU threads.
    pub engine: Engine,
    /// Output directory.
    pub out: Option<PathBuf>,
    /// Suppress informational stderr lines (progress included).
    pub quiet: bool,
    /// The run's settings, stored in checkpoints so `--resume` can continue with them.
    pub run: serde_json::Value,
}

/// The figures a finetune run ends with.
pub struct FinetuneResult {
    /// One entry per epoch.
    pub history: Vec<EpochMetrics>,
    /// Device name as printed.
    pub device: String,
}

/// A saved training state to continue from (`--resume`).
pub struct Resume {
    /// Where the run stood.
    pub state: TrainState,
    /// Adam first and second moments, step count and seen embedding rows.
    pub m: Vec<f64>,
    /// See `m`.
    pub v: Vec<f64>,
    /// Adam steps taken.
    pub t: u64,
    /// Token-embedding rows seen by the row-sparse optimizer.
    pub rows: Option<Vec<u32>>,
    /// The run's settings.
    pub run: serde_json::Value,
}

/// The checkpoint directory of a run's `--out DIR`.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    train: TrainState,
    adam_t: u64,
    active_rows: Option<Vec<u32>>,
    run: serde_json::Value,
}

/// Reads a checkpoint written by `finetune --out DIR` (`DIR` or `DIR/checkpoint`): the model and
/// the state to continue from.
pub fn load_checkpoint(dir: &Path) -> Result<(LoadedModel, Resume)> {
    // `checkpoint.old` is the previous checkpoint, left alone if a save was killed mid-swap.
    let ck = [dir.to_path_buf(), checkpoint_dir(dir), dir.join("checkpoint.old")]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
        .unwrap_or_else(|| checkpoint_dir(dir));
    let state_path = ck.join("state.json");
    if !state_path.is_file() {
        return Err(Error::usage(format!(
            "--resume {}: no checkpoint there (expected {}); checkpoints are written by `finetune --out DIR` \
             at each epoch end and every --save-every steps",
            dir.display(),
            state_path.display()
        )));
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let sf: StateFile = serde_json::from_str(&text)
        .map_err(|e| Error::parse(&state_path, e.line(), format!("not an nli-bert state.json: {e}")))?;
    let m = load_saved(&ck)?;
    let layout = ParamLayout::new(&m.cfg);
    let moment = |name: &str| -> Result<Vec<f64>> {
        let p = ck.join(name);
        let t = st::load_safetensors(&p)?;
        names::check_layout_fits(&t, &layout, &m.cfg, &p)?;
        let mut out = vec![0.0; layout.total];
        names::load_into_params(&t, &layout, &mut out, &p)?.refuse_non_finite(&p)?;
        Ok(out)
    };
    let resume = Resume {
        state: sf.train,
        m: moment("adam_m.safetensors")?,
        v: moment("adam_v.safetensors")?,
        t: sf.adam_t,
        rows: sf.active_rows,
        run: sf.run,
    };
    Ok((m, resume))
}

/// Prints, plots and saves as training goes.
struct RunHooks<'a, B: Backend> {
    device: String,
    epochs: usize,
    a: &'a FinetuneArgs,
    vocab: &'a Vocab,
    be: &'a B,
    curves: report::Curves,
    tty: bool,
    last_print: std::time::Instant,
    progress_shown: bool,
}

impl<B: Backend> RunHooks<'_, B> {
    fn clear_progress(&mut self) {
        if self.progress_shown && self.tty {
            eprint!("\r{:79}\r", "");
        }
        self.progress_shown = false;
    }

    fn write_curves(&self) -> Result<()> {
        match &self.a.out {
            Some(dir) => report::write_atomic(&dir.join("curves.svg"), self.curves.svg().as_bytes()),
            None => Ok(()),
        }
    }
}

impl<B: Backend> trainer::Hooks<B> for RunHooks<'_, B> {
    fn on_step(&mut self, p: &trainer::Progress) -> Result<()> {
        if self.a.quiet {
            return Ok(());
        }
        let every = if self.tty { 0.2 } else { 10.0 };
        if self.last_print.elapsed().as_secs_f64() < every && p.batch < p.batches {
            return Ok(());
        }
        self.last_print = std::time::Instant::now();
        let eta = if p.examples_per_sec > 0.0 {
            let secs = (p.batches - p.batch) as f64 * self.a.train.batch_size as f64 / p.examples_per_sec;
            format!("{secs:.0}s")
        } else {
            "?".into()
        };
        let line = format!(
            "epoch {}/{} {:>5}/{} loss {:.3} acc {:.3} {:.1} examples/sec ETA {eta}",
            p.epoch + 1,
            self.epochs,
            p.batch,
            p.batches,
            p.loss,
            p.acc,
            p.examples_per_sec
        );
        if self.tty {
            let filled = 20 * p.batch / p.batches.max(1);
            eprint!("\r[{}{}] {line}", "#".repeat(filled), " ".repeat(20 - filled));
            self.progress_shown = true;
        } else {
            eprintln!("{line}");
        }
        Ok(())
    }

    fn on_point(&mut self, p: &trainer::Progress) -> Result<()> {
        let x = p.epoch as f64 + p.batch as f64 / p.batches.max(1) as f64;
        self.curves.train.push((x, p.loss, p.acc));
        self.write_curves()
    }

    fn on_epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        self.clear_progress();
        println!("{}", report::epoch_line(m, self.epochs, &self.device));
        if let Some(acc) = m.test_acc {
            self.curves.test.push((m.epoch as f64, acc));
        }
        if let Some(dir) = &self.a.out {
            report::append_metrics(&dir.join("metrics.jsonl"), m)?;
        }
        self.write_curves()
    }

    fn on_checkpoint(&mut self, state: &TrainState, model: &Model<B>, opt: &Adam<B>) -> Result<()> {
        let Some(out) = &self.a.out else { return Ok(()) };
        let tmp = out.join(format!(".checkpoint.tmp-{}", std::process::id()));
        let res = (|| -> Result<()> {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            }
            let params = model.params_host(self.be)?;
            save_model(&tmp, &model.cfg, self.vocab, &params, self.a.max_len, self.a.truncate)?;
            let meta = BTreeMap::new();
            let m = self.be.download(self.be.view(&opt.m))?;
            let v = self.be.download(self.be.view(&opt.v))?;
            st::save_params(&tmp.join("adam_m.safetensors"), &model.layout, &m, &meta)?;
            st::save_params(&tmp.join("adam_v.safetensors"), &model.layout, &v, &meta)?;
            let sf = StateFile {
                format: "nli-bert-checkpoint".into(),
                train: state.clone(),
                adam_t: opt.t,
                active_rows: opt.active_rows().map(|r| r.to_vec()),
                run: self.a.run.clone(),
            };
            let json = serde_json::to_vec(&sf).map_err(|e| Error::msg(format!("serialising state: {e}")))?;
            report::write_atomic(&tmp.join("state.json"), &json)?;
            // Swap in: the previous checkpoint stays complete until the new one is.
            let dst = checkpoint_dir(out);
            let old = out.join("checkpoint.old");
            if dst.exists() {
                if old.exists() {
                    std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
                }
                std::fs::rename(&dst, &old).map_err(|e| Error::io(&dst, e))?;
            }
            std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            Ok(())
        })();
        if res.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        res.map_err(|e| {
            let dst = checkpoint_dir(out);
            let kept = if dst.join("state.json").is_file() || out.join("checkpoint.old/state.json").is_file()
            {
                format!(
                    "the previous checkpoint in {} is intact: continue with `nli-bert finetune --resume {}`",
                    dst.display(),
                    out.display()
                )
            } else {
                "no earlier checkpoint exists".to_string()
            };
            let full = match &e {
                Error::Io { source, .. } => matches!(source.raw_os_error(), Some(28 | 27 | 122)),
                _ => false,
            };
            Error::msg(format!(
                "saving the checkpoint of step {} failed: {e}{}; {kept}",
                state.step,
                if full { " (the disk, a quota or a file-size limit is full: free some space)" } else { "" }
            ))
        })
    }
}

/// Removes what an interrupted run (killed, or out of disk) may have left in `dir`: checkpoint
/// folders being written (`.checkpoint.tmp-PID`) and this tool's files being written atomically
/// (`model.safetensors.tmp-PID`, `.config.json.tmp-PID`, …), whose process is gone. Returns how
/// many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((base, pid)) = name.rsplit_once(".tmp-") else { continue };
        // only the names this tool writes through a temporary (other files are the user's)
        const OURS: [&str; 6] =
            [".checkpoint", "model.safetensors", "vocab.json", "vocab.txt", ".config.json", ".curves.svg"];
        if !OURS.contains(&base) || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // a live process (ours, or another run writing here) keeps its temporaries
        if pid == std::process::id().to_string() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let p = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|err| Error::io(&p, err))?;
        removed += 1;
    }
    Ok(removed)
}

/// Fine-tunes `m` on `train` (evaluating on `test` after each epoch) on the engine of
/// `a.engine`, printing d2l's lines and progress, writing `metrics.jsonl`, `curves.svg`,
/// checkpoints and the model to `--out`.
pub fn finetune(
    m: LoadedModel,
    train: &[Encoded],
    test: Option<&[Encoded]>,
    a: &FinetuneArgs,
    resume: Option<Resume>,
) -> Result<FinetuneResult> {
    match a.engine.open()? {
        AnyBackend::CpuF32(be) => finetune_on(&be, m, train, test, a, resume),
        AnyBackend::CpuF64(be) => finetune_on(&be, m, train, test, a, resume),
        AnyBackend::Cuda(be) => finetune_on(&be, m, train, test, a, resume),
        AnyBackend::Emu(be) => finetune_on(&be, m, train, test, a, resume),
    }
}

/// [`finetune`] on a given backend.
pub fn finetune_on<B: Backend>(
    be: &B,
    m: LoadedModel,
    train: &[Encoded],
    test: Option<&[Encoded]>,
    a: &FinetuneArgs,
    resume: Option<Resume>,
) -> Result<FinetuneResult> {
    let device = be.name();
    let mut model = Model::from_host(be, m.cfg.clone(), &cast_params::<B::F>(&m.params))?;
    let mut opt = Adam::new(be, &model, a.adam)?;
    let mut start = TrainState::default();
    if let Some(r) = resume {
        opt.restore(be, &cast_params::<B::F>(&r.m), &cast_params::<B::F>(&r.v), r.t, r.rows.as_deref())?;
        start = r.state;
    }
    let mut hooks = RunHooks {
        device: device.clone(),
        epochs: a.train.epochs,
        a,
        vocab: &m.vocab,
        be,
        curves: report::Curves { epochs: a.train.epochs, ..Default::default() },
        tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        last_print: std::time::Instant::now(),
        progress_shown: false,
    };
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let stale = remove_stale_temporaries(dir)?;
        if stale > 0 && !a.quiet {
            eprintln!("removed {stale} temporary file(s) left in {} by an interrupted run", dir.display());
        }
        // metrics.jsonl restarts from the state's completed epochs (none for a fresh run).
        let p = dir.join("metrics.jsonl");
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        for em in &start.history {
            report::append_metrics(&p, em)?;
            if let Some(acc) = em.test_acc {
                hooks.curves.test.push((em.epoch as f64, acc));
            }
        }
    }
    for em in &start.history {
        println!("{}", report::epoch_line(em, a.train.epochs, &device));
    }
    let end = trainer::train(be, &mut model, &mut opt, train, test, &a.train, start, &mut hooks)?;
    hooks.clear_progress();
    let history = end.history;
    if let Some((l1, l2)) = report::final_lines(&history, &device) {
        println!("{l1}");
        println!("{l2}");
    }
    if let Some(dir) = &a.out {
        let host = model.params_host(be)?;
        save_model(dir, &model.cfg, &m.vocab, &host, a.max_len, a.truncate)?;
        if !a.quiet {
            eprintln!("saved the fine-tuned model, metrics.jsonl and curves.svg to {}", dir.display());
        }
    }
    Ok(FinetuneResult { history, device })
}

/// Evaluates a loaded model on encoded data on `engine`.
pub fn evaluate(m: &LoadedModel, data: &[Encoded], batch_size: usize, engine: &Engine) -> Result<EvalResult> {
    match engine.open()? {
        AnyBackend::CpuF32(be) => evaluate_on(&be, m, data, batch_size),
        AnyBackend::CpuF64(be) => evaluate_on(&be, m, data, batch_size),
        AnyBackend::Cuda(be) => evaluate_on(&be, m, data, batch_size),
        AnyBackend::Emu(be) => evaluate_on(&be, m, data, batch_size),
    }
}

/// [`evaluate`] on a given backend.
pub fn evaluate_on<B: Backend>(
    be: &B,
    m: &LoadedModel,
    data: &[Encoded],
    batch_size: usize,
) -> Result<EvalResult> {
    let model = Model::from_host(be, m.cfg.clone(), &cast_params::<B::F>(&m.params))?;
    let mut acts = Acts::new(be, &model.cfg)?;
    trainer::evaluate(be, &model, &mut acts, data, batch_size)
}

/// Softmax of one row of logits, in f64.
pub fn softmax(row: &[f64]) -> Vec<f64> {
    let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|x| (x - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Wraps raw pairs into a dataset (labels unknown: set to 0; only logits are used).
pub fn pairs_dataset(pairs: Vec<(String, String)>, source: &str) -> Dataset {
    Dataset {
        examples: pairs
            .into_iter()
            .map(|(premise, hypothesis)| Example { premise, hypothesis, label: 0 })
            .collect(),
        skipped: 0,
        source: source.into(),
    }
}
