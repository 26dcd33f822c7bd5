//! Models on disk: reading a model from any source a user can name (`bert.small`/`bert.base`,
//! d2l's `vocab.json` + `pretrained.params`, a Hugging Face directory through [`super::hf`],
//! `hf:ORG/NAME`, a directory this tool saved, or a fresh `scratch` model), and writing the saved
//! form (`config.json`, `vocab.json` or `vocab.txt`, `model.safetensors`, each atomically).
//! Training checkpoints (optimizer state, run settings) are `crate::train::checkpoint`.

use crate::data::batch::{TextEncoder, Truncate};
use crate::data::snli::{Dataset, LABELS};
use crate::data::vocab::Vocab;
use crate::data::{hub, wordpiece};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::bert::{init_output_layer, init_params};
use crate::model::checkpoint::{names, safetensors as st, torch};
use crate::model::config::{BertConfig, Precision, TokenizerKind};
use crate::model::hf;
use crate::model::params::ParamLayout;
use crate::train::report;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// The head count of d2l's published shapes (the weights do not record it): bert.small
/// (C 256, F 512, 2 blocks) has 4, bert.base (C 768, F 3072, 12 blocks) 12.
pub fn d2l_heads(hidden: usize, ffn: usize, layers: usize) -> Option<usize> {
    match (hidden, ffn, layers) {
        (256, 512, 2) => Some(4),
        (768, 3072, 12) => Some(12),
        _ => None,
    }
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
    cfg.heads = match heads.or_else(|| d2l_heads(hidden, ffn, layers)) {
        Some(h) => h,
        None => {
            return Err(Error::usage(format!(
                "{}: d2l weights do not record their attention head count, and hidden {hidden}, ffn {ffn}, \
                 {layers} blocks is neither d2l's bert.small (4 heads) nor bert.base (12 heads): pass --heads N",
                dir.display()
            )))
        }
    };
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

pub fn load_saved(dir: &Path) -> Result<LoadedModel> {
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

impl LoadedModel {
    /// The model's tokenizer: d2l words or WordPiece, as its configuration says.
    pub fn text_encoder(&self) -> Result<TextEncoder<'_>> {
        TextEncoder::new(self.cfg.tokenizer, self.cfg.lowercase, &self.vocab)
    }
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
