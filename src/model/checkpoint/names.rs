//! THE name-mapping table: which checkpoint tensor fills which entry of the flat parameter buffer.
//!
//! Our names are d2l's state-dict keys ([`ParamLayout`]). A checkpoint may use them (d2l's
//! `pretrained.params`, our own safetensors) or Hugging Face BERT names ([`hf_to_d2l`]). Loading
//! is strict: every layout entry must be found with exactly its shape, except the new classifier
//! `output.*`, which may be absent (the caller initialises it). Pre-training heads (`mlm.*`,
//! `nsp.*`, HF `cls.*`) and HF's `position_ids` buffer are skipped and counted; any other key is
//! an error naming it.

use super::torch::TensorData;
use crate::error::{Error, Result};
use crate::model::config::BertConfig;
use crate::model::params::{ParamLayout, EMB_LN_BIAS, EMB_LN_WEIGHT};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// What [`load_into_params`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Layout entries filled from the checkpoint.
    pub loaded: usize,
    /// Of those, how many came through a Hugging Face name.
    pub hf_names: usize,
    /// Pre-training-head tensors skipped (`mlm.*`, `nsp.*`, `cls.*`).
    pub pretraining_heads_skipped: usize,
    /// Other tensors skipped on purpose (`position_ids` buffers), by name.
    pub skipped: Vec<String>,
    /// `output.weight` / `output.bias` were absent: the caller must initialise them.
    pub output_initialized_fresh: bool,
    /// NaN / ±inf values among the loaded weights (loaded as they are; the caller decides).
    pub non_finite: usize,
    /// The tensors holding them (checkpoint name, count), in file order.
    pub non_finite_tensors: Vec<(String, usize)>,
}

impl LoadReport {
    /// An error naming `path` and the tensors that hold NaN or ±inf values, if any: weights like
    /// that come from a diverged run or a corrupt file, and would only make every loss NaN.
    pub fn refuse_non_finite(&self, path: &Path) -> Result<()> {
        if self.non_finite == 0 {
            return Ok(());
        }
        let mut names: Vec<String> =
            self.non_finite_tensors.iter().take(8).map(|(n, k)| format!("`{n}` ({k})")).collect();
        if self.non_finite_tensors.len() > 8 {
            names.push(format!("… ({} more tensors)", self.non_finite_tensors.len() - 8));
        }
        Err(Error::checkpoint(
            path,
            format!(
                "{} weights are NaN or infinite, in {}: the file is corrupt or was saved from a diverged run",
                self.non_finite,
                names.join(", ")
            ),
        ))
    }
}

/// Refuses a configuration whose parameters far outnumber the values in the checkpoint, before
/// the parameter buffer is allocated: a hostile or mismatched `config.json` must not make the
/// loader allocate gigabytes for a small file. Beyond the tensors present, a fresh classifier
/// and pooler (`hidden`) may be added; mismatches within twice the file's size plus 2^20 values
/// pass, for [`load_into_params`] to name the tensors that differ.
pub fn check_layout_fits(
    tensors: &[TensorData],
    layout: &ParamLayout,
    cfg: &BertConfig,
    path: &Path,
) -> Result<()> {
    let present: usize = tensors.iter().map(|t| t.values.len()).fold(0usize, usize::saturating_add);
    let (c, k) = (cfg.hidden, cfg.num_labels);
    let fresh = (c + 1).saturating_mul(c + k);
    // slack for small mismatches, which `load_into_params` then reports tensor by tensor
    let slack = present.saturating_add(1 << 20);
    if layout.total > present.saturating_add(fresh).saturating_add(slack) {
        return Err(Error::checkpoint(
            path,
            format!(
                "the configuration describes {} parameters but the file holds {present} values: the \
                 configuration (hidden {c}, ffn {}, layers {}, vocab {}, positions {}) does not belong to \
                 these weights",
                layout.total, cfg.ffn, cfg.layers, cfg.vocab_size, cfg.max_positions
            ),
        ));
    }
    Ok(())
}

/// The hint for size mismatches. The number of heads is not in the weights.
const SIZE_HINT: &str = "wrong --model size? bert.small is 256 hidden / 512 FFN / 2 layers, bert.base \
                         768 / 3072 / 12 (the number of attention heads is not stored in the weights: \
                         check it separately)";

