//! Hugging Face BERT checkpoints: a directory with `config.json`, `model.safetensors` or
//! `pytorch_model.bin`, and `vocab.txt` (+ `tokenizer_config.json`), as on the hub, read into the
//! same engine (docs/d2l.md lists the differences from d2l's model, all configuration here).
//!
//! - **Architecture** from `config.json`: sizes, `hidden_act` (`gelu` → erf GELU, `gelu_new` /
//!   `gelu_pytorch_tanh` → tanh GELU, `relu`), `layer_norm_eps`, `max_position_embeddings`,
//!   `type_vocab_size`; always an embedding LayerNorm, trainable positions, and the dropout sites
//!   HF adds (after the embeddings, before the classifier).
//! - **Weights** through the one name table ([`names`]): with or without `bert.`, LayerNorm
//!   `weight/bias` or `gamma/beta`, `position_ids` ignored, pre-training heads (`cls.*`) skipped,
//!   `pooler.dense` → `hidden.0` (a fresh pooler when the checkpoint has none).
//! - **Classifier**: a 3-way `classifier` whose `id2label` names entailment, contradiction and
//!   neutral (any case, any order: MNLI checkpoints differ) becomes `output` with its rows put in
//!   our order ([`LABELS`]); any other head is left out and `output` starts fresh (as transformers
//!   initialises one: N(0, `initializer_range`²) weights, zero bias), with a notice.
//! - **Tokenizer**: WordPiece over `vocab.txt`, lower-casing from `tokenizer_config.json`
//!   (`do_lower_case`, default true as in transformers' `BertTokenizer`).
//!
//! [`download_hub_model`] fetches such a directory from the hub (`--model hf:ORG/NAME`).

use crate::backend::Activation;
use crate::data::hub;
use crate::data::snli::LABELS;
use crate::data::vocab::Vocab;
use crate::data::wordpiece;
use crate::error::{Error, Result};
use crate::model::checkpoint::torch::{TensorData, TorchDtype};
use crate::model::checkpoint::{names, safetensors as st, torch};
use crate::model::config::{BertConfig, TokenizerKind};
use crate::model::params::{ParamLayout, EMB_LN_BIAS, EMB_LN_WEIGHT};
use crate::rng::HostRng;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Environment variable: base URL of the Hugging Face hub (default [`HF_URL`]), e.g. a mirror.
pub const ENV_HF_URL: &str = "NLI_BERT_HF_URL";
/// The Hugging Face hub.
pub const HF_URL: &str = "https://huggingface.co";

/// The fields of a Hugging Face BERT `config.json` this engine reads (others are ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HfConfig {
    /// `bert` (checked when present).
    #[serde(default)]
    pub model_type: Option<String>,
    /// C.
    pub hidden_size: usize,
    /// F.
    pub intermediate_size: usize,
    /// NH.
    pub num_attention_heads: usize,
    /// L.
    pub num_hidden_layers: usize,
    /// P.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// S.
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    /// V.
    pub vocab_size: usize,
    /// `gelu`, `gelu_new`, `gelu_pytorch_tanh` or `relu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Dropout of the hidden states (transformers' fine-tuning default, 0.1 for BERTs).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Standard deviation of a new head's weights (0.02).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Only `absolute` is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// Class names by output index (`{"0": "entailment", ...}`).
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_positions() -> usize {
    512
}
fn default_types() -> usize {
    2
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_init_range() -> f64 {
    0.02
}

impl HfConfig {
    /// Reads `config.json`; errors say which field is missing or wrong.
    pub fn read(path: &Path) -> Result<HfConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::parse(path, e.line(), format!("not a Hugging Face BERT config.json: {e}")))
    }

    /// The engine's configuration for this checkpoint (WordPiece, lower-casing as given).
    pub fn to_bert_config(&self, lowercase: bool, path: &Path) -> Result<BertConfig> {
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "bert") {
            return Err(Error::checkpoint(
                path,
                format!("model_type is {t:?}: only BERT checkpoints (model_type \"bert\") are supported"),
            ));
        }
        if let Some(p) = self.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
            return Err(Error::checkpoint(
                path,
                format!("position_embedding_type {p:?} is not supported (only \"absolute\")"),
            ));
        }
        let activation = match self.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "hidden_act {other:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"
                    ),
                ))
            }
        };
        let cfg = BertConfig {
            vocab_size: self.vocab_size,
            hidden: self.hidden_size,
            ffn: self.intermediate_size,
            heads: self.num_attention_heads,
            layers: self.num_hidden_layers,
            max_positions: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            activation,
            ln_eps: self.layer_norm_eps,
            embedding_layernorm: true,
            train_pos_embedding: true,
            num_labels: LABELS.len(),
            tokenizer: TokenizerKind::WordPiece,
            lowercase,
            hf_extra_dropout: true,
        };
        cfg.validate().map_err(|e| Error::checkpoint(path, e.to_string()))?;
        Ok(cfg)
    }
}

