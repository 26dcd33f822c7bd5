//! Adam and AdamW with PyTorch's exact semantics (`torch.optim.Adam`, `_single_tensor_adam`).
//!
//! Parameters without a gradient are skipped, as PyTorch skips `p.grad is None`: d2l 0.17's
//! positional embedding is added through `.data`, so it never gets a gradient and Adam never
//! touches it (no moment decay either). Every other parameter, including rows of the token
//! embedding that a batch did not use, takes a full Adam step (dense gradients, as PyTorch).

use crate::backend::{AdamStep, Backend};
use crate::error::Result;
use crate::model::bert::Model;
use std::ops::Range;

/// Optimizer hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate (d2l: 1e-4).
    pub lr: f64,
    /// β1 (0.9).
    pub beta1: f64,
    /// β2 (0.999).
    pub beta2: f64,
    /// ε (1e-8).
    pub eps: f64,
    /// Weight decay (0).
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW).
    pub decoupled: bool,
}

impl AdamConfig {
    /// `torch.optim.Adam(params, lr)` defaults.
    pub fn adam(lr: f64) -> Self {
        AdamConfig { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false }
    }
    /// `torch.optim.AdamW(params, lr, weight_decay)` defaults.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        AdamConfig { weight_decay, decoupled: true, ..Self::adam(lr) }
    }
}

/// Adam state on a backend: first and second moments for every parameter, the step count.
pub struct Adam<B: Backend> {
    /// Hyper-parameters.
    pub cfg: AdamConfig,
    /// (total,) first moments.
    pub m: B::Buf,
    /// (total,) second moments.
    pub v: B::Buf,
    /// Steps taken so far.
    pub t: u64,
    /// Trainable ranges (merged), for the dense step.
    ranges: Vec<Range<usize>>,
    /// Trainable ranges except the token embedding, for the row-sparse step.
    dense: Vec<Range<usize>>,
    /// Token-embedding rows touched so far (row-sparse step).
    rows: Option<EmbeddingRows>,
}

/// The token-embedding rows any batch has used so far. Rows never used have zero gradient and
/// zero moments, so PyTorch's dense step leaves them unchanged (without weight decay): updating
/// only used rows is exact, and saves most of the optimizer's memory traffic (bert.small's
/// 60,005-row table is 93% of its parameters, SNLI uses a fraction of it).
struct EmbeddingRows {
    range: Range<usize>,
    row_len: usize,
    seen: Vec<bool>,
    sorted: Vec<u32>,
    grads_clean: bool,
}

impl<B: Backend> Adam<B> {
    /// Fresh state for `model` (zero moments, t = 0).
    pub fn new(be: &B, model: &Model<B>, cfg: AdamConfig) -> Result<Self> {
        let n = model.layout.total;
        let ranges = model.layout.trainable_ranges();
        let wte = model.layout.ranges.wte.clone();
        let mut dense = Vec::new();
        for r in &ranges {
            if r.end <= wte.start || r.start >= wte.end {
                dense.push(r.clone());
            } else {
                if r.start < wte.start {
                    dense.push(r.start..wte.start);
                }
                if wte.end < r.end {
                    dense.push(wte.end..r.end);
                }
            }
        }
        let rows = (cfg.weight_decay == 0.0).then(|| EmbeddingRows {
            range: wte,
            row_len: model.cfg.hidden,
            seen: vec![false; model.cfg.vocab_size],
            sorted: Vec::new(),
            grads_clean: false,
        });
        Ok(Adam { cfg, m: be.alloc(n)?, v: be.alloc(n)?, t: 0, ranges, dense, rows })
    }

    fn hyper(&self) -> AdamStep {
        AdamStep {
            lr: self.cfg.lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            decoupled: self.cfg.decoupled,
            t: self.t,
        }
    }

    /// One dense step over every trainable parameter, using `model.grads` (torch.optim.Adam).
    pub fn step(&mut self, be: &B, model: &mut Model<B>) {
        self.t += 1;
        let s = self.hyper();
        for r in &self.ranges {
            be.adam_update(
                be.slice_mut(&mut model.params, r.clone()),
                be.slice(&model.grads, r.clone()),
                be.slice_mut(&mut self.m, r.clone()),
                be.slice_mut(&mut self.v, r.clone()),
                &s,
            );
        }
        // A dense step may follow row-sparse bookkeeping: grads are no longer known clean.
        if let Some(rows) = &mut self.rows {
            rows.grads_clean = false;
        }
    }

    /// Zeroes the gradients the next training step will accumulate into: with the row-sparse
    /// optimizer only the dense tensors and the embedding rows used so far (the others are 0).
    pub fn zero_grad(&mut self, be: &B, model: &mut Model<B>) {
        match &mut self.rows {
            Some(rows) if rows.grads_clean => {
                for r in &self.dense {
                    be.zero(be.slice_mut(&mut model.grads, r.clone()));
                }
                be.zero_rows(be.slice_mut(&mut model.grads, rows.range.clone()), &rows.sorted, rows.row_len);
            }
            Some(rows) => {
                model.zero_grad(be);
                rows.grads_clean = true;
            }
            None => model.zero_grad(be),
        }
    }

    /// One step after a batch with these tokens (T,): identical to [`Adam::step`], but without
    /// weight decay only the token-embedding rows used so far are visited (see
    /// `EmbeddingRows`). Call [`Adam::zero_grad`] (not `Model::zero_grad`) before each forward.
    pub fn step_batch(&mut self, be: &B, model: &mut Model<B>, tokens: &[i32]) {
        if self.rows.is_none() {
            return self.step(be, model);
        }
        self.t += 1;
        let s = self.hyper();
        let Some(rows) = &mut self.rows else { return };
        let mut added = false;
        for &tok in tokens {
            if let Some(s) = usize::try_from(tok).ok().and_then(|i| rows.seen.get_mut(i)) {
                if !*s {
                    *s = true;
                    rows.sorted.push(tok as u32);
                    added = true;
                }
            }
        }
        if added {
            rows.sorted.sort_unstable();
        }
        for r in &self.dense {
            be.adam_update(
                be.slice_mut(&mut model.params, r.clone()),
                be.slice(&model.grads, r.clone()),
                be.slice_mut(&mut self.m, r.clone()),
                be.slice_mut(&mut self.v, r.clone()),
                &s,
            );
        }
        let r = rows.range.clone();
        be.adam_update_rows(
            be.slice_mut(&mut model.params, r.clone()),
            be.slice(&model.grads, r.clone()),
            be.slice_mut(&mut self.m, r.clone()),
            be.slice_mut(&mut self.v, r),
            &rows.sorted,
            rows.row_len,
            &s,
        );
    }

    /// The token-embedding rows the row-sparse step has seen, sorted (None: dense optimizer).
    pub fn active_rows(&self) -> Option<&[u32]> {
        self.rows.as_ref().map(|r| r.sorted.as_slice())
    }

    /// Restores a saved state: moments (host copies), step count and seen rows.
    pub fn restore(&mut self, be: &B, m: &[B::F], v: &[B::F], t: u64, rows: Option<&[u32]>) -> Result<()> {
        self.m = be.upload(m)?;
        self.v = be.upload(v)?;
        self.t = t;
        if let (Some(state), Some(saved)) = (&mut self.rows, rows) {
            for &r in saved {
                if let Some(s) = state.seen.get_mut(r as usize) {
                    if !*s {
                        *s = true;
                        state.sorted.push(r);
                    }
                }
            }
            state.sorted.sort_unstable();
            state.grads_clean = false;
        }
        Ok(())
    }
}
