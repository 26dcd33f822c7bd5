//! `nli-bert finetune`: d2l's fine-tuning run (load or resume, read and encode, train with
//! progress, epoch lines, metrics, curves and checkpoints, save).

use super::engine::{Engine, OnRanks};
use super::progress::RunHooks;
use super::{check_max_len, encode, read_data, EngineArgs};
use crate::backend::Backend;
use crate::data::batch::{Encoded, Truncate};
use crate::data::snli::read_dataset;
use crate::error::{Error, Result};
use crate::model::bert::{cast_params, Model};
use crate::model::store::{load_model, save_model, scratch_model, LoadedModel, ScratchArgs};
use crate::train::checkpoint::{load_checkpoint, remove_stale_temporaries, Resume, RunSettings};
use crate::train::optim::{Adam, AdamConfig};
use crate::train::parallel::{AnyComm, Communicator};
use crate::train::report;
use crate::train::trainer::{self, EpochMetrics, TrainOptions, TrainState};
use clap::Args;
use std::path::{Path, PathBuf};

/// Epochs of a run when --epochs is not given (d2l's `num_epochs = 5`).
pub const DEFAULT_EPOCHS: usize = 5;

/// `nli-bert finetune`.
#[derive(Args)]
pub struct FinetuneCmd {
    /// bert.small | bert.base | scratch | hf:ORG/NAME (Hugging Face hub) | DIR (d2l's vocab.json +
    /// pretrained.params, a Hugging Face BERT directory, or a saved model).
    #[arg(long, default_value = "bert.small")]
    pub model: String,
    /// snli (download SNLI) or a file: SNLI .txt, .jsonl, or TSV label<TAB>premise<TAB>hypothesis.
    #[arg(long, default_value = "snli")]
    pub data: String,
    /// Test set evaluated after each epoch (default: SNLI test with --data snli, else none).
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// Passes over the training data [default: 5]. With --resume: continue the run to this many
    /// epochs (more than it has completed) instead of its own number.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Pairs per optimizer step.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true)]
    pub lr: f64,
    /// Use AdamW with this weight decay instead of Adam.
    #[arg(long, allow_negative_numbers = true)]
    pub adamw: Option<f64>,
    /// Maximum tokens per pair, including <cls> and two <sep>.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Dropout on attention probabilities and sub-layer outputs (d2l's PyTorch loader: 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f64,
    /// Seed of the shuffling, the dropout masks and fresh weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Keep the training data in file order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Pair truncation: d2l's (drop from the longer) or by length ratio (exercise 2).
    #[arg(long, value_enum, default_value = "longest")]
    pub truncate: Truncate,
    /// Train the positional embedding (d2l 0.17 freezes it; later d2l trains it).
    #[arg(long)]
    pub train_pos_embedding: bool,
    /// Write model.safetensors, config.json, vocab.json, metrics.jsonl, curves.svg and
    /// checkpoint/ (at each epoch end) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also checkpoint every N steps (needs --out).
    #[arg(long, requires = "out")]
    pub save_every: Option<u64>,
    /// Continue the run saved in DIR (its --out directory): model, optimizer, data position and
    /// settings all come from DIR/checkpoint; only --epochs (to continue to more epochs),
    /// --max-steps, --device, --threads and --quiet apply.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["model", "data", "out"])]
    pub resume: Option<PathBuf>,
    /// Attention heads of d2l weights (not stored in them: bert.small and bert.base shapes get 4 and
    /// 12; any other shape needs this flag).
    #[arg(long)]
    pub heads: Option<usize>,
    /// scratch: hidden size.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// scratch: FFN size.
    #[arg(long, default_value_t = 512)]
    pub ffn: usize,
    /// scratch: encoder blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// scratch: minimum token count for the vocabulary.
    #[arg(long, default_value_t = 1)]
    pub min_freq: usize,
    /// Only print the results.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Everything `finetune` needs besides the data.
#[derive(Clone, Debug)]
pub struct FinetuneArgs {
    /// Loop settings.
    pub train: TrainOptions,
    /// Optimizer.
    pub adam: AdamConfig,
    /// Token budget per pair.
    pub max_len: usize,
    /// Pair truncation.
    pub truncate: Truncate,
    /// Device, precision and CPU threads.
    pub engine: Engine,
    /// Output directory.
    pub out: Option<PathBuf>,
    /// Suppress informational stderr lines (progress included).
    pub quiet: bool,
    /// The run's settings, stored in checkpoints so `--resume` can continue with them (none for
    /// the demo).
    pub run: Option<RunSettings>,
}

/// The figures a finetune run ends with.
pub struct FinetuneResult {
    /// One entry per epoch.
    pub history: Vec<EpochMetrics>,
    /// Device name as printed.
    pub device: String,
}

impl FinetuneCmd {
    /// The settings a checkpoint records, so `--resume` continues the same run.
    fn run_settings(&self) -> RunSettings {
        RunSettings {
            data: self.data.clone(),
            test_data: self.test_data.clone(),
            epochs: self.epochs(),
            batch_size: self.batch_size,
            lr: self.lr,
            adamw: self.adamw,
            max_len: self.max_len,
            dropout: self.dropout,
            seed: self.seed,
            no_shuffle: self.no_shuffle,
            truncate: self.truncate,
            precision: self.engine.precision,
            save_every: self.save_every,
        }
    }

