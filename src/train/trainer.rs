//! The training loop: d2l's `train_ch13` over packed batches, on any backend.

use crate::backend::Backend;
use crate::data::batch::{epoch_batches, Batch, Encoded};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::bert::{argmax, upload_batch, Acts, Mode, Model};
use crate::train::optim::Adam;
use crate::train::parallel::Communicator;
use crate::train::step::{GraphsSel, Stepper};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set (by the CLI's Ctrl-C handler) to stop training after the current step, with a checkpoint.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Training-loop settings (d2l's defaults: 5 epochs, batch 512, dropout 0.2).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Passes over the training data.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Dropout probability during training.
    pub dropout: f64,
    /// Seed for shuffling and dropout.
    pub seed: u64,
    /// Stop after this many steps in total (for smoke runs).
    pub max_steps: Option<u64>,
    /// Shuffle the training data every epoch (DataLoader `shuffle=True`).
    pub shuffle: bool,
    /// Offer a checkpoint every this many steps (besides each epoch end).
    pub save_every: Option<u64>,
    /// Whether the steps run as recorded graphs (see [`crate::train::step`]).
    pub graphs: crate::train::step::GraphsSel,
}

/// One epoch's figures, as d2l prints them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch (Σ loss / examples).
    pub loss: f64,
    /// Training accuracy over the epoch (dropout on, as d2l).
    pub train_acc: f64,
    /// Test accuracy after the epoch (dropout off), if there is test data.
    pub test_acc: Option<f64>,
    /// Training examples per second, timing only the training steps (d2l's Timer).
    pub examples_per_sec: f64,
    /// Seconds spent in training steps this epoch.
    pub seconds: f64,
    /// Training examples seen this epoch.
    pub examples: usize,
    /// Optimizer steps taken so far in total.
    pub steps: u64,
    /// `(batches done, batches)` when `--max-steps` stopped the run inside this epoch; absent
    /// for a whole epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<(usize, usize)>,
}

/// Result of evaluating a model on a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Σ of per-example losses.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Examples.
    pub n: usize,
    /// `confusion[gold][pred]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Per-example logits (n, K) in f64, in input order.
    pub logits: Vec<f64>,
}

impl EvalResult {
    /// Accuracy in [0, 1] (0 for an empty set).
    pub fn accuracy(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.correct as f64 / self.n as f64
        }
    }
    /// Mean loss.
    pub fn mean_loss(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.loss_sum / self.n as f64
        }
    }
}

/// Evaluates `model` on `data` in batches (dropout off), keeping every logit.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &Model<B>,
    acts: &mut Acts<B>,
    data: &[Encoded],
    batch_size: usize,
) -> Result<EvalResult> {
    let k = model.cfg.num_labels;
    let mut res =
        EvalResult { loss_sum: 0.0, correct: 0, n: 0, confusion: vec![vec![0; k]; k], logits: Vec::new() };
    for chunk in data.chunks(batch_size.max(1)) {
        let items: Vec<&Encoded> = chunk.iter().collect();
        let batch = Batch::from_encoded(&items);
        let db = upload_batch(be, &batch)?;
        let out = model.forward(be, acts, &db, Mode::EVAL)?;
        let logits = model.logits_host(be, acts, chunk.len())?;
        for (i, e) in chunk.iter().enumerate() {
            let row = &logits[i * k..(i + 1) * k];
            let pred = argmax(row);
            if let Some(r) = res.confusion.get_mut(e.label as usize) {
                r[pred] += 1;
            }
            res.logits.extend(row.iter().map(|x| x.to_f64()));
        }
        res.loss_sum += out.loss_sum;
        res.correct += out.correct;
        res.n += out.n;
    }
    Ok(res)
}

/// [`evaluate`] over the ranks of a data-parallel run: each rank evaluates its contiguous part of
/// `data` and the loss sums and counts are summed (the logits and the confusion matrix are the
/// rank's own part only).
pub fn evaluate_ranks<B: Backend>(
    be: &B,
    model: &Model<B>,
    acts: &mut Acts<B>,
    data: &[Encoded],
    batch_size: usize,
    comm: &dyn Communicator<B>,
) -> Result<EvalResult> {
    let (rank, world) = (comm.rank(), comm.world());
    let part = &data[data.len() * rank / world..data.len() * (rank + 1) / world];
    let mut r = evaluate(be, model, acts, part, batch_size)?;
    let mut m = [r.loss_sum, r.correct as f64, r.n as f64];
    comm.all_reduce_host(&mut m)?;
    (r.loss_sum, r.correct, r.n) = (m[0], m[1] as usize, m[2] as usize);
    Ok(r)
}

