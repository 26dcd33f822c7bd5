//! One training step, the one sequence every caller runs (the trainer, `nli-bert bench`, the
//! criterion benches, the tests): upload the batch, zero the gradients, forward, backward, Adam.
//! It is a method of [`Model`] defined here, beside the optimizer it drives, so that the model
//! module does not depend on the training module.
//!
//! [`Model::train_step_graphed`] is the same step recorded once per packed-length bucket as a
//! graph (a CUDA graph on a GPU) and replayed: the batch is padded up to its bucket with one
//! padding sequence (no example, no gradient), the ops are re-issued into the graph only to
//! update what changes from step to step (the uploaded batch, the dropout step, Adam's bias
//! corrections), and Adam skips a batch with a non-finite loss on the device. The results are
//! those of [`Model::train_step`] on the unpadded batch. [`Model::train_step_queued`] does not
//! wait for the step: its loss and correct count go to a ring on the device, read in batches, so
//! the host prepares the next steps while the device runs this one. [`Stepper`] is what the
//! trainer and `nli-bert bench` drive: queued graph steps where `--graphs` allows, else
//! [`Model::train_step`].

use std::collections::HashMap;

use crate::backend::Backend;
use crate::data::batch::Batch;
use crate::error::Result;
use crate::model::bert::{upload_batch, upload_batch_with, Acts, Mode, Model, Output};
use crate::train::optim::Adam;

impl<B: Backend> Model<B> {
    /// One training step on `batch` with `mode`'s dropout: uploads it, zeroes the gradients, runs
    /// forward, and — when the summed loss is finite — backward and the row-sparse Adam step over
    /// the token-embedding rows the batch uses. Returns the forward's loss, correct count and
    /// example count; with a non-finite loss the parameters are left as they were and the caller
    /// decides what to say.
    pub fn train_step(
        &mut self,
        be: &B,
        opt: &mut Adam<B>,
        acts: &mut Acts<B>,
        batch: &Batch,
        mode: Mode,
    ) -> Result<Output> {
        let db = upload_batch(be, batch)?;
        opt.zero_grad(be, self);
        let out = self.forward(be, acts, &db, mode)?;
        if out.loss_sum.is_finite() {
            self.backward(be, acts, &db, mode)?;
            opt.step_batch(be, self, &batch.tokens);
        }
        Ok(out)
    }

    /// [`Model::train_step`] as a replayed graph (see the module documentation). The parameters
    /// are left as they were after a non-finite loss, as there; unlike there, the optimizer's step
    /// count has advanced (the host cannot know before the device has run the step), which only
    /// matters to a caller that goes on training after such a loss (the trainer stops).
    pub fn train_step_graphed(
        &mut self,
        be: &B,
        opt: &mut Adam<B>,
        acts: &mut Acts<B>,
        batch: &Batch,
        mode: Mode,
        graphs: &mut StepGraphs<B>,
    ) -> Result<Output> {
        self.graph_step(be, opt, acts, batch, mode, graphs, false)?;
        self.output(be, acts, batch.lens.len(), &batch.labels)
    }

    /// [`Model::train_step_graphed`] without waiting for the step: its loss sum and correct count
    /// are queued on the device ([`Backend::metrics_push`]) and read, with those of the steps
    /// queued before it, by [`StepGraphs::take_metrics`] — at least every
    /// [`crate::backend::METRICS_SLOTS`] steps. So the host prepares the next batch and updates
    /// the next graph while the device runs this one: consecutive steps of one bucket alternate
    /// between two graphs, and updating one waits only for its own last replay.
    pub fn train_step_queued(
        &mut self,
        be: &B,
        opt: &mut Adam<B>,
        acts: &mut Acts<B>,
        batch: &Batch,
        mode: Mode,
        graphs: &mut StepGraphs<B>,
    ) -> Result<()> {
        if graphs.queued >= crate::backend::METRICS_SLOTS {
            return Err(crate::error::Error::msg(format!(
                "{} training steps queued without reading their metrics (StepGraphs::take_metrics)",
                graphs.queued
            )));
        }
        self.graph_step(be, opt, acts, batch, mode, graphs, true)?;
        graphs.queued += 1;
        Ok(())
    }