/// Maps a Hugging Face BERT parameter name to our (d2l) name; `None` if it is not one.
///
/// Accepts names with or without the `bert.` prefix and LayerNorm `gamma`/`beta` as well as
/// `weight`/`bias`. The positional table maps to `encoder.pos_embedding` although HF stores it
/// as `[P, C]` and we as `[1, P, C]` ([`load_into_params`] accepts both).
pub fn hf_to_d2l(name: &str) -> Option<String> {
    if let Some(p) = name.strip_prefix("classifier.") {
        return matches!(p, "weight" | "bias").then(|| format!("output.{p}"));
    }
    let n = name.strip_prefix("bert.").unwrap_or(name);
    let (stem, param) = n.rsplit_once('.')?;
    let ln_param = match param {
        "weight" | "gamma" => "weight",
        "bias" | "beta" => "bias",
        _ => return None,
    };
    let is_ln = stem.ends_with("LayerNorm");
    if !is_ln && !matches!(param, "weight" | "bias") {
        return None;
    }
    match stem {
        "embeddings.word_embeddings" if param == "weight" => {
            return Some("encoder.token_embedding.weight".into())
        }
        "embeddings.position_embeddings" if param == "weight" => return Some("encoder.pos_embedding".into()),
        "embeddings.token_type_embeddings" if param == "weight" => {
            return Some("encoder.segment_embedding.weight".into())
        }
        "embeddings.LayerNorm" => {
            return Some(if ln_param == "weight" { EMB_LN_WEIGHT } else { EMB_LN_BIAS }.into());
        }
        "pooler.dense" => return Some(format!("hidden.0.{param}")),
        _ => {}
    }
    let rest = stem.strip_prefix("encoder.layer.")?;
    let (layer, sub) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || layer.len() > 6 {
        return None;
    }
    let ours = match sub {
        "attention.self.query" => "attention.W_q",
        "attention.self.key" => "attention.W_k",
        "attention.self.value" => "attention.W_v",
        "attention.output.dense" => "attention.W_o",
        "attention.output.LayerNorm" => "addnorm1.ln",
        "intermediate.dense" => "ffn.dense1",
        "output.dense" => "ffn.dense2",
        "output.LayerNorm" => "addnorm2.ln",
        _ => return None,
    };
    let p = if is_ln { ln_param } else { param };
    Some(format!("encoder.blks.{}.{ours}.{p}", layer.parse::<usize>().ok()?))
}

/// Pre-training heads, never part of the classifier: d2l `mlm.*` / `nsp.*`, HF `cls.*`.
fn is_pretraining_head(name: &str) -> bool {
    name.starts_with("mlm.") || name.starts_with("nsp.") || name.starts_with("cls.")
}

/// Buffers that carry no weights (HF's `embeddings.position_ids`).
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with("embeddings.position_ids")
}

/// The d2l name a checkpoint tensor stands for, whatever its naming scheme (`None`: not a
/// parameter of the classifier).
pub fn canonical_name(name: &str) -> Option<String> {
    let d2l = ["encoder.", "hidden.", "output."].iter().any(|p| name.starts_with(p));
    if d2l && !name.starts_with("encoder.layer.") {
        Some(name.to_owned())
    } else {
        hf_to_d2l(name)
    }
}

/// Layer index of a name `encoder.blks.N.…`.
fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix("encoder.blks.")?.split('.').next()?.parse().ok()
}

