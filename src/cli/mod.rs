//! The commands: one file per command (`finetune`, `eval`, `predict`, `bench`, `demo`,
//! `download`), each with its arguments (clap) and a `run`; [`engine`] turns `--device`,
//! `--precision` and `--threads` into a backend once; [`progress`] is what a user sees while
//! training. `main.rs` only parses the command line and calls `run`.

pub mod bench;
pub mod demo;
pub mod download;
pub mod engine;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod predict;
pub mod progress;

use crate::data::batch::{encode_dataset_with, Encoded, TextEncoder, Truncate};
use crate::data::hub;
use crate::data::snli::{self, Dataset, Example};
use crate::error::{Error, Result};
use crate::model::config::Precision;
use crate::model::store::LoadedModel;
use clap::Args;
use engine::{AttentionSel, DeviceSel, Engine};
use std::path::Path;

/// `--device`, `--precision`, `--threads`: where and how a command computes.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Where to compute: auto (a CUDA GPU if usable, else the CPU), cpu, cuda, cuda:N, or emu (our
    /// CUDA kernels on the CPU emulator: slow, for checking).
    #[arg(long, default_value = "auto")]
    pub device: DeviceSel,
    /// Numeric precision: f64 (the reference, CPU), f32 (the fast trainer), bf16 (GPU matrix products).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Attention kernels on a GPU: auto (flash with bf16, the f32 kernels with f32), flash (bf16
    /// tensor cores, head size up to 64; wider heads keep the f32 kernels) or classic (f32).
    #[arg(long, value_enum, default_value = "auto")]
    pub attention: AttentionSel,
    /// Training steps as recorded graphs (CUDA graphs: one per packed length, replayed with each
    /// new batch): auto (where supported: a GPU with flash attention), on, or off (every op
    /// launched on its own).
    #[arg(long, value_enum, default_value = "auto")]
    pub graphs: crate::train::step::GraphsSel,
}

impl EngineArgs {
    /// The engine these flags select.
    pub fn engine(&self) -> Engine {
        Engine {
            device: self.device,
            precision: self.precision,
            threads: self.threads,
            attention: self.attention,
        }
    }
}

/// Reads `--data`: `snli` (downloads SNLI; returns train and test) or a file.
pub fn read_data(spec: &str) -> Result<(Dataset, Option<Dataset>)> {
    if spec == "snli" {
        let dir = hub::download_extract("SNLI")?;
        return Ok((snli::read_snli_dir(&dir, true)?, Some(snli::read_snli_dir(&dir, false)?)));
    }
    Ok((snli::read_dataset(Path::new(spec))?, None))
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

/// `--max-len` must fit the model's positional table (and leave room for text).
pub fn check_max_len(max_len: usize, m: &LoadedModel) -> Result<usize> {
    if max_len > m.cfg.max_positions {
        return Err(Error::usage(format!(
            "--max-len {max_len} exceeds the model's {} positions; use --max-len {} or less",
            m.cfg.max_positions, m.cfg.max_positions
        )));
    }
    Ok(max_len)
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
