//! `nli-bert`: fine-tune, evaluate and run BERT for natural-language inference.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error.

use clap::{Args, Parser, Subcommand};
use nli_bert::app::{self, DeviceSel, Engine, FinetuneArgs, LoadedModel, Precision, ScratchArgs};
use nli_bert::data::batch::Truncate;
use nli_bert::data::hub;
use nli_bert::data::snli::{read_dataset, LABELS};
use nli_bert::train::optim::AdamConfig;
use nli_bert::train::trainer::TrainOptions;
use nli_bert::{Error, Result};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "nli-bert",
    version,
    about = "Fine-tune BERT for natural-language inference (d2l's chapter, exactly, then faster)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fine-tune a pretrained (or fresh) BERT on an NLI dataset, as d2l's chapter does.
    ///
    /// Defaults are the seed's: bert.small, SNLI, 5 epochs, batch 512, Adam lr 1e-4, max_len 128,
    /// dropout 0.2. Example:
    ///   nli-bert finetune --model scratch --data ../shared/data/sick_train.tsv --test-data ../shared/data/sick_test.tsv
    Finetune(FinetuneCmd),
    /// Accuracy, loss and confusion matrix of a saved model on a labelled file.
    ///
    /// Example: nli-bert eval --model out/ --data ../shared/data/sick_test.tsv --json
    Eval(EvalCmd),
    /// Predict labels for one pair or a file of pairs (one JSON object per pair).
    ///
    /// Example: nli-bert predict --model out/ --premise "a man plays a guitar" --hypothesis "a person plays music"
    Predict(PredictCmd),
    /// Download and unpack a catalog entry (bert.small, bert.base, SNLI) into the cache.
    Download {
        /// Catalog name.
        name: String,
    },
    /// Generate a small NLI set, train a small BERT from scratch on it, evaluate on held-out pairs.
    Demo(DemoCmd),
    /// Time training steps of a model shape (random weights) and, with --data, the data pipeline.
    ///
    /// Prints ms/step, examples/s, tokens/s, TFLOP/s (PERF.md's 6·N_mm·T + 12·C·L·T² per example),
    /// an estimate of GB/s and, on a CUDA device, the fraction of the H100 ceilings. Example:
    ///   nli-bert bench --shape bert.small --batch-size 512 --steps 20 --device cuda
    Bench(BenchCmd),
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Where to compute: auto (a CUDA GPU if usable, else the CPU), cpu, cuda, cuda:N, or emu (our
    /// CUDA kernels on the CPU emulator: slow, for checking).
    #[arg(long, default_value = "auto")]
    device: DeviceSel,
    /// Numeric precision: f64 (the reference, CPU), f32 (the fast trainer), bf16 (GPU matrix products).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct FinetuneCmd {
    /// bert.small | bert.base | scratch | hf:ORG/NAME (Hugging Face hub) | DIR (d2l's vocab.json +
    /// pretrained.params, a Hugging Face BERT directory, or a saved model).
    #[arg(long, default_value = "bert.small")]
    model: String,
    /// snli (download SNLI) or a file: SNLI .txt, .jsonl, or TSV label<TAB>premise<TAB>hypothesis.
    #[arg(long, default_value = "snli")]
    data: String,
    /// Test set evaluated after each epoch (default: SNLI test with --data snli, else none).
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Passes over the training data.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Pairs per optimizer step.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Use AdamW with this weight decay instead of Adam.
    #[arg(long)]
    adamw: Option<f64>,
    /// Maximum tokens per pair, including <cls> and two <sep>.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Dropout on attention probabilities and sub-layer outputs (d2l's PyTorch loader: 0.2).
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    /// Seed of the shuffling, the dropout masks and fresh weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Keep the training data in file order.
    #[arg(long)]
    no_shuffle: bool,
    /// Pair truncation: d2l's (drop from the longer) or by length ratio (exercise 2).
    #[arg(long, value_enum, default_value = "longest")]
    truncate: Truncate,
    /// Train the positional embedding (d2l 0.17 freezes it; later d2l trains it).
    #[arg(long)]
    train_pos_embedding: bool,
    /// Write model.safetensors, config.json, vocab.json, metrics.jsonl, curves.svg and
    /// checkpoint/ (at each epoch end) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also checkpoint every N steps (needs --out).
    #[arg(long, requires = "out")]
    save_every: Option<u64>,
    /// Continue the run saved in DIR (its --out directory): model, optimizer, data position and
    /// settings all come from DIR/checkpoint; only --max-steps, --threads and --quiet apply.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["model", "data", "out"])]
    resume: Option<PathBuf>,
    /// Attention heads of d2l weights (not stored in them; default hidden/64).
    #[arg(long)]
    heads: Option<usize>,
    /// scratch: hidden size.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// scratch: FFN size.
    #[arg(long, default_value_t = 512)]
    ffn: usize,
    /// scratch: encoder blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// scratch: minimum token count for the vocabulary.
    #[arg(long, default_value_t = 1)]
    min_freq: usize,
    /// Only print the results.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct EvalCmd {
    /// A directory saved by `finetune --out` (or d2l weights, a Hugging Face BERT, hf:ORG/NAME).
    #[arg(long)]
    model: String,
    /// Labelled file (SNLI .txt, .jsonl or TSV).
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Maximum tokens per pair (default: the model's).
    #[arg(long)]
    max_len: Option<usize>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct PredictCmd {
    /// A directory saved by `finetune --out` (or d2l weights, a Hugging Face BERT, hf:ORG/NAME).
    #[arg(long)]
    model: String,
    /// The premise of one pair (with --hypothesis).
    #[arg(long, requires = "hypothesis", conflicts_with = "input")]
    premise: Option<String>,
    /// The hypothesis of one pair (with --premise).
    #[arg(long, requires = "premise")]
    hypothesis: Option<String>,
    /// A file of pairs (TSV with header, SNLI .txt or .jsonl; labels are ignored).
    #[arg(long)]
    input: Option<PathBuf>,
    /// JSON lines output (the default for --input).
    #[arg(long)]
    json: bool,
    /// Maximum tokens per pair (default: the model's).
    #[arg(long)]
    max_len: Option<usize>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct DemoCmd {
    /// Training pairs to generate.
    #[arg(long, default_value_t = 20000)]
    train_size: usize,
    /// Held-out pairs to generate.
    #[arg(long, default_value_t = 2000)]
    test_size: usize,
    /// Passes over the generated training pairs.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Seed of the generator, the weights, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the trained model, metrics and curves.svg here (default: $TMPDIR/nli-bert-demo).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct BenchCmd {
    /// Model shape, with random weights.
    #[arg(long, value_enum, default_value = "bert.small")]
    shape: nli_bert::bench::Shape,
    /// Pairs per training step.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// Timed steps (0 with --data: time the data pipeline only).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Dropout of the training step.
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    /// Seed of the weights, the random pairs and the dropout masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A dataset (SNLI .txt, .jsonl, TSV): time reading, tokenising and packing it, and train on
    /// its pairs instead of random ones.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: also time WordPiece with this vocab.txt.
    #[arg(long, requires = "data")]
    wordpiece: Option<PathBuf>,
    /// With --data: runs of the data pipeline (the median is printed).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// With --data: maximum tokens per pair.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

fn main() {
    let cli = Cli::parse();
    // Ctrl-C: the trainer stops after the current step and saves a checkpoint (with --out);
    // a second Ctrl-C exits at once.
    let _ = ctrlc::set_handler(|| {
        if nli_bert::train::trainer::INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after this step (Ctrl-C again to quit now)");
    });
    let res = match cli.cmd {
        Cmd::Finetune(a) => finetune(a),
        Cmd::Eval(a) => eval(a),
        Cmd::Predict(a) => predict(a),
        Cmd::Download { name } => hub::download_extract(&name).map(|p| println!("{}", p.display())),
        Cmd::Demo(a) => demo(a),
        Cmd::Bench(a) => bench(a),
    };
    if let Err(e) = res {
        match &e {
            Error::Interrupted(m) => eprintln!(
                "{m}; a checkpoint was saved if --out was given: continue with `nli-bert finetune --resume DIR`"
            ),
            _ => eprintln!("error: {e}"),
        }
        std::process::exit(e.exit_code());
    }
}

impl EngineArgs {
    fn engine(&self) -> Engine {
        Engine { device: self.device, precision: self.precision, threads: self.threads }
    }
}

/// The settings a checkpoint records, so `--resume` continues the same run.
fn run_settings(a: &FinetuneCmd) -> serde_json::Value {
    serde_json::json!({
        "data": a.data, "test_data": a.test_data, "epochs": a.epochs, "batch_size": a.batch_size,
        "lr": a.lr, "adamw": a.adamw, "max_len": a.max_len, "dropout": a.dropout, "seed": a.seed,
        "no_shuffle": a.no_shuffle, "truncate": a.truncate == Truncate::Ratio,
        "precision": a.engine.precision == Precision::F64, "save_every": a.save_every,
        "bf16": a.engine.precision == Precision::Bf16,
    })
}

fn apply_run_settings(a: &mut FinetuneCmd, r: &serde_json::Value, dir: &std::path::Path) -> Result<()> {
    let bad =
        |k: &str| Error::msg(format!("{}: checkpoint setting {k:?} is missing or invalid", dir.display()));
    let u = |k: &str| r[k].as_u64().ok_or_else(|| bad(k));
    let f = |k: &str| r[k].as_f64().ok_or_else(|| bad(k));
    let b = |k: &str| r[k].as_bool().ok_or_else(|| bad(k));
    a.data = r["data"].as_str().ok_or_else(|| bad("data"))?.to_string();
    a.test_data = r["test_data"].as_str().map(PathBuf::from);
    a.epochs = u("epochs")? as usize;
    a.batch_size = u("batch_size")? as usize;
    a.lr = f("lr")?;
    a.adamw = r["adamw"].as_f64();
    a.max_len = u("max_len")? as usize;
    a.dropout = f("dropout")?;
    a.seed = u("seed")?;
    a.no_shuffle = b("no_shuffle")?;
    a.truncate = if b("truncate")? { Truncate::Ratio } else { Truncate::Longest };
    a.engine.precision = if b("precision")? {
        Precision::F64
    } else if r["bf16"].as_bool() == Some(true) {
        Precision::Bf16
    } else {
        Precision::F32
    };
    a.save_every = r["save_every"].as_u64();
    Ok(())
}

fn finetune(mut a: FinetuneCmd) -> Result<()> {
    let mut resume = None;
    let mut resumed_model = None;
    if let Some(dir) = a.resume.clone() {
        let (m, r) = app::load_checkpoint(&dir)?;
        apply_run_settings(&mut a, &r.run, &dir)?;
        let out = if dir.join("state.json").is_file() {
            dir.parent().map(PathBuf::from)
        } else {
            Some(dir.clone())
        };
        a.out = out;
        if !a.quiet {
            eprintln!(
                "resuming {} at epoch {}, batch {} (step {})",
                dir.display(),
                r.state.epoch + 1,
                r.state.batch,
                r.state.step
            );
        }
        resumed_model = Some(m);
        resume = Some(r);
    }
    if a.max_len < 5 {
        return Err(Error::usage(format!(
            "--max-len {} is too small: it must leave room for <cls>, two <sep> and text (>= 5)",
            a.max_len
        )));
    }
    if !(0.0..1.0).contains(&a.dropout) {
        return Err(Error::usage(format!("--dropout {} must be in [0, 1)", a.dropout)));
    }
    let (train_ds, snli_test) = app::read_data(&a.data)?;
    let test_ds = match &a.test_data {
        Some(p) => Some(read_dataset(p)?),
        None => snli_test,
    };
    let m: LoadedModel = if let Some(m) = resumed_model {
        m
    } else if a.model == "scratch" {
        let s = ScratchArgs {
            hidden: a.hidden,
            ffn: a.ffn,
            heads: a.heads.unwrap_or(4),
            layers: a.layers,
            min_freq: a.min_freq,
        };
        app::scratch_model(&train_ds, &s, a.max_len, a.seed)?
    } else {
        app::load_model(&a.model, a.heads, a.train_pos_embedding, a.seed)?
    };
    check_max_len(a.max_len, &m)?;
    if !a.quiet {
        eprintln!(
            "model {}: {} blocks, hidden {}, ffn {}, {} heads, vocab {}",
            m.origin, m.cfg.layers, m.cfg.hidden, m.cfg.ffn, m.cfg.heads, m.cfg.vocab_size
        );
    }
    let train = app::encode(&train_ds, m.text_encoder()?, a.max_len, a.truncate, a.quiet)?;
    let test = match &test_ds {
        Some(t) => Some(app::encode(t, m.text_encoder()?, a.max_len, a.truncate, a.quiet)?),
        None => None,
    };
    let args = FinetuneArgs {
        train: TrainOptions {
            epochs: a.epochs,
            batch_size: a.batch_size,
            dropout: a.dropout,
            seed: a.seed,
            max_steps: a.max_steps,
            shuffle: !a.no_shuffle,
            save_every: a.save_every,
        },
        adam: match a.adamw {
            Some(wd) => AdamConfig::adamw(a.lr, wd),
            None => AdamConfig::adam(a.lr),
        },
        max_len: a.max_len,
        truncate: a.truncate,
        engine: a.engine.engine(),
        out: a.out.clone(),
        quiet: a.quiet,
        run: run_settings(&a),
    };
    app::finetune(m, &train, test.as_deref(), &args, resume).map(|_| ())
}

/// `--max-len` must fit the model's positional table (and leave room for text).
fn check_max_len(max_len: usize, m: &LoadedModel) -> Result<usize> {
    if max_len > m.cfg.max_positions {
        return Err(Error::usage(format!(
            "--max-len {max_len} exceeds the model's {} positions; use --max-len {} or less",
            m.cfg.max_positions, m.cfg.max_positions
        )));
    }
    Ok(max_len)
}

fn run_eval(
    m: &LoadedModel,
    data: &[nli_bert::data::batch::Encoded],
    bs: usize,
    e: &EngineArgs,
) -> Result<nli_bert::train::trainer::EvalResult> {
    app::evaluate(m, data, bs, &e.engine())
}

fn eval(a: EvalCmd) -> Result<()> {
    let m = app::load_model(&a.model, None, false, 0)?;
    let ds = read_dataset(&a.data)?;
    let max_len = check_max_len(a.max_len.or(m.max_len).unwrap_or(128), &m)?;
    let enc = app::encode(&ds, m.text_encoder()?, max_len, m.truncate.unwrap_or(Truncate::Longest), a.json)?;
    let r = run_eval(&m, &enc, a.batch_size, &a.engine)?;
    if a.json {
        let per: Vec<serde_json::Value> = nli_bert::train::report::per_class(&r.confusion)
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
        for (i, (p, rc, f)) in nli_bert::train::report::per_class(&r.confusion).iter().enumerate() {
            println!("{:>15} {:>10.4} {:>10.4} {:>10.4}", LABELS[i], p, rc, f);
        }
    }
    Ok(())
}

fn predict(a: PredictCmd) -> Result<()> {
    let m = app::load_model(&a.model, None, false, 0)?;
    let ds = match (&a.premise, &a.hypothesis, &a.input) {
        (Some(p), Some(h), None) => app::pairs_dataset(vec![(p.clone(), h.clone())], "command line"),
        (None, None, Some(f)) => read_dataset(f)?,
        _ => return Err(Error::usage("give either --premise P --hypothesis H, or --input FILE")),
    };
    let max_len = check_max_len(a.max_len.or(m.max_len).unwrap_or(128), &m)?;
    let enc = app::encode(&ds, m.text_encoder()?, max_len, m.truncate.unwrap_or(Truncate::Longest), true)?;
    let r = run_eval(&m, &enc, a.batch_size, &a.engine)?;
    let k = m.cfg.num_labels;
    let json = a.json || a.input.is_some();
    for (i, ex) in ds.examples.iter().enumerate() {
        let logits = &r.logits[i * k..(i + 1) * k];
        let probs = app::softmax(logits);
        let pred = nli_bert::model::bert::argmax(logits);
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

fn demo(a: DemoCmd) -> Result<()> {
    let (train_ds, test_ds) = nli_bert::demo::demo_datasets(a.seed, a.train_size, a.test_size);
    println!(
        "demo: {} generated training pairs, {} held-out pairs (hypernyms, negation, quantifiers, swaps, added details)",
        train_ds.examples.len(),
        test_ds.examples.len()
    );
    let s = ScratchArgs { hidden: 64, ffn: 128, heads: 4, layers: 2, min_freq: 1 };
    let max_len = 48;
    let m = app::scratch_model(&train_ds, &s, max_len, a.seed)?;
    let train = app::encode(&train_ds, &m.vocab, max_len, Truncate::Longest, false)?;
    let test = app::encode(&test_ds, &m.vocab, max_len, Truncate::Longest, false)?;
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
        },
        adam: AdamConfig::adam(1e-3),
        max_len,
        truncate: Truncate::Longest,
        engine: Engine::cpu(a.threads),
        out: Some(out.clone()),
        quiet: false,
        run: serde_json::Value::Null,
    };
    let vocab = m.vocab.clone();
    let cfg = m.cfg.clone();
    let res = app::finetune(m, &train, Some(&test), &args, None)?;
    let acc = res.history.last().and_then(|h| h.test_acc).unwrap_or(0.0);
    println!("held-out accuracy {acc:.3}");
    // A few predictions from the saved model, as a user would run them.
    let saved = app::load_model(&out.to_string_lossy(), None, false, 0)?;
    debug_assert_eq!(saved.cfg, cfg);
    let _ = vocab;
    let samples = [
        ("a man is playing a guitar", "a person is playing an instrument"),
        ("a woman is riding a horse", "a woman is not riding a horse"),
        ("a man is cooking", "a man is cooking soup for the family"),
    ];
    let ds = app::pairs_dataset(
        samples.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect(),
        "demo samples",
    );
    let enc = app::encode(&ds, &saved.vocab, max_len, Truncate::Longest, true)?;
    let r = app::evaluate(&saved, &enc, 8, &Engine::cpu(a.threads))?;
    for (i, (p, h)) in samples.iter().enumerate() {
        let row = &r.logits[i * 3..i * 3 + 3];
        let probs = app::softmax(row);
        let pred = nli_bert::model::bert::argmax(row);
        println!("  {p:?} => {h:?}: {} ({:.2})", LABELS[pred], probs[pred]);
    }
    println!("training curves: {}", out.join("curves.svg").display());
    println!(
        "model saved in {} (try: nli-bert predict --model {} --premise ... --hypothesis ...)",
        out.display(),
        out.display()
    );
    Ok(())
}

fn bench(a: BenchCmd) -> Result<()> {
    nli_bert::bench::run(&nli_bert::bench::BenchArgs {
        shape: a.shape,
        batch_size: a.batch_size,
        steps: a.steps,
        warmup: a.warmup,
        dropout: a.dropout,
        seed: a.seed,
        max_len: a.max_len,
        data: a.data,
        wordpiece: a.wordpiece,
        repeat: a.repeat,
        engine: a.engine.engine(),
        json: a.json,
    })
}
