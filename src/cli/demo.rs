//! `nli-bert demo`: a small NLI set generated here (`crate::data::synth::demo`), a small BERT
//! trained on it from scratch, held-out accuracy and three predictions from the saved model.

use super::engine::Engine;
use super::eval::evaluate;
use super::finetune::{finetune, FinetuneArgs};
use super::{encode, pairs_dataset, softmax};
use crate::data::batch::Truncate;
use crate::data::snli::LABELS;
use crate::data::synth::demo::demo_datasets;
use crate::error::Result;
use crate::model::bert::argmax;
use crate::model::store::{load_model, scratch_model, ScratchArgs};
use crate::train::optim::AdamConfig;
use crate::train::trainer::TrainOptions;
use clap::Args;
use std::path::PathBuf;

/// `nli-bert demo`.
#[derive(Args)]
pub struct DemoCmd {
    /// Training pairs to generate.
    #[arg(long, default_value_t = 20000)]
    pub train_size: usize,
    /// Held-out pairs to generate.
    #[arg(long, default_value_t = 2000)]
    pub test_size: usize,
    /// Passes over the generated training pairs.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Seed of the generator, the weights, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the trained model, metrics and curves.svg here (default: $TMPDIR/nli-bert-demo).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs `nli-bert demo`: generate, train from scratch, evaluate, predict three pairs.
pub fn run(a: DemoCmd) -> Result<()> {
    let (train_ds, test_ds) = demo_datasets(a.seed, a.train_size, a.test_size);
    println!(
        "demo: {} generated training pairs, {} held-out pairs (hypernyms, negation, quantifiers, swaps, added details)",
        train_ds.examples.len(),
        test_ds.examples.len()
    );
    let s = ScratchArgs { hidden: 64, ffn: 128, heads: 4, layers: 2, min_freq: 1 };
    let max_len = 48;
    let m = scratch_model(&train_ds, &s, max_len, a.seed)?;
    let train = encode(&train_ds, &m.vocab, max_len, Truncate::Longest, false)?;
    let test = encode(&test_ds, &m.vocab, max_len, Truncate::Longest, false)?;
    let out = a.out.clone().unwrap_or_else(|| std::env::temp_dir().join("nli-bert-demo"));
    let args = FinetuneArgs {
        train: TrainOptions {
            epochs: a.epochs,
            batch_size: 32,
            dropout: 0.1,
            seed: a.seed,
            max_steps: None,
            shuffle: true,
            save_every: None,
            graphs: Default::default(),
        },
        adam: AdamConfig::adam(1e-3),
        max_len,
        truncate: Truncate::Longest,
        engine: Engine::cpu(a.threads),
        out: Some(out.clone()),
        quiet: false,
        run: None,
    };
    let cfg = m.cfg.clone();
    let res = finetune(m, &train, Some(&test), &args, None)?;
    let acc = res.history.last().and_then(|h| h.test_acc).unwrap_or(0.0);
    println!("held-out accuracy {acc:.3}");
    // A few predictions from the saved model, as a user would run them.
    let saved = load_model(&out.to_string_lossy(), None, false, 0)?;
    debug_assert_eq!(saved.cfg, cfg);
    let samples = [
        ("a man is playing a guitar", "a person is playing an instrument"),
        ("a woman is riding a horse", "a woman is not riding a horse"),
        ("a man is cooking", "a man is cooking soup for the family"),
    ];
    let ds =
        pairs_dataset(samples.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect(), "demo samples");
    let enc = encode(&ds, &saved.vocab, max_len, Truncate::Longest, true)?;
    let r = evaluate(&saved, &enc, 8, &Engine::cpu(a.threads))?;
    for (i, (p, h)) in samples.iter().enumerate() {
        let row = &r.logits[i * 3..i * 3 + 3];
        let probs = softmax(row);
        let pred = argmax(row);
        println!("  {p:?} => {h:?}: {} ({:.2})", LABELS[pred], probs[pred]);
    }
    println!("training curves: {}", out.join("curves.svg").display());
    println!(
        "model saved in {}; try it (after `cargo install --path .`, or with `cargo run --release --`):",
        out.display()
    );
    println!(
        "  nli-bert predict --model {} --premise \"a woman is riding a horse\" --hypothesis \"a person is riding an animal\"",
        out.display()
    );
    Ok(())
}
