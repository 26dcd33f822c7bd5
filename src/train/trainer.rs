//! The training loop: d2l's `train_ch13` over packed batches, on any backend.

use crate::backend::Backend;
use crate::data::batch::{epoch_batches, Batch, Encoded};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::bert::{argmax, upload_batch, Acts, Mode, Model};
use crate::train::optim::Adam;
use std::time::Instant;

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
}

/// One epoch's figures, as d2l prints them.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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

/// Trains for `opts.epochs` epochs; calls `on_epoch` after each one (print, save, plot).
#[allow(clippy::too_many_arguments)]
pub fn train<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    opt: &mut Adam<B>,
    train: &[Encoded],
    test: Option<&[Encoded]>,
    opts: &TrainOptions,
    mut on_epoch: impl FnMut(&EpochMetrics) -> Result<()>,
) -> Result<Vec<EpochMetrics>> {
    if train.is_empty() {
        return Err(Error::usage("the training set is empty: nothing to fine-tune on"));
    }
    if opts.batch_size == 0 {
        return Err(Error::usage("--batch-size must be at least 1"));
    }
    let mut acts = Acts::new(be, &model.cfg)?;
    let mut history = Vec::new();
    let mut step: u64 = opt.t;
    'epochs: for epoch in 0..opts.epochs {
        let order = epoch_batches(train.len(), opts.batch_size, opts.shuffle, opts.seed, epoch as u64);
        let (mut loss_sum, mut correct, mut n, mut secs) = (0.0f64, 0usize, 0usize, 0.0f64);
        let mut stopped = false;
        for idx in order {
            if opts.max_steps.is_some_and(|m| step >= m) {
                stopped = true;
                break;
            }
            let items: Vec<&Encoded> = idx.iter().map(|&i| &train[i]).collect();
            let batch = Batch::from_encoded(&items);
            let t0 = Instant::now();
            let db = upload_batch(be, &batch)?;
            let mode = Mode { dropout: opts.dropout, seed: opts.seed, step };
            opt.zero_grad(be, model);
            let out = model.forward(be, &mut acts, &db, mode)?;
            if !out.loss_sum.is_finite() {
                return Err(Error::msg(format!(
                    "the training loss became {} at step {} (epoch {}): lower --lr or check the data",
                    out.loss_sum,
                    step + 1,
                    epoch + 1
                )));
            }
            model.backward(be, &mut acts, &db, mode)?;
            opt.step_batch(be, model, &batch.tokens);
            secs += t0.elapsed().as_secs_f64();
            step += 1;
            loss_sum += out.loss_sum;
            correct += out.correct;
            n += out.n;
        }
        if n == 0 {
            break;
        }
        let test_acc = match test {
            Some(t) if !t.is_empty() => Some(evaluate(be, model, &mut acts, t, opts.batch_size)?.accuracy()),
            _ => None,
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            loss: loss_sum / n as f64,
            train_acc: correct as f64 / n as f64,
            test_acc,
            examples_per_sec: if secs > 0.0 { n as f64 / secs } else { 0.0 },
            seconds: secs,
            examples: n,
            steps: step,
        };
        on_epoch(&m)?;
        history.push(m);
        if stopped {
            break 'epochs;
        }
    }
    Ok(history)
}
