//! `nli-bert eval`: a model on a labelled file; and [`evaluate`], the forward passes behind
//! `eval`, `predict` and the demo.

use super::engine::{Engine, OnBackend};
use super::{check_max_len, encode, EngineArgs};
use crate::backend::Backend;
use crate::data::batch::{Encoded, Truncate};
use crate::data::snli::{read_dataset, LABELS};
use crate::error::Result;
use crate::model::bert::{cast_params, Acts, Model};
use crate::model::store::{load_model, LoadedModel};
use crate::train::report;
use crate::train::trainer::{self, EvalResult};
use clap::Args;
use std::path::PathBuf;

/// `nli-bert eval`.
#[derive(Args)]
pub struct EvalCmd {
    /// A directory saved by `finetune --out` (or d2l weights, a Hugging Face BERT, hf:ORG/NAME).
    #[arg(long)]
    pub model: String,
    /// Labelled file (SNLI .txt, .jsonl or TSV).
    #[arg(long)]
    pub data: PathBuf,
    /// Print one JSON object instead of a table.
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

/// Runs `nli-bert eval`: accuracy, loss, confusion matrix and per-class P/R/F1.
pub fn run(a: EvalCmd) -> Result<()> {
    let m = load_model(&a.model, None, false, 0)?;
    let ds = read_dataset(&a.data)?;
    let max_len = check_max_len(a.max_len.or(m.max_len).unwrap_or(128.min(m.cfg.max_positions)), &m)?;
    let enc = encode(&ds, m.text_encoder()?, max_len, m.truncate.unwrap_or(Truncate::Longest), a.json)?;
    let r = evaluate(&m, &enc, a.batch_size, &a.engine.engine())?;
    if a.json {
        let per: Vec<serde_json::Value> = report::per_class(&r.confusion)
            .iter()
            .zip(LABELS)
            .map(|(&(p, rc, f), l)| serde_json::json!({"label": l, "precision": p, "recall": rc, "f1": f}))
            .collect();
        let v = serde_json::json!({
            "data": a.data.display().to_string(),
            "n": r.n,
            "accuracy": r.accuracy(),
            "loss": r.mean_loss(),
            "labels": LABELS,
            "confusion": r.confusion,
            "per_class": per,
        });
        println!("{v}");
    } else {
        println!("{} examples: accuracy {:.4}, loss {:.4}", r.n, r.accuracy(), r.mean_loss());
        println!("confusion (rows gold, columns predicted):");
        println!("{:>15} {:>13} {:>13} {:>13}", "", LABELS[0], LABELS[1], LABELS[2]);
        for (i, row) in r.confusion.iter().enumerate() {
            println!("{:>15} {:>13} {:>13} {:>13}", LABELS[i], row[0], row[1], row[2]);
        }
        println!();
        println!("{:>15} {:>10} {:>10} {:>10}", "", "precision", "recall", "f1");
        for (i, (p, rc, f)) in report::per_class(&r.confusion).iter().enumerate() {
            println!("{:>15} {:>10.4} {:>10.4} {:>10.4}", LABELS[i], p, rc, f);
        }
    }
    Ok(())
}

/// Evaluates a loaded model on encoded data on `engine`.
pub fn evaluate(m: &LoadedModel, data: &[Encoded], batch_size: usize, engine: &Engine) -> Result<EvalResult> {
    engine.run(Evaluate { m, data, batch_size })
}

struct Evaluate<'a> {
    m: &'a LoadedModel,
    data: &'a [Encoded],
    batch_size: usize,
}

impl OnBackend for Evaluate<'_> {
    type Out = EvalResult;
    /// [`evaluate`] on a given backend.
    fn run<B: Backend>(self, be: &B) -> Result<EvalResult> {
        let model = Model::from_host(be, self.m.cfg.clone(), &cast_params::<B::F>(&self.m.params))?;
        let mut acts = Acts::new(be, &model.cfg)?;
        trainer::evaluate(be, &model, &mut acts, self.data, self.batch_size)
    }
}