    /// Records (or updates) and replays the graph of `batch`'s step; with `queue` the step also
    /// writes its metrics into the next slot of the backend's ring.
    #[allow(clippy::too_many_arguments)]
    fn graph_step(
        &mut self,
        be: &B,
        opt: &mut Adam<B>,
        acts: &mut Acts<B>,
        batch: &Batch,
        mode: Mode,
        graphs: &mut StepGraphs<B>,
        queue: bool,
    ) -> Result<()> {
        let (t, nb) = (batch.tokens.len(), batch.lens.len());
        let bucket = graphs.bucket.min(self.cfg.max_positions).max(1);
        let tb = t.div_ceil(bucket).max(1) * bucket;
        let pad = tb - t;
        // Buffers that outlive the step are sized before any capture (a graph owns only what a
        // step takes while it is captured).
        let layout = crate::backend::BatchLayout::padded(&batch.lens, pad);
        let padded = batch.with_padding_sequence(pad);
        acts.ensure(be, &self.cfg, &layout)?;
        if graphs.acts_generation != Some(acts.generation()) {
            // The activations were reallocated (by this batch or by an evaluation in between):
            // graphs recorded before address buffers that are gone.
            graphs.dropped += graphs.graphs.len();
            graphs.graphs.clear();
            graphs.acts_generation = Some(acts.generation());
        }
        // Queued steps of one bucket alternate between two graphs (see train_step_queued).
        let uses = graphs.uses.entry((tb, nb)).or_insert(0);
        let copy = if queue { 1 + *uses % 2 } else { 0 };
        *uses += 1;
        let key = (tb, nb, copy);
        let slot = (graphs.first + graphs.queued) % crate::backend::METRICS_SLOTS;
        let k = self.cfg.num_labels;
        let record = |model: &mut Model<B>, opt: &mut Adam<B>, acts: &mut Acts<B>| -> Result<()> {
            let db = upload_batch_with(be, &padded, layout.clone())?;
            opt.zero_grad(be, model);
            model.forward_ops(be, acts, &db, mode)?;
            be.loss_guard(model.losses(be, acts, nb));
            if queue
                && !be.metrics_push(slot, model.losses(be, acts, nb), model.logits(be, acts, nb), &db, k)?
            {
                return Err(crate::error::Error::msg(format!("{} cannot queue step metrics", be.name())));
            }
            let r = model.backward(be, acts, &db, mode);
            opt.step_batch(be, model, &batch.tokens);
            be.loss_guard_clear();
            r
        };
        let t0 = opt.t;
        let r = self.graphed(be, opt, acts, graphs, key, &record).and_then(|()| {
            let g = graphs.graphs.get(&key).ok_or_else(|| crate::error::Error::msg("step graph missing"))?;
            be.graph_replay(g)
        });
        if r.is_err() {
            // The host-side optimizer step belongs to a step that did not run, and the graph is
            // not to be trusted again.
            opt.t = t0;
            graphs.dropped += usize::from(graphs.graphs.remove(&key).is_some());
        }
        r
    }

    /// Finds, updates or captures the graph for `key` (see [`Model::train_step_graphed`]).
    fn graphed(
        &mut self,
        be: &B,
        opt: &mut Adam<B>,
        acts: &mut Acts<B>,
        graphs: &mut StepGraphs<B>,
        key: (usize, usize, usize),
        record: &StepOps<'_, B>,
    ) -> Result<()> {
        let mut updated = false;
        if let Some(g) = graphs.graphs.get(&key) {
            let t0 = std::time::Instant::now();
            let mismatch = match be.graph_update(g, &mut || record(self, opt, acts)) {
                Ok(m) => m,
                Err(e) => {
                    // The graph may hold some of the new arguments and not others: never replay it
                    // (dropped by the caller).
                    return Err(e);
                }
            };
            graphs.update_secs += t0.elapsed().as_secs_f64();
            updated = mismatch.is_none();
            if updated {
                graphs.updates += 1;
            } else {
                graphs.last_mismatch = mismatch;
                // The re-issued step did not match (a shape changed): its host-side optimizer step
                // is taken again by the capture below.
                opt.t -= 1;
                graphs.graphs.remove(&key);
                graphs.recaptures += 1;
            }
        }
        if !updated {
            let g = be.graph_capture(&mut || record(self, opt, acts))?;
            graphs.graphs.insert(key, g);
            graphs.captures += 1;
        }
        Ok(())
    }
}