/// For a checkpoint's `id2label`, the checkpoint row holding each of our labels: `perm[i]` is
/// the row of `LABELS[i]`. `None` unless the map names exactly entailment, contradiction and
/// neutral (case-insensitive, surrounding spaces ignored) at indices 0, 1, 2.
pub fn label_permutation(id2label: &BTreeMap<String, String>) -> Option<[usize; 3]> {
    if id2label.len() != 3 {
        return None;
    }
    let mut perm = [usize::MAX; 3];
    for (k, v) in id2label {
        let row: usize = k.trim().parse().ok().filter(|&r| r < 3)?;
        let ours = LABELS.iter().position(|l| l.eq_ignore_ascii_case(v.trim()))?;
        if perm[ours] != usize::MAX {
            return None;
        }
        perm[ours] = row;
    }
    Some(perm)
}

/// Whether `dir` looks like a Hugging Face model: a `config.json` with `hidden_size` (and no
/// `"format": "nli-bert"`, which marks a directory this tool saved).
pub fn is_hf_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    v.get("format").is_none() && v.get("hidden_size").is_some()
}

/// A checkpoint read into the engine's layout.
pub struct HfModel {
    /// Architecture (WordPiece tokenizer).
    pub cfg: BertConfig,
    /// `vocab.txt`.
    pub vocab: Vocab,
    /// All parameters in f64, laid out by `ParamLayout::new(&cfg)`.
    pub params: Vec<f64>,
    /// The checkpoint's `hidden_dropout_prob`.
    pub hidden_dropout: f64,
    /// What was done that the user should know (fresh classifier or pooler, reordered labels).
    pub notices: Vec<String>,
}

/// The weights file of a directory: `model.safetensors`, else `pytorch_model.bin`.
fn weights_path(dir: &Path) -> Result<PathBuf> {
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let sharded = dir.join("model.safetensors.index.json").is_file();
    Err(Error::usage(format!(
        "{}: no model.safetensors or pytorch_model.bin{}",
        dir.display(),
        if sharded { " (sharded checkpoints are not supported: BERTs fit in one file)" } else { "" }
    )))
}

