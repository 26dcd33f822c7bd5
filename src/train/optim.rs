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
    ranges: Vec<Range<usize>>,
}

impl<B: Backend> Adam<B> {
    /// Fresh state for `model` (zero moments, t = 0).
    pub fn new(be: &B, model: &Model<B>, cfg: AdamConfig) -> Result<Self> {
        let n = model.layout.total;
        Ok(Adam { cfg, m: be.alloc(n)?, v: be.alloc(n)?, t: 0, ranges: model.layout.trainable_ranges() })
    }

    /// One step over every trainable parameter, using `model.grads`.
    pub fn step(&mut self, be: &B, model: &mut Model<B>) {
        self.t += 1;
        let s = AdamStep {
            lr: self.cfg.lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            decoupled: self.cfg.decoupled,
            t: self.t,
        };
        for r in &self.ranges {
            be.adam_update(
                be.slice_mut(&mut model.params, r.clone()),
                be.slice(&model.grads, r.clone()),
                be.slice_mut(&mut self.m, r.clone()),
                be.slice_mut(&mut self.v, r.clone()),
                &s,
            );
        }
    }
}
