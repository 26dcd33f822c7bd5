//! `nli-bert predict`: labels, probabilities and logits for one pair or a file of pairs.

use super::eval::evaluate;
use super::{check_max_len, encode, pairs_dataset, softmax, EngineArgs};
use crate::data::batch::Truncate;
use crate::data::snli::{read_dataset, LABELS};
use crate::error::{Error, Result};
use crate::model::bert::argmax;
use crate::model::store::load_model;
use clap::Args;
use std::path::PathBuf;

/// `nli-bert predict`.
#[derive(Args)]
pub struct PredictCmd {
    /// A directory saved by `finetune --out` (or d2l weights, a Hugging Face BERT, hf:ORG/NAME).
    #[arg(long)]
    pub model: String,
    /// The premise of one pair (with --hypothesis).
    #[arg(long, requires = "hypothesis", conflicts_with = "input")]
    pub premise: Option<String>,
    /// The hypothesis of one pair (with --premise).
    #[arg(long, requires = "premise")]
    pub hypothesis: Option<String>,
    /// A file of pairs (TSV with header, SNLI .txt or .jsonl; labels are ignored).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// JSON lines output (the default for --input).
    #[arg(long)]
    pub json: bool,
    /// Maximum tokens per pair (default: the model's).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Runs `nli-bert predict`: one JSON object (or line) per pair.
pub fn run(a: PredictCmd) -> Result<()> {
    let m = load_model(&a.model, None, false, 0)?;
    let ds = match (&a.premise, &a.hypothesis, &a.input) {
        (Some(p), Some(h), None) => pairs_dataset(vec![(p.clone(), h.clone())], "command line"),
        (None, None, Some(f)) => read_dataset(f)?,
        _ => return Err(Error::usage("give either --premise P --hypothesis H, or --input FILE")),
    };
    let max_len = check_max_len(a.max_len.or(m.max_len).unwrap_or(128), &m)?;
    let enc = encode(&ds, m.text_encoder()?, max_len, m.truncate.unwrap_or(Truncate::Longest), true)?;
    let r = evaluate(&m, &enc, a.batch_size, &a.engine.engine())?;
    let k = m.cfg.num_labels;
    let json = a.json || a.input.is_some();
    for (i, ex) in ds.examples.iter().enumerate() {
        let logits = &r.logits[i * k..(i + 1) * k];
        let probs = softmax(logits);
        let pred = argmax(logits);
        let label = LABELS.get(pred).copied().unwrap_or("?");
        if json {
            let v = serde_json::json!({
                "premise": ex.premise, "hypothesis": ex.hypothesis,
                "label": label, "probs": probs, "logits": logits,
            });
            println!("{v}");
        } else {
            println!(
                "{label} (entailment {:.3}, contradiction {:.3}, neutral {:.3})",
                probs[0], probs[1], probs[2]
            );
        }
    }
    Ok(())
}