/// Where a run stands: enough to continue it bit for bit (the data order and dropout masks are
/// pure functions of (seed, epoch) and (seed, step)).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// 0-based epoch in progress.
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch: usize,
    /// Optimizer steps taken in total (keys the dropout masks).
    pub step: u64,
    /// Σ loss over the batches of the epoch so far.
    pub loss_sum: f64,
    /// Correct predictions of the epoch so far.
    pub correct: usize,
    /// Examples of the epoch so far.
    pub n: usize,
    /// Seconds of training steps of the epoch so far.
    pub secs: f64,
    /// Completed epochs.
    pub history: Vec<EpochMetrics>,
}

/// Running figures of the epoch in progress, for progress bars and d2l's animator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// 0-based epoch.
    pub epoch: usize,
    /// Batches done in this epoch.
    pub batch: usize,
    /// Batches in this epoch.
    pub batches: usize,
    /// Mean loss of the epoch so far.
    pub loss: f64,
    /// Accuracy of the epoch so far.
    pub acc: f64,
    /// Training examples per second so far this epoch.
    pub examples_per_sec: f64,
    /// Global step.
    pub step: u64,
}

/// Callbacks of [`train`]; every method has a do-nothing default.
pub trait Hooks<B: Backend> {
    /// After every training step.
    fn on_step(&mut self, _p: &Progress) -> Result<()> {
        Ok(())
    }
    /// At d2l's animator points: every `batches / 5` batches and at the last batch of an epoch.
    fn on_point(&mut self, _p: &Progress) -> Result<()> {
        Ok(())
    }
    /// After each epoch (metrics include the test accuracy).
    fn on_epoch(&mut self, _m: &EpochMetrics) -> Result<()> {
        Ok(())
    }
    /// Every `save_every` steps, at each epoch end and when `max_steps` stops the run: a
    /// consistent state to save.
    fn on_checkpoint(&mut self, _state: &TrainState, _model: &Model<B>, _opt: &Adam<B>) -> Result<()> {
        Ok(())
    }
}

/// Hooks that only forward epoch metrics to a closure.
pub struct OnEpoch<F>(pub F);

impl<B: Backend, F: FnMut(&EpochMetrics) -> Result<()>> Hooks<B> for OnEpoch<F> {
    fn on_epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        (self.0)(m)
    }
}

/// Trains for `opts.epochs` epochs from `start` (a fresh run: `TrainState::default()`), calling
/// `hooks` as it goes (print, plot, save). Returns the state at the end (its history holds every
/// completed epoch).
#[allow(clippy::too_many_arguments)]
pub fn train<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    opt: &mut Adam<B>,
    train: &[Encoded],
    test: Option<&[Encoded]>,
    opts: &TrainOptions,
    start: TrainState,
    hooks: &mut dyn Hooks<B>,
) -> Result<TrainState> {
    train_ranks(be, model, opt, train, test, opts, start, hooks, None)
}