/// Reads a Hugging Face BERT directory (see the module docs). `seed` initialises what the
/// checkpoint lacks (the classifier, or a pooler).
pub fn load_hf_dir(dir: &Path, seed: u64) -> Result<HfModel> {
    let cfg_path = dir.join("config.json");
    let hf = HfConfig::read(&cfg_path)?;
    let vocab_path = dir.join("vocab.txt");
    if !vocab_path.is_file() {
        return Err(Error::usage(format!(
            "{}: a Hugging Face BERT directory needs vocab.txt (the WordPiece vocabulary; tokenizer.json \
             alone is not read)",
            dir.display()
        )));
    }
    let vocab = wordpiece::read_vocab_txt(&vocab_path)?;
    let lowercase = wordpiece::read_lowercase(dir)?.unwrap_or(true);
    let cfg = hf.to_bert_config(lowercase, &cfg_path)?;
    if vocab.len() != cfg.vocab_size {
        return Err(Error::checkpoint(
            dir,
            format!(
                "config.json says vocab_size {} but vocab.txt has {} tokens",
                cfg.vocab_size,
                vocab.len()
            ),
        ));
    }
    let wpath = weights_path(dir)?;
    let tensors = if wpath.extension().is_some_and(|e| e == "safetensors") {
        st::load_safetensors(&wpath)?
    } else {
        torch::load_torch_state_dict(&wpath)?
    };
    let layout = ParamLayout::new(&cfg);
    names::check_layout_fits(&tensors, &layout, &cfg, &wpath)?;
    let (tensors, notices) = prepare_tensors(tensors, &hf, &layout, seed, &wpath)?;
    let mut params = vec![0.0; layout.total];
    let rep = names::load_into_params(&tensors, &layout, &mut params, &wpath)?;
    rep.refuse_non_finite(&wpath)?;
    Ok(HfModel { cfg, vocab, params, hidden_dropout: hf.hidden_dropout_prob, notices })
}

/// Adapts a checkpoint's tensors to the layout before the strict loader sees them: keeps a
/// usable 3-way classifier (rows reordered) or replaces any head by a fresh `output`, adds a
/// fresh pooler when there is none, and leaves out other task heads. Returns the notices.
fn prepare_tensors(
    tensors: Vec<TensorData>,
    hf: &HfConfig,
    layout: &ParamLayout,
    seed: u64,
    path: &Path,
) -> Result<(Vec<TensorData>, Vec<String>)> {
    let mut notices = Vec::new();
    let (mut keep, mut heads) = (Vec::with_capacity(tensors.len()), Vec::new());
    for t in tensors {
        let base = t.name.strip_prefix("bert.").unwrap_or(&t.name);
        let body = ["embeddings.", "encoder.", "pooler."].iter().any(|p| base.starts_with(p));
        if body || t.name.starts_with("cls.") {
            keep.push(t);
        } else {
            heads.push(t);
        }
    }
    let c = layout.get("output.weight").map_or(0, |e| e.shape[1]);
    let w = heads.iter().position(|t| t.name == "classifier.weight");
    let b = heads.iter().position(|t| t.name == "classifier.bias");
    let labels = hf.id2label.as_ref().map(|m| m.values().cloned().collect::<Vec<_>>().join(", "));
    let mut used_classifier = false;
    if let (Some(wi), Some(bi)) = (w, b) {
        let (wt, bt) = (&heads[wi], &heads[bi]);
        let perm = hf.id2label.as_ref().and_then(label_permutation);
        match perm {
            Some(perm) if wt.shape == [3, c] && bt.shape == [3] => {
                let mut wv = Vec::with_capacity(3 * c);
                let mut bv = Vec::with_capacity(3);
                for &row in &perm {
                    wv.extend_from_slice(&wt.values[row * c..(row + 1) * c]);
                    bv.push(bt.values[row]);
                }
                if perm != [0, 1, 2] {
                    notices.push(format!(
                        "the checkpoint's classifier ({}) was reordered to entailment, contradiction, neutral",
                        labels.clone().unwrap_or_default()
                    ));
                }
                keep.push(TensorData { name: "output.weight".into(), shape: vec![3, c], dtype: wt.dtype, values: wv });
                keep.push(TensorData { name: "output.bias".into(), shape: vec![3], dtype: bt.dtype, values: bv });
                used_classifier = true;
            }
            _ => notices.push(format!(
                "the checkpoint's classifier (shape {:?}, labels {}) is not an entailment/contradiction/neutral \
                 head: a fresh output layer is used",
                wt.shape,
                labels.clone().unwrap_or_else(|| "not named".into())
            )),
        }
    }
    let others: Vec<&str> =
        heads.iter().map(|t| t.name.as_str()).filter(|n| !n.starts_with("classifier.")).collect();
    if !others.is_empty() {
        notices.push(format!("left out {} tensor(s) of other heads: {}", others.len(), others.join(", ")));
    }
    if !used_classifier && w.is_none() {
        notices.push("the checkpoint has no classifier: a fresh output layer is used".into());
    }
    if !used_classifier {
        keep.extend(fresh(layout, &["output.weight", "output.bias"], seed, hf.initializer_range));
    }
    let has_pooler =
        keep.iter().any(|t| names::canonical_name(&t.name).as_deref() == Some("hidden.0.weight"));
    if !has_pooler {
        notices.push("the checkpoint has no pooler (pooler.dense): a fresh one is used".into());
        keep.extend(fresh(layout, &["hidden.0.weight", "hidden.0.bias"], seed, hf.initializer_range));
    }
    for name in [EMB_LN_WEIGHT, EMB_LN_BIAS] {
        if !keep.iter().any(|t| names::canonical_name(&t.name).as_deref() == Some(name)) {
            return Err(Error::checkpoint(
                path,
                format!("no embeddings.LayerNorm (`{name}`): not a BERT checkpoint"),
            ));
        }
    }
    Ok((keep, notices))
}