    /// The numeric flags a run cannot use, as usage errors (clap only checks their types).
    fn check_ranges(&self) -> Result<()> {
        let bad = |flag: &str, v: &dyn std::fmt::Display, want: &str| {
            Err(Error::usage(format!("{flag} {v}: {want}")))
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr", &self.lr, "the learning rate must be a positive number");
        }
        if let Some(wd) = self.adamw.filter(|wd| !(wd.is_finite() && *wd >= 0.0)) {
            return bad("--adamw", &wd, "the weight decay must be 0 or more");
        }
        if self.epochs == Some(0) {
            return bad("--epochs", &0, "at least one epoch (use --max-steps for a shorter run)");
        }
        if self.batch_size == 0 {
            return bad("--batch-size", &0, "at least one pair per step");
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps", &0, "at least one step");
        }
        if self.save_every == Some(0) {
            return bad("--save-every", &0, "at least one step between checkpoints");
        }
        Ok(())
    }

    /// The number of epochs to train (5 unless given).
    fn epochs(&self) -> usize {
        self.epochs.unwrap_or(DEFAULT_EPOCHS)
    }

    /// Takes the settings of the run being resumed (its epochs unless --epochs was given).
    fn apply_run_settings(&mut self, r: RunSettings) {
        self.data = r.data;
        self.test_data = r.test_data;
        self.epochs = Some(self.epochs.unwrap_or(r.epochs));
        self.batch_size = r.batch_size;
        self.lr = r.lr;
        self.adamw = r.adamw;
        self.max_len = r.max_len;
        self.dropout = r.dropout;
        self.seed = r.seed;
        self.no_shuffle = r.no_shuffle;
        self.truncate = r.truncate;
        self.engine.precision = r.precision;
        self.save_every = r.save_every;
    }
}

/// Runs `nli-bert finetune`: resumes or loads the model, reads and encodes the data, trains.
pub fn run(mut a: FinetuneCmd) -> Result<()> {
    let mut resume = None;
    let mut resumed_model = None;
    if let Some(dir) = a.resume.clone() {
        let (m, r) = load_checkpoint(&dir)?;
        let settings = r.run.clone().ok_or_else(|| {
            Error::usage(format!(
                "--resume {}: this checkpoint records no run settings (it was not written by `finetune`)",
                dir.display()
            ))
        })?;
        let own_epochs = settings.epochs;
        if let Some(e) = a.epochs.filter(|&e| e <= r.state.epoch) {
            return Err(Error::usage(format!(
                "--epochs {e}: the run in {} has already completed {} epoch(s); ask for more to continue it, \
                 or leave --epochs out to finish its own {own_epochs}",
                dir.display(),
                r.state.epoch
            )));
        }
        a.apply_run_settings(settings);
        if a.epochs() != own_epochs && !a.quiet {
            eprintln!("continuing the run to {} epochs (it was started for {own_epochs})", a.epochs());
        }
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
    a.check_ranges()?;
    if a.out.is_none() && !a.quiet {
        eprintln!("note: no --out: the fine-tuned model, metrics and checkpoints will not be saved");
    }
    let (train_ds, snli_test) = read_data(&a.data)?;
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
        scratch_model(&train_ds, &s, a.max_len, a.seed)?
    } else {
        load_model(&a.model, a.heads, a.train_pos_embedding, a.seed)?
    };
    check_max_len(a.max_len, &m)?;
    if !a.quiet {
        eprintln!(
            "model {}: {} blocks, hidden {}, ffn {}, {} heads, vocab {}",
            m.origin, m.cfg.layers, m.cfg.hidden, m.cfg.ffn, m.cfg.heads, m.cfg.vocab_size
        );
    }
    let train = encode(&train_ds, m.text_encoder()?, a.max_len, a.truncate, a.quiet)?;
    let test = match &test_ds {
        Some(t) => Some(encode(t, m.text_encoder()?, a.max_len, a.truncate, a.quiet)?),
        None => None,
    };
    let args = FinetuneArgs {
        train: TrainOptions {
            epochs: a.epochs(),
            batch_size: a.batch_size,
            dropout: a.dropout,
            seed: a.seed,
            max_steps: a.max_steps,
            shuffle: !a.no_shuffle,
            save_every: a.save_every,
            graphs: a.engine.graphs,
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
        run: Some(a.run_settings()),
    };
    let out = args.out.clone();
    finetune(m, &train, test.as_deref(), &args, resume).map(|_| ()).map_err(|e| match e {
        // Say where the checkpoint is, or that there is none.
        Error::Interrupted(msg) => Error::Interrupted(match out {
            Some(dir) => format!(
                "{msg}; the checkpoint is saved: continue with `nli-bert finetune --resume {}`",
                dir.display()
            ),
            None => format!("{msg}; nothing was saved (no --out)"),
        }),
        e => e,
    })
}

/// Fine-tunes `m` on `train` (evaluating on `test` after each epoch) on the engine of
/// `a.engine`, printing d2l's lines and progress, writing `metrics.jsonl`, `curves.svg`,
/// checkpoints and the model to `--out`.
pub fn finetune(
    m: LoadedModel,
    train: &[Encoded],
    test: Option<&[Encoded]>,
    a: &FinetuneArgs,
    resume: Option<Resume>,
) -> Result<FinetuneResult> {
    a.engine.run_ranks(&Finetune { m, train, test, a, resume })
}

struct Finetune<'a> {
    m: LoadedModel,
    train: &'a [Encoded],
    test: Option<&'a [Encoded]>,
    a: &'a FinetuneArgs,
    resume: Option<Resume>,
}

/// Hooks that do nothing: the ranks other than 0 of a data-parallel run (rank 0 prints and saves).
struct Silent;

impl<B: Backend> trainer::Hooks<B> for Silent {}

impl OnRanks for Finetune<'_> {
    type Out = FinetuneResult;

