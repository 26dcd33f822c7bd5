//! `nli-bert predict`: labels, probabilities and logits for one pair or for every pair of a file or
//! standard input, labelled or not (`crate::data::pairs`), in input order; JSON lines, TSV or CSV,
//! on stdout or into a file.

use super::eval::evaluate;
use super::{check_max_len, encode, pairs_dataset, softmax, EngineArgs};
use crate::data::batch::Truncate;
use crate::data::pairs::{read_pairs, Pair};
use crate::data::snli::LABELS;
use crate::error::{Error, Result};
use crate::model::bert::argmax;
use crate::model::store::load_model;
use crate::train::report::write_atomic;
use clap::Args;
use std::path::PathBuf;

/// How `predict` writes its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per pair: premise, hypothesis, label, probs, logits (and gold_label when
    /// the input has one).
    Jsonl,
    /// A header, then premise, hypothesis, label and the three probabilities, tab-separated (tabs
    /// and line breaks inside the text become spaces).
    Tsv,
    /// The same columns as comma-separated values (RFC 4180 quoting), for spreadsheets.
    Csv,
}

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
    /// Pairs to label, `-` for standard input: a TSV whose header names the premise and
    /// hypothesis columns (a label column is optional and ignored), SNLI's .txt or .jsonl, or
    /// JSON lines with premise/hypothesis (or sentence1/sentence2). Every pair gets a row, in
    /// input order; `eval` is the command for accuracy on labelled pairs.
    #[arg(long, value_name = "FILE|-")]
    pub input: Option<PathBuf>,
    /// Output format (default: jsonl for --input, a readable line for one pair).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// JSON lines output (the same as --format jsonl).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Write the rows to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Maximum tokens per pair (default: the model's).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Runs `nli-bert predict`: one row per pair, in input order.
pub fn run(a: PredictCmd) -> Result<()> {
    let pairs = match (&a.premise, &a.hypothesis, &a.input) {
        (Some(p), Some(h), None) => vec![Pair { premise: p.clone(), hypothesis: h.clone(), gold: None }],
        (None, None, Some(f)) => read_pairs(f)?,
        _ => {
            return Err(Error::usage(
                "give either --premise P --hypothesis H, or --input FILE (- for standard input)",
            ))
        }
    };
    let m = load_model(&a.model, None, false, 0)?;
    let source = a.input.as_ref().map_or("command line".to_string(), |p| p.display().to_string());
    let ds =
        pairs_dataset(pairs.iter().map(|p| (p.premise.clone(), p.hypothesis.clone())).collect(), &source);
    let max_len = check_max_len(a.max_len.or(m.max_len).unwrap_or(128.min(m.cfg.max_positions)), &m)?;
    let enc = encode(&ds, m.text_encoder()?, max_len, m.truncate.unwrap_or(Truncate::Longest), true)?;
    let r = evaluate(&m, &enc, a.batch_size, &a.engine.engine())?;
    let k = m.cfg.num_labels;
    let format = if a.json { Some(Format::Jsonl) } else { a.format };
    let format = format.or(a.input.as_ref().map(|_| Format::Jsonl));
    let mut out = String::new();
    match format {
        Some(Format::Tsv) => out.push_str("premise\thypothesis\tlabel\tentailment\tcontradiction\tneutral\n"),
        Some(Format::Csv) => out.push_str("premise,hypothesis,label,entailment,contradiction,neutral\n"),
        _ => {}
    }
    for (i, (pair, ex)) in pairs.iter().zip(&ds.examples).enumerate() {
        let logits = &r.logits[i * k..(i + 1) * k];
        let probs = softmax(logits);
        let label = LABELS.get(argmax(logits)).copied().unwrap_or("?");
        let line = match format {
            Some(Format::Jsonl) => {
                let mut v = serde_json::json!({
                    "premise": ex.premise, "hypothesis": ex.hypothesis,
                    "label": label, "probs": probs, "logits": logits,
                });
                if let Some(g) = &pair.gold {
                    v["gold_label"] = serde_json::Value::from(g.as_str());
                }
                v.to_string()
            }
            Some(Format::Tsv) => {
                let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
                let p: Vec<String> = probs.iter().map(|x| format!("{x:.6}")).collect();
                format!("{}\t{}\t{label}\t{}", clean(&ex.premise), clean(&ex.hypothesis), p.join("\t"))
            }
            Some(Format::Csv) => {
                let p: Vec<String> = probs.iter().map(|x| format!("{x:.6}")).collect();
                format!("{},{},{label},{}", csv_field(&ex.premise), csv_field(&ex.hypothesis), p.join(","))
            }
            None => format!(
                "{label} (entailment {:.3}, contradiction {:.3}, neutral {:.3})",
                probs[0], probs[1], probs[2]
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    match &a.output {
        Some(path) => {
            write_atomic(path, out.as_bytes())?;
            eprintln!("wrote {} predictions to {}", pairs.len(), path.display());
        }
        None => print!("{out}"),
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (quotes doubled).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("a man runs"), "a man runs");
        assert_eq!(csv_field("yes, he \"runs\""), "\"yes, he \"\"runs\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