/// Freshly initialised tensors for the given layout names, as transformers initialises a new
/// head (`_init_weights`): weights ~ N(0, `std`²), biases 0. Each tensor draws from its own
/// stream of `seed`.
fn fresh(layout: &ParamLayout, wanted: &[&str], seed: u64, std: f64) -> Vec<TensorData> {
    wanted
        .iter()
        .filter_map(|&n| layout.get(n).map(|e| (n, e)))
        .map(|(n, e)| {
            let stream = 0x4846_0000
                + n.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % 0x1_0000;
            let mut rng = HostRng::new(seed, stream);
            let values = if n.ends_with("weight") {
                (0..e.numel()).map(|_| rng.normal() * std).collect()
            } else {
                vec![0.0; e.numel()]
            };
            TensorData { name: n.into(), shape: e.shape.clone(), dtype: TorchDtype::F64, values }
        })
        .collect()
}

/// The Hugging Face name (`BertForSequenceClassification`, with `bert.`) of one of our
/// parameters: the inverse of [`names::hf_to_d2l`]. The positional table is `[P, C]` there.
pub fn d2l_to_hf(name: &str) -> Option<String> {
    let simple = match name {
        "encoder.token_embedding.weight" => Some("bert.embeddings.word_embeddings.weight"),
        "encoder.pos_embedding" => Some("bert.embeddings.position_embeddings.weight"),
        "encoder.segment_embedding.weight" => Some("bert.embeddings.token_type_embeddings.weight"),
        EMB_LN_WEIGHT => Some("bert.embeddings.LayerNorm.weight"),
        EMB_LN_BIAS => Some("bert.embeddings.LayerNorm.bias"),
        "hidden.0.weight" => Some("bert.pooler.dense.weight"),
        "hidden.0.bias" => Some("bert.pooler.dense.bias"),
        "output.weight" => Some("classifier.weight"),
        "output.bias" => Some("classifier.bias"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.into());
    }
    let rest = name.strip_prefix("encoder.blks.")?;
    let (layer, sub) = rest.split_once('.')?;
    let (stem, param) = sub.rsplit_once('.')?;
    let hf = match stem {
        "attention.W_q" => "attention.self.query",
        "attention.W_k" => "attention.self.key",
        "attention.W_v" => "attention.self.value",
        "attention.W_o" => "attention.output.dense",
        "addnorm1.ln" => "attention.output.LayerNorm",
        "ffn.dense1" => "intermediate.dense",
        "ffn.dense2" => "output.dense",
        "addnorm2.ln" => "output.LayerNorm",
        _ => return None,
    };
    Some(format!("bert.encoder.layer.{layer}.{hf}.{param}"))
}

/// The base URL of the hub: `$NLI_BERT_HF_URL`, else [`HF_URL`].
pub fn hub_url() -> String {
    std::env::var(ENV_HF_URL).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| HF_URL.to_string())
}

/// [`download_hub_model_with`] with [`hub_url`] and the cache of [`hub::cache_dir`].
pub fn download_hub_model(repo: &str) -> Result<PathBuf> {
    download_hub_model_with(repo, &hub_url(), &hub::cache_dir())
}