    fn fingerprint(&self) -> u64 {
        // What every process must share: the model (configuration and weights), the data and the
        // training settings. FNV-1a over their bytes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(serde_json::to_string(&self.m.cfg).unwrap_or_default().as_bytes());
        for x in &self.m.params {
            eat(&x.to_le_bytes());
        }
        for e in self.train.iter().chain(self.test.unwrap_or(&[])) {
            for t in &e.ids {
                eat(&t.to_le_bytes());
            }
            eat(&e.label.to_le_bytes());
        }
        let t = &self.a.train;
        eat(format!(
            "{} {} {} {} {:?} {} {:?} {:?} {}",
            t.epochs,
            t.batch_size,
            t.dropout,
            t.seed,
            t.max_steps,
            t.shuffle,
            t.save_every,
            self.a.adam,
            self.a.max_len
        )
        .as_bytes());
        eat(format!("{:?}", self.resume.as_ref().map(|r| (r.t, &r.state.step))).as_bytes());
        h
    }

    /// [`finetune`] as rank `rank` of `world` on a given backend.
    fn run_rank<B: Backend>(
        &self,
        be: &B,
        comm: Option<&AnyComm>,
        rank: usize,
        world: usize,
    ) -> Result<FinetuneResult> {
        let Finetune { m, train, test, a, resume } = self;
        let (train, test) = (*train, *test);
        let root = rank == 0;
        let comm: Option<&dyn Communicator<B>> = comm.map(|c| c as &dyn Communicator<B>);
        let mut device = if world > 1 { ranks_name(world, &be.name()) } else { be.name() };
        if comm.is_some() {
            if a.train.graphs == crate::train::step::GraphsSel::On {
                return Err(Error::usage(
                    "--graphs on: step graphs do not run data parallel yet; use --graphs auto or off with \
                     several devices",
                ));
            }
        } else if a.train.graphs.decide(be, m.cfg.heads, m.cfg.hidden)? {
            device.push_str(", step graphs");
        }
        let mut model = Model::from_host(be, m.cfg.clone(), &cast_params::<B::F>(&m.params))?;
        let mut opt = Adam::new(be, &model, a.adam)?;
        let mut start = TrainState::default();
        if let Some(r) = resume {
            opt.restore(be, &cast_params::<B::F>(&r.m), &cast_params::<B::F>(&r.v), r.t, r.rows.as_deref())?;
            start = r.state.clone();
        }
        let mut hooks = RunHooks {
            device: device.clone(),
            epochs: a.train.epochs,
            a,
            vocab: &m.vocab,
            be,
            curves: report::Curves {
                title: curves_title(&m.origin, a.run.as_ref()),
                epochs: a.train.epochs,
                ..Default::default()
            },
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            last_print: std::time::Instant::now(),
            progress_shown: false,
        };
        if let (Some(dir), true) = (&a.out, root) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let stale = remove_stale_temporaries(dir)?;
            if stale > 0 && !a.quiet {
                eprintln!(
                    "removed {stale} temporary file(s) left in {} by an interrupted run",
                    dir.display()
                );
            }
            // metrics.jsonl restarts from the state's completed epochs (none for a fresh run).
            let p = dir.join("metrics.jsonl");
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
            for em in &start.history {
                report::append_metrics(&p, em)?;
                if let Some(acc) = em.test_acc {
                    hooks.curves.test.push((em.epoch as f64, acc));
                }
            }
        }
        if !root {
            let end = trainer::train_ranks(
                be,
                &mut model,
                &mut opt,
                train,
                test,
                &a.train,
                start,
                &mut Silent,
                comm,
            )?;
            return Ok(FinetuneResult { history: end.history, device });
        }
        for em in &start.history {
            println!("{}", report::epoch_line(em, a.train.epochs, &device));
        }
        let end =
            trainer::train_ranks(be, &mut model, &mut opt, train, test, &a.train, start, &mut hooks, comm)?;
        hooks.clear_progress();
        let history = end.history;
        if let Some((done, of)) = history.last().and_then(|m| m.partial) {
            if !a.quiet {
                eprintln!(
                    "stopped by --max-steps {} at step {} (epoch {}/{}, batch {done}/{of}){}",
                    a.train.max_steps.unwrap_or(end.step),
                    end.step,
                    end.epoch + 1,
                    a.train.epochs,
                    match &a.out {
                        Some(dir) => format!(
                            "; continue with `nli-bert finetune --resume {}` (add --epochs N for more)",
                            dir.display()
                        ),
                        None => String::new(),
                    }
                );
            }
        }
        if let Some((l1, l2)) = report::final_lines(&history, &device) {
            println!("{l1}");
            println!("{l2}");
        }
        if let Some(dir) = &a.out {
            let host = model.params_host(be)?;
            save_model(dir, &model.cfg, &m.vocab, &host, a.max_len, a.truncate)?;
            if !a.quiet {
                eprintln!("saved the fine-tuned model, metrics.jsonl and curves.svg to {}", dir.display());
                if model.cfg.embedding_layernorm
                    && model.cfg.tokenizer == crate::model::config::TokenizerKind::WordPiece
                {
                    eprintln!(
                        "for transformers: nli-bert export --model {0} --to hf --out {0}-hf",
                        dir.display()
                    );
                }
            }
        } else if !a.quiet {
            eprintln!("nothing was saved (no --out DIR)");
        }
        Ok(FinetuneResult { history, device })
    }
}