/// Copies the checkpoint `tensors` into `params` (laid out by `layout`). Strict: see the module
/// docs. `path` labels errors. On error `params` may be partly written.
pub fn load_into_params(
    tensors: &[TensorData],
    layout: &ParamLayout,
    params: &mut [f64],
    path: &Path,
) -> Result<LoadReport> {
    let err = |m: String| Error::checkpoint(path, m);
    if params.len() != layout.total {
        return Err(err(format!(
            "parameter buffer has {} values, the layout {}",
            params.len(),
            layout.total
        )));
    }
    let layers = layout.ranges.blocks.len();
    let mut report = LoadReport::default();
    let mut filled: HashMap<String, String> = HashMap::new(); // our name → checkpoint name
    let mut unknown: Vec<String> = Vec::new(); // as shown in the error
    let mut unknown_targets: Vec<String> = Vec::new(); // their d2l names, where they have one
    for t in tensors {
        let (target, via_hf) = if layout.get(&t.name).is_some() {
            (t.name.clone(), false)
        } else if is_pretraining_head(&t.name) {
            report.pretraining_heads_skipped += 1;
            continue;
        } else if is_ignored_buffer(&t.name) {
            report.skipped.push(t.name.clone());
            continue;
        } else if let Some(m) = canonical_name(&t.name) {
            let hf = m != t.name;
            (m, hf)
        } else {
            unknown.push(t.name.clone());
            continue;
        };
        let Some(entry) = layout.get(&target) else {
            unknown.push(if via_hf { format!("{} (= {target})", t.name) } else { t.name.clone() });
            unknown_targets.push(target);
            continue;
        };
        if let Some(prev) = filled.insert(target.clone(), t.name.clone()) {
            return Err(err(format!("both `{prev}` and `{}` map to `{target}`", t.name)));
        }
        let pos_squeezed =
            target == "encoder.pos_embedding" && t.shape.len() == 2 && entry.shape[1..] == t.shape[..];
        if t.shape != entry.shape && !pos_squeezed {
            return Err(err(shape_message(t, &target, &entry.shape)));
        }
        if !t.dtype.is_float() {
            return Err(err(format!(
                "tensor `{}` is {}, expected floating-point weights",
                t.name,
                t.dtype.name()
            )));
        }
        if t.values.len() != entry.numel() {
            return Err(err(format!(
                "tensor `{}` holds {} values for shape {:?}",
                t.name,
                t.values.len(),
                t.shape
            )));
        }
        params[entry.range()].copy_from_slice(&t.values);
        let bad = t.non_finite_count();
        if bad > 0 {
            report.non_finite += bad;
            report.non_finite_tensors.push((t.name.clone(), bad));
        }
        report.loaded += 1;
        report.hf_names += via_hf as usize;
    }

    if !unknown.is_empty() {
        let extra_layers: BTreeSet<usize> =
            unknown_targets.iter().filter_map(|n| block_index(n)).filter(|&l| l >= layers).collect();
        let mut msg = format!("{} unexpected tensor(s): {}", unknown.len(), list(&unknown));
        if let Some(&max) = extra_layers.last() {
            msg += &format!(
                "; the checkpoint has more layers ({}) than the configuration ({layers}): {SIZE_HINT}",
                max + 1
            );
        } else if unknown.iter().all(|n| n.starts_with("module.")) {
            msg += "; saved from nn.DataParallel? Its keys carry a `module.` prefix: re-save \
                    model.module.state_dict()";
        } else if unknown_targets.iter().any(|n| n == EMB_LN_WEIGHT) {
            msg +=
                "; the checkpoint has an embedding LayerNorm (a Hugging Face model) but the configuration \
                    has none";
        }
        return Err(err(msg));
    }

    let mut missing: Vec<String> =
        layout.entries.iter().filter(|e| !filled.contains_key(&e.name)).map(|e| e.name.clone()).collect();
    let out_missing: Vec<&String> = missing.iter().filter(|n| n.starts_with("output.")).collect();
    match out_missing.len() {
        0 => {}
        2 => {
            report.output_initialized_fresh = true;
            missing.retain(|n| !n.starts_with("output."));
        }
        _ => {
            return Err(err(format!(
                "`{}` is missing while the rest of `output.*` is present",
                out_missing[0]
            )))
        }
    }
    if !missing.is_empty() {
        let mut msg = format!("{} tensor(s) missing: {}", missing.len(), list(&missing));
        let found_layers = filled.keys().filter_map(|n| block_index(n)).max().map_or(0, |m| m + 1);
        if missing.iter().any(|n| block_index(n).is_some_and(|l| l >= found_layers)) {
            msg += &format!(
                "; the checkpoint has fewer layers ({found_layers}) than the configuration ({layers}): {SIZE_HINT}"
            );
        } else if missing.iter().any(|n| n == EMB_LN_WEIGHT) {
            msg += "; the configuration expects an embedding LayerNorm (Hugging Face) that a d2l checkpoint \
                    does not have";
        }
        return Err(err(msg));
    }
    Ok(report)
}

fn list(names: &[String]) -> String {
    let mut s = names.iter().take(8).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        s += &format!(", … ({} more)", names.len() - 8);
    }
    s
}

fn shape_message(t: &TensorData, target: &str, expected: &[usize]) -> String {
    let name = if t.name == target { format!("`{target}`") } else { format!("`{}` (= `{target}`)", t.name) };
    let head = format!("tensor {name}: expected shape {expected:?}, found {:?}", t.shape);
    let hint = if target == "encoder.token_embedding.weight" && t.shape.last() == expected.last() {
        format!(
            "the vocabulary differs ({} rows in the checkpoint, {} in the vocabulary file)",
            t.shape[0], expected[0]
        )
    } else if target.starts_with("output.") {
        format!(
            "the checkpoint's classifier has {} outputs, the configuration {} labels",
            t.shape.first().copied().unwrap_or(0),
            expected[0]
        )
    } else if target == "encoder.pos_embedding" && t.shape.len() >= 2 && t.shape.last() == expected.last() {
        format!(
            "the checkpoint has {} positions, the configuration {}",
            t.shape[t.shape.len() - 2],
            expected[1]
        )
    } else {
        SIZE_HINT.to_owned()
    };
    format!("{head}: {hint}")
}

