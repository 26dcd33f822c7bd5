//! Writing a model back out in Hugging Face's layout (`nli-bert export --to hf`): a directory that
//! `AutoModelForSequenceClassification.from_pretrained` and `AutoTokenizer.from_pretrained` load
//! as they are, for transformers, sentence-transformers or an inference server.
//!
//! - `model.safetensors`: every parameter under transformers' `BertForSequenceClassification` name
//!   (`bert.embeddings.*`, `bert.encoder.layer.N.*`, `bert.pooler.dense.*`, `classifier.*`), f32,
//!   the positional table as `(P, C)`; names from [`d2l_to_hf`](super::hf::d2l_to_hf), the inverse
//!   of the loader's table.
//! - `config.json`: `architectures`, `model_type`, the sizes, `hidden_act`, `layer_norm_eps`, and
//!   `id2label` / `label2id` in our label order ([`LABELS`]), which is the classifier's row order.
//! - `vocab.txt` and `tokenizer_config.json` (`BertTokenizer`, `do_lower_case`).
//!
//! Only a model of the Hugging Face architecture can be expressed this way: d2l's BERT has no
//! embedding LayerNorm and a word-level vocabulary (`vocab.json`), which transformers' BERT has
//! no place for; exporting one is a usage error that says so.

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::Activation;
use crate::data::snli::LABELS;
use crate::data::wordpiece;
use crate::error::{Error, Result};
use crate::model::config::{BertConfig, TokenizerKind};
use crate::model::hf::d2l_to_hf;
use crate::model::params::ParamLayout;
use crate::model::store::LoadedModel;
use crate::train::report::write_atomic;

/// Why `cfg` cannot be written as a transformers BERT, if it cannot.
fn not_exportable(cfg: &BertConfig) -> Option<&'static str> {
    if !cfg.embedding_layernorm {
        return Some("it has no LayerNorm after the embedding sum");
    }
    if cfg.tokenizer != TokenizerKind::WordPiece {
        return Some("its vocabulary is d2l's word list (vocab.json), not WordPiece");
    }
    if cfg.activation == Activation::Tanh {
        return Some("its FFN activation is tanh");
    }
    None
}

/// transformers' `config.json` for `cfg`.
pub fn hf_config(cfg: &BertConfig, pad_token_id: Option<usize>) -> serde_json::Value {
    let act = match cfg.activation {
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_new",
        Activation::Relu => "relu",
        Activation::Tanh => "tanh",
    };
    let id2label: BTreeMap<String, &str> =
        LABELS.iter().enumerate().map(|(i, l)| (i.to_string(), *l)).collect();
    let label2id: BTreeMap<&str, usize> = LABELS.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    serde_json::json!({
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.ffn,
        "hidden_act": act,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": null,
        "max_position_embeddings": cfg.max_positions,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.ln_eps,
        "pad_token_id": pad_token_id.unwrap_or(0),
        "position_embedding_type": "absolute",
        "problem_type": "single_label_classification",
        "id2label": id2label,
        "label2id": label2id,
        "dtype": "float32",
    })
}

/// Writes `m` to `dir` as a transformers BERT classifier (see the module docs). Nothing is left
/// half-written: each file goes through a temporary file and a rename.
pub fn export_hf(m: &LoadedModel, dir: &Path) -> Result<()> {
    let cfg = &m.cfg;
    if let Some(why) = not_exportable(cfg) {
        return Err(Error::usage(format!(
            "{} cannot be exported as a Hugging Face BERT: {why}. Only models of the Hugging Face \
             architecture (loaded from a Hugging Face directory or hf:ORG/NAME, then fine-tuned) can; a \
             d2l-architecture model stays in nli-bert's own format",
            m.origin
        )));
    }
    let layout = ParamLayout::new(cfg);
    if m.params.len() != layout.total {
        return Err(Error::msg(format!(
            "export: the model has {} values, its configuration describes {}",
            m.params.len(),
            layout.total
        )));
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(layout.entries.len());
    for e in &layout.entries {
        let name = d2l_to_hf(&e.name).ok_or_else(|| {
            Error::msg(format!(
                "export: parameter `{}` has no Hugging Face name (a bug: please report it)",
                e.name
            ))
        })?;
        let shape = if e.name == "encoder.pos_embedding" {
            vec![cfg.max_positions, cfg.hidden]
        } else {
            e.shape.clone()
        };
        let bytes: Vec<u8> =
            m.params[e.offset..e.offset + e.numel()].iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::msg(format!("export: tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta: std::collections::HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let st = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::msg(format!("export: serialising model.safetensors: {e}")))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let pad = m.vocab.get("[PAD]").map(|i| i as usize);
    let config = serde_json::to_vec_pretty(&hf_config(cfg, pad))
        .map_err(|e| Error::msg(format!("export: config.json: {e}")))?;
    let tok = serde_json::json!({
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": cfg.lowercase,
        "tokenize_chinese_chars": true,
        "strip_accents": null,
        "model_max_length": cfg.max_positions,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    });
    let tok =
        serde_json::to_vec_pretty(&tok).map_err(|e| Error::msg(format!("export: tokenizer_config: {e}")))?;
    write_atomic(&dir.join("model.safetensors"), &st)?;
    write_atomic(&dir.join("config.json"), &config)?;
    write_atomic(&dir.join("tokenizer_config.json"), &tok)?;
    wordpiece::save_vocab_txt(&m.vocab, dir.join("vocab.txt"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::names::hf_to_d2l;

    #[test]
    fn every_parameter_has_a_transformers_name_that_reads_back() {
        let cfg = BertConfig {
            embedding_layernorm: true,
            tokenizer: TokenizerKind::WordPiece,
            activation: Activation::Gelu,
            ..BertConfig::d2l_small(100)
        };
        let layout = ParamLayout::new(&cfg);
        let mut seen = std::collections::BTreeSet::new();
        for e in &layout.entries {
            let hf = d2l_to_hf(&e.name).unwrap_or_else(|| panic!("{} has no HF name", e.name));
            assert!(seen.insert(hf.clone()), "{hf} twice");
            assert_eq!(hf_to_d2l(&hf).as_deref(), Some(e.name.as_str()));
        }
        assert!(seen.contains("bert.encoder.layer.1.attention.self.query.weight"), "{seen:?}");
        assert!(seen.contains("classifier.bias") && seen.contains("bert.pooler.dense.weight"));
    }
}