/// [`train`] as one rank of a data-parallel run (`comm`; `None`: alone): every rank goes through
/// the same batches and takes its shard of each ([`Model::train_step_parallel`]); the test set is
/// split between the ranks. The metrics the hooks see are the whole batch's on every rank (the
/// caller gives rank 0 the hooks that print and save). Steps run op by op (no step graphs).
#[allow(clippy::too_many_arguments)]
pub fn train_ranks<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    opt: &mut Adam<B>,
    train: &[Encoded],
    test: Option<&[Encoded]>,
    opts: &TrainOptions,
    start: TrainState,
    hooks: &mut dyn Hooks<B>,
    comm: Option<&dyn Communicator<B>>,
) -> Result<TrainState> {
    if train.is_empty() {
        return Err(Error::usage("the training set is empty: nothing to fine-tune on"));
    }
    if opts.batch_size == 0 {
        return Err(Error::usage("--batch-size must be at least 1"));
    }
    let mut acts = Acts::new(be, &model.cfg)?;
    let graphs = if comm.is_some() { GraphsSel::Off } else { opts.graphs };
    let mut stepper = Stepper::new(be, graphs, model.cfg.heads, model.cfg.hidden)?;
    let mut st = start;
    while st.epoch < opts.epochs {
        let order = epoch_batches(train.len(), opts.batch_size, opts.shuffle, opts.seed, st.epoch as u64);
        let batches = order.len();
        let every = (batches / 5).max(1);
        while st.batch < batches {
            if opts.max_steps.is_some_and(|m| st.step >= m) {
                // Save where the run stands, then report the partial epoch (not part of the
                // saved history: a resumed run completes that epoch).
                hooks.on_checkpoint(&st, model, opt)?;
                if st.n > 0 {
                    let m = EpochMetrics {
                        partial: Some((st.batch, batches)),
                        ..epoch_metrics(be, model, &mut acts, test, opts, &st, comm)?
                    };
                    hooks.on_epoch(&m)?;
                    st.history.push(m);
                }
                return Ok(st);
            }
            let items: Vec<&Encoded> = order[st.batch].iter().map(|&i| &train[i]).collect();
            let batch = Batch::from_encoded(&items);
            let t0 = Instant::now();
            let mode = Mode { dropout: opts.dropout, seed: opts.seed, step: st.step };
            let done = match comm {
                Some(c) => vec![model.train_step_parallel(be, opt, &mut acts, &batch, mode, c)?],
                None => {
                    stepper.step(model, be, opt, &mut acts, &batch, mode)?;
                    Vec::new()
                }
            };
            st.step += 1;
            st.batch += 1;
            let point = st.batch % every == 0 || st.batch == batches;
            let save = opts.save_every.is_some_and(|k| k > 0 && st.step % k == 0) && st.batch < batches;
            let stop = opts.max_steps.is_some_and(|m| st.step >= m) || INTERRUPTED.load(Ordering::Relaxed);
            if comm.is_none() && !(point || save || stop || stepper.should_drain()) {
                // A queued graph step: its loss is read with later ones.
                st.secs += t0.elapsed().as_secs_f64();
                continue;
            }
            let outs = if comm.is_some() { done } else { stepper.drain(be)? };
            let first = st.step + 1 - outs.len() as u64;
            for (i, out) in outs.iter().enumerate() {
                if !out.loss_sum.is_finite() {
                    return Err(Error::msg(format!(
                        "the training loss became {} at step {} (epoch {}): lower --lr or check the data{}",
                        out.loss_sum,
                        first + i as u64,
                        st.epoch + 1,
                        if opts.save_every.is_some() { "; the last checkpoint is intact" } else { "" }
                    )));
                }
                st.loss_sum += out.loss_sum;
                st.correct += out.correct;
                st.n += out.n;
            }
            st.secs += t0.elapsed().as_secs_f64();
            let p = Progress {
                epoch: st.epoch,
                batch: st.batch,
                batches,
                loss: st.loss_sum / st.n as f64,
                acc: st.correct as f64 / st.n as f64,
                examples_per_sec: if st.secs > 0.0 { st.n as f64 / st.secs } else { 0.0 },
                step: st.step,
            };
            hooks.on_step(&p)?;
            if point {
                hooks.on_point(&p)?;
            }
            if opts.save_every.is_some_and(|k| k > 0 && st.step % k == 0) && st.batch < batches {
                hooks.on_checkpoint(&st, model, opt)?;
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                hooks.on_checkpoint(&st, model, opt)?;
                return Err(Error::Interrupted(format!(
                    "interrupted at step {} (epoch {}, batch {}/{})",
                    st.step,
                    st.epoch + 1,
                    st.batch,
                    batches
                )));
            }
        }
        let m = epoch_metrics(be, model, &mut acts, test, opts, &st, comm)?;
        hooks.on_epoch(&m)?;
        st.history.push(m);
        st = TrainState {
            epoch: st.epoch + 1,
            step: st.step,
            history: std::mem::take(&mut st.history),
            ..Default::default()
        };
        hooks.on_checkpoint(&st, model, opt)?;
    }
    Ok(st)
}

/// The metrics of the epoch in `st` so far, with the test accuracy evaluated now.
fn epoch_metrics<B: Backend>(
    be: &B,
    model: &Model<B>,
    acts: &mut Acts<B>,
    test: Option<&[Encoded]>,
    opts: &TrainOptions,
    st: &TrainState,
    comm: Option<&dyn Communicator<B>>,
) -> Result<EpochMetrics> {
    let test_acc = match (test, comm) {
        (Some(t), None) if !t.is_empty() => Some(evaluate(be, model, acts, t, opts.batch_size)?.accuracy()),
        (Some(t), Some(c)) if !t.is_empty() => {
            Some(evaluate_ranks(be, model, acts, t, opts.batch_size, c)?.accuracy())
        }
        _ => None,
    };
    Ok(EpochMetrics {
        epoch: st.epoch + 1,
        loss: st.loss_sum / st.n.max(1) as f64,
        train_acc: st.correct as f64 / st.n.max(1) as f64,
        test_acc,
        examples_per_sec: if st.secs > 0.0 { st.n as f64 / st.secs } else { 0.0 },
        seconds: st.secs,
        examples: st.n,
        steps: st.step,
        partial: None,
    })
}