/// Downloads the files of hub model `repo` (`ORG/NAME` or `NAME`) into `cache/hf/ORG/NAME` from
/// `{base}/{repo}/resolve/main/{file}`: `config.json`, `vocab.txt`, `model.safetensors` (else
/// `pytorch_model.bin`) and, when the hub has it, `tokenizer_config.json`. A folder that already
/// holds the required files is used as it is (delete it to download again).
pub fn download_hub_model_with(repo: &str, base: &str, cache: &Path) -> Result<PathBuf> {
    let parts: Vec<&str> = repo.split('/').collect();
    let ok_part = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) {
        return Err(Error::usage(format!(
            "--model hf:{repo}: expected hf:ORG/NAME (e.g. hf:google-bert/bert-base-uncased), names made of \
             letters, digits, '.', '_' and '-'"
        )));
    }
    let dir = parts.iter().fold(cache.join("hf"), |d, p| d.join(p));
    let have = |n: &str| dir.join(n).is_file();
    if have("config.json") && have("vocab.txt") && (have("model.safetensors") || have("pytorch_model.bin")) {
        return Ok(dir);
    }
    let base = base.trim_end_matches('/');
    let what = format!("hf:{repo}");
    let get = |file: &str| -> Result<bool> {
        let url = format!("{base}/{repo}/resolve/main/{file}");
        if have(file) {
            return Ok(true);
        }
        hub::download_file(&url, &dir.join(file), &what)
    };
    let missing = |file: &str| Error::Download {
        what: what.clone(),
        msg: format!(
            "{base}/{repo}/resolve/main/{file} was not found (404): check the model name (gated or private \
                 models are not supported)"
        ),
    };
    for file in ["config.json", "vocab.txt"] {
        if !get(file)? {
            return Err(missing(file));
        }
    }
    if !get("model.safetensors")? && !get("pytorch_model.bin")? {
        return Err(missing("model.safetensors (or pytorch_model.bin)"));
    }
    get("tokenizer_config.json")?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_orders() {
        let ours = map(&[("0", "entailment"), ("1", "contradiction"), ("2", "neutral")]);
        assert_eq!(label_permutation(&ours), Some([0, 1, 2]));
        let mnli = map(&[("0", "CONTRADICTION"), ("1", "NEUTRAL"), ("2", "ENTAILMENT")]);
        assert_eq!(label_permutation(&mnli), Some([2, 0, 1]));
        assert_eq!(label_permutation(&map(&[("0", "LABEL_0"), ("1", "LABEL_1"), ("2", "LABEL_2")])), None);
        assert_eq!(label_permutation(&map(&[("0", "entailment"), ("1", "not_entailment")])), None);
        let dup = map(&[("0", "entailment"), ("1", "entailment"), ("2", "neutral")]);
        assert_eq!(label_permutation(&dup), None);
    }

    #[test]
    fn names_round_trip() {
        let cfg = HfConfig {
            model_type: Some("bert".into()),
            hidden_size: 8,
            intermediate_size: 16,
            num_attention_heads: 2,
            num_hidden_layers: 2,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            vocab_size: 10,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.1,
            initializer_range: 0.02,
            position_embedding_type: None,
            id2label: None,
        };
        let bert = cfg.to_bert_config(true, Path::new("config.json")).unwrap();
        for e in &ParamLayout::new(&bert).entries {
            let hf = d2l_to_hf(&e.name).unwrap_or_else(|| panic!("no HF name for {}", e.name));
            assert_eq!(names::canonical_name(&hf).as_deref(), Some(e.name.as_str()), "{hf}");
        }
        let bad = HfConfig { hidden_act: "swish".into(), ..cfg.clone() };
        assert!(bad.to_bert_config(true, Path::new("c")).unwrap_err().to_string().contains("swish"));
        let bad = HfConfig { model_type: Some("roberta".into()), ..cfg };
        assert!(bad.to_bert_config(true, Path::new("c")).is_err());
    }
}