/// The devices of a data-parallel run as the epoch line names them: `2x NVIDIA H200, bf16 ...`
/// from rank 0's `cuda:0 (NVIDIA H200), bf16 ...` (the card without the ordinal), `2x emu, f32`.
fn ranks_name(world: usize, rank0: &str) -> String {
    let card = rank0
        .strip_prefix("cuda:")
        .and_then(|r| r.split_once(" ("))
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(card, rest)| format!("{card}{rest}"));
    format!("{world}x {}", card.unwrap_or_else(|| rank0.to_string()))
}

/// The title of curves.svg: the model and, for a finetune run, its data.
fn curves_title(model: &str, run: Option<&RunSettings>) -> String {
    let name = |p: &str| {
        Path::new(p).file_name().map_or_else(|| p.to_string(), |n| n.to_string_lossy().into_owned())
    };
    match run {
        Some(r) => match &r.test_data {
            Some(t) => format!("{model} on {} (test: {})", name(&r.data), name(&t.to_string_lossy())),
            None => format!("{model} on {}", name(&r.data)),
        },
        None => model.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranks_name_drops_the_ordinal() {
        assert_eq!(
            super::ranks_name(2, "cuda:0 (NVIDIA H200), bf16 activations and GEMMs"),
            "2x NVIDIA H200, bf16 activations and GEMMs"
        );
        assert_eq!(super::ranks_name(3, "emu, f32"), "3x emu, f32");
        assert_eq!(super::ranks_name(2, "cpu (1 thread), f32"), "2x cpu (1 thread), f32");
    }
}