/// A training step's ops, issued on the model, optimizer and activations.
type StepOps<'a, B> = dyn Fn(&mut Model<B>, &mut Adam<B>, &mut Acts<B>) -> Result<()> + 'a;

/// Whether training steps run as step graphs (`--graphs`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum GraphsSel {
    /// Where the backend supports them (a GPU with flash attention: `--precision bf16`).
    #[default]
    Auto,
    /// Always (an error where the backend cannot).
    On,
    /// Never: every op launched on its own.
    Off,
}

impl GraphsSel {
    /// Whether steps of a model with `nh` heads over `c` columns run as graphs on `be`; an error
    /// for `On` where they cannot.
    pub fn decide<B: Backend>(self, be: &B, nh: usize, c: usize) -> Result<bool> {
        match self {
            GraphsSel::Off => Ok(false),
            GraphsSel::Auto => Ok(be.graphs_supported(nh, c)),
            GraphsSel::On if be.graphs_supported(nh, c) => Ok(true),
            GraphsSel::On => Err(crate::error::Error::usage(format!(
                "--graphs on: {} cannot record training steps as graphs (a GPU with flash attention can: \
                 --device cuda --precision bf16, or --attention flash); use --graphs auto or off",
                be.name()
            ))),
        }
    }
}

/// Tokens per step-graph bucket: a batch is padded up to the next multiple (SNLI batches of 512
/// pairs, about 12.8k tokens, spread over a few buckets; the padding costs at most 2%).
pub const GRAPH_BUCKET: usize = 256;

/// The step graphs of a run, one per (packed length rounded up to the bucket, examples) — two
/// for queued steps — and the queue of step metrics not read yet.
pub struct StepGraphs<B: Backend> {
    graphs: HashMap<(usize, usize, usize), B::Graph>,
    /// Steps taken per (bucket, examples), for alternating the two graphs of queued steps.
    uses: HashMap<(usize, usize), usize>,
    /// The metrics ring slot of the oldest queued step, and the number queued.
    first: usize,
    queued: usize,
    /// The activations' generation the graphs were recorded with.
    acts_generation: Option<u64>,
    /// Tokens per bucket: a batch of T tokens is padded to the next multiple (at most the
    /// positional table's length, which bounds the padding sequence).
    pub bucket: usize,
    /// Graphs captured (each the first step of its bucket, or after a mismatch).
    pub captures: usize,
    /// Steps replayed through an updated graph.
    pub updates: usize,
    /// Updates that found the step's ops changed and captured anew.
    pub recaptures: usize,
    /// Why the last such update did not match.
    pub last_mismatch: Option<String>,
    /// Graphs dropped otherwise: the activations were reallocated, or an update or replay failed.
    pub dropped: usize,
    /// Host seconds spent re-issuing steps into their graphs (the host's cost per replayed step,
    /// which the device does not overlap while the loss is read after every step).
    pub update_secs: f64,
}

impl<B: Backend> StepGraphs<B> {
    /// No graphs yet; batches padded to multiples of `bucket` tokens.
    pub fn new(bucket: usize) -> Self {
        StepGraphs {
            graphs: HashMap::new(),
            uses: HashMap::new(),
            first: 0,
            queued: 0,
            acts_generation: None,
            bucket,
            captures: 0,
            updates: 0,
            recaptures: 0,
            last_mismatch: None,
            dropped: 0,
            update_secs: 0.0,
        }
    }

    /// Number of graphs held.
    pub fn len(&self) -> usize {
        self.graphs.len()
    }