/// Model dimensions read off a checkpoint's shapes: `(vocab, hidden, ffn, layers, max_positions)`.
/// Works with d2l and Hugging Face names. `path` labels errors.
pub fn infer_d2l_dims(tensors: &[TensorData], path: &Path) -> Result<(usize, usize, usize, usize, usize)> {
    let err = |m: String| Error::checkpoint(path, m);
    let by_name: HashMap<String, &TensorData> =
        tensors.iter().filter_map(|t| canonical_name(&t.name).map(|n| (n, t))).collect();
    let get = |n: &str, rank: &[usize]| -> Result<&TensorData> {
        let t = by_name
            .get(n)
            .ok_or_else(|| err(format!("no `{n}` (or its Hugging Face name): not a BERT checkpoint")))?;
        if !rank.contains(&t.shape.len()) {
            return Err(err(format!("`{}` has shape {:?}", t.name, t.shape)));
        }
        Ok(t)
    };
    let tok = get("encoder.token_embedding.weight", &[2])?;
    let (vocab, hidden) = (tok.shape[0], tok.shape[1]);
    let pos = get("encoder.pos_embedding", &[2, 3])?;
    let max_positions = pos.shape[pos.shape.len() - 2];
    if pos.shape[pos.shape.len() - 1] != hidden || (pos.shape.len() == 3 && pos.shape[0] != 1) {
        return Err(err(format!("`{}` has shape {:?}, hidden size is {hidden}", pos.name, pos.shape)));
    }
    let blocks: BTreeSet<usize> = by_name.keys().filter_map(|n| block_index(n)).collect();
    let layers = blocks.len();
    if layers == 0 {
        return Err(err("no encoder blocks (`encoder.blks.N.*` / `encoder.layer.N.*`)".into()));
    }
    if blocks.last() != Some(&(layers - 1)) {
        return Err(err(format!("encoder block indices are not 0..{layers}: {blocks:?}")));
    }
    let ffn = get("encoder.blks.0.ffn.dense1.weight", &[2])?;
    if ffn.shape[1] != hidden {
        return Err(err(format!("`{}` has shape {:?}, hidden size is {hidden}", ffn.name, ffn.shape)));
    }
    Ok((vocab, hidden, ffn.shape[0], layers, max_positions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map() {
        let m = |s: &str| hf_to_d2l(s);
        assert_eq!(
            m("bert.embeddings.word_embeddings.weight").as_deref(),
            Some("encoder.token_embedding.weight")
        );
        assert_eq!(m("embeddings.position_embeddings.weight").as_deref(), Some("encoder.pos_embedding"));
        assert_eq!(
            m("embeddings.token_type_embeddings.weight").as_deref(),
            Some("encoder.segment_embedding.weight")
        );
        assert_eq!(m("bert.embeddings.LayerNorm.gamma").as_deref(), Some(EMB_LN_WEIGHT));
        assert_eq!(m("embeddings.LayerNorm.bias").as_deref(), Some(EMB_LN_BIAS));
        assert_eq!(
            m("bert.encoder.layer.11.attention.self.query.weight").as_deref(),
            Some("encoder.blks.11.attention.W_q.weight")
        );
        assert_eq!(
            m("encoder.layer.0.attention.self.key.bias").as_deref(),
            Some("encoder.blks.0.attention.W_k.bias")
        );
        assert_eq!(
            m("encoder.layer.0.attention.self.value.bias").as_deref(),
            Some("encoder.blks.0.attention.W_v.bias")
        );
        assert_eq!(
            m("encoder.layer.0.attention.output.dense.weight").as_deref(),
            Some("encoder.blks.0.attention.W_o.weight")
        );
        assert_eq!(
            m("encoder.layer.0.attention.output.LayerNorm.beta").as_deref(),
            Some("encoder.blks.0.addnorm1.ln.bias")
        );
        assert_eq!(
            m("encoder.layer.3.intermediate.dense.weight").as_deref(),
            Some("encoder.blks.3.ffn.dense1.weight")
        );
        assert_eq!(m("encoder.layer.3.output.dense.bias").as_deref(), Some("encoder.blks.3.ffn.dense2.bias"));
        assert_eq!(
            m("encoder.layer.3.output.LayerNorm.weight").as_deref(),
            Some("encoder.blks.3.addnorm2.ln.weight")
        );
        assert_eq!(m("bert.pooler.dense.weight").as_deref(), Some("hidden.0.weight"));
        assert_eq!(m("classifier.bias").as_deref(), Some("output.bias"));
        assert_eq!(m("encoder.layer.x.output.dense.bias"), None);
        assert_eq!(m("encoder.layer.0.output.dense.gamma"), None);
        assert_eq!(m("embeddings.position_ids"), None);
        assert_eq!(
            canonical_name("encoder.blks.0.ffn.dense1.weight").as_deref(),
            Some("encoder.blks.0.ffn.dense1.weight")
        );
    }
}