    /// Whether no graph is held.
    pub fn is_empty(&self) -> bool {
        self.graphs.is_empty()
    }

    /// Steps queued by [`Model::train_step_queued`] whose metrics are not read yet.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The metrics of the queued steps, oldest first, as [`Model::train_step`] returns them
    /// (waits for the device).
    pub fn take_metrics(&mut self, be: &B) -> Result<Vec<Output>> {
        if self.queued == 0 {
            return Ok(Vec::new());
        }
        let m = be.metrics_read(self.first, self.queued)?;
        self.first = (self.first + self.queued) % crate::backend::METRICS_SLOTS;
        self.queued = 0;
        Ok(m.into_iter().map(|(loss_sum, correct, n)| Output { loss_sum, correct, n }).collect())
    }

    /// Drops every graph (before the buffers they address change).
    pub fn clear(&mut self) {
        self.graphs.clear();
    }
}

/// Runs a run's training steps: as queued graphs where `--graphs` allows (their metrics read in
/// batches, see [`Model::train_step_queued`]), else one [`Model::train_step`] at a time. Either
/// way [`Stepper::drain`] returns every step's [`Output`] in order.
pub struct Stepper<B: Backend> {
    graphs: Option<StepGraphs<B>>,
    sel: GraphsSel,
    ready: Vec<Output>,
    last_drain: std::time::Instant,
}

impl<B: Backend> Stepper<B> {
    /// Steps of a model with `nh` heads over `c` columns on `be`, as graphs when `sel` says so.
    pub fn new(be: &B, sel: GraphsSel, nh: usize, c: usize) -> Result<Self> {
        let graphs = sel.decide(be, nh, c)?.then(|| StepGraphs::new(GRAPH_BUCKET));
        Ok(Stepper { graphs, sel, ready: Vec::new(), last_drain: std::time::Instant::now() })
    }

    /// The step graphs, while steps run as graphs.
    pub fn graphs(&self) -> Option<&StepGraphs<B>> {
        self.graphs.as_ref()
    }

    /// Takes one training step. When a graph cannot be made or run and the device is still
    /// sound, `--graphs auto` goes on op by op after a warning (`on`: the error).
    pub fn step(
        &mut self,
        model: &mut Model<B>,
        be: &B,
        opt: &mut Adam<B>,
        acts: &mut Acts<B>,
        batch: &Batch,
        mode: Mode,
    ) -> Result<()> {
        let Some(g) = self.graphs.as_mut() else {
            let out = model.train_step(be, opt, acts, batch, mode)?;
            self.ready.push(out);
            return Ok(());
        };
        match model.train_step_queued(be, opt, acts, batch, mode, g) {
            Ok(()) => Ok(()),
            Err(e) if self.sel == GraphsSel::Auto && be.synchronize().is_ok() => {
                eprintln!(
                    "warning: training steps cannot run as graphs on {} ({e}); running every op on its own \
                     (--graphs off says so from the start)",
                    be.name()
                );
                let earlier = g.take_metrics(be)?;
                self.ready.extend(earlier);
                self.graphs = None;
                let out = model.train_step(be, opt, acts, batch, mode)?;
                self.ready.push(out);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the steps taken should be drained now: always without graphs (each step's output
    /// is at hand), else when half the metrics ring is used or a quarter second has passed (for
    /// the progress display).
    pub fn should_drain(&self) -> bool {
        match &self.graphs {
            None => true,
            Some(g) => {
                g.queued() >= crate::backend::METRICS_SLOTS / 2
                    || self.last_drain.elapsed() >= std::time::Duration::from_millis(250)
            }
        }
    }

    /// The outputs of the steps taken since the last drain, in order (waits for the device).
    pub fn drain(&mut self, be: &B) -> Result<Vec<Output>> {
        let mut out = std::mem::take(&mut self.ready);
        if let Some(g) = self.graphs.as_mut() {
            out.extend(g.take_metrics(be)?);
        }
        self.last_drain = std::time::Instant::now();
        Ok(out)
    }
}
