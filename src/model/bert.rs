//! The BERT classifier, forward and backward by hand over the [`Backend`] trait (llm.c style:
//! no autograd; backward is forward reversed; forward caches exactly what backward needs).
//!
//! ```text
//! x0 = tok_emb[tokens] + seg_emb[segments] + pos_emb[positions]          (T, C)
//!      (+ LayerNorm + dropout for Hugging Face checkpoints)
//! for each block l:                                                        post-LN, d2l AddNorm
//!   qkv = x · [W_q; W_k; W_v]ᵀ + b                                         (T, 3C)
//!   a   = attention(qkv) per sequence and head, dropout on probabilities   (T, C)
//!   y   = LayerNorm(dropout(a · W_oᵀ + b_o) + x)                           (T, C)
//!   h   = act(y · W_1ᵀ + b_1)                                              (T, F)
//!   x   = LayerNorm(dropout(h · W_2ᵀ + b_2) + y)                           (T, C)
//! pooled = tanh(x[<cls> rows] · W_hᵀ + b_h)                                (B, C)  d2l `hidden`
//! logits = pooled · W_outᵀ + b_out                                         (B, K)  d2l `output`
//! loss   = Σ_b cross_entropy(logits_b, label_b)                            (as d2l: summed)
//! ```

use crate::backend::{Activation, Backend, BatchLayout, DeviceBatch};
use crate::data::batch::Batch;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::config::BertConfig;
use crate::model::params::ParamLayout;
use crate::rng::{site, Dropout, HostRng};
use std::ops::Range;

/// The model's parameters and their gradients on a backend.
pub struct Model<B: Backend> {
    /// Architecture.
    pub cfg: BertConfig,
    /// Names, shapes and offsets of the flat buffers.
    pub layout: ParamLayout,
    /// (total,) all parameters.
    pub params: B::Buf,
    /// (total,) their gradients (accumulated by backward; zeroed by [`Model::zero_grad`]).
    pub grads: B::Buf,
}

/// Activations of one encoder block, saved by forward for backward.
pub struct BlockActs<B: Backend> {
    /// (T, 3C) the Q|K|V projections.
    qkv: B::Buf,
    /// (NH·Σ len²) attention probabilities before dropout.
    att: B::Buf,
    /// (T, C) attention output before W_o.
    attn: B::Buf,
    /// (T, C) W_o output.
    proj: B::Buf,
    /// (T, C) AddNorm 1 pre-norm sum; (T,) its mean and 1/std.
    sum1: B::Buf,
    mean1: B::Buf,
    rstd1: B::Buf,
    /// (T, C) AddNorm 1 output.
    y: B::Buf,
    /// (T, F) FFN pre-activation (where a backend fuses ReLU into the product: unwritten, or its
    /// bit mask, see [`Backend::matmul_act_forward`]) and activation.
    h_pre: B::Buf,
    h: B::Buf,
    /// (T, C) FFN output.
    ffn: B::Buf,
    /// (T, C) AddNorm 2 pre-norm sum; (T,) mean and 1/std.
    sum2: B::Buf,
    mean2: B::Buf,
    rstd2: B::Buf,
    /// (T, C) block output.
    out: B::Buf,
}

/// Everything forward saves, sized for one batch shape (reallocated only when a batch is larger).
/// The (T, ·) tensors and their gradients are [`Backend::alloc_act`] buffers (bf16 on a GPU with
/// bf16 storage); statistics, attention's saved rows and the classifier head's (B, ·) tensors are
/// plain [`Backend::alloc`] buffers.
pub struct Acts<B: Backend> {
    t_cap: usize,
    b_cap: usize,
    att_cap: usize,
    /// Bumped whenever a buffer is reallocated (a recorded step graph addresses the old ones).
    generation: u64,
    /// (T, C) embedding sum.
    emb: B::Buf,
    /// (T, C) embedding LayerNorm output and its statistics (HF only; unused for d2l).
    emb_ln: B::Buf,
    emb_mean: B::Buf,
    emb_rstd: B::Buf,
    /// (T, C) encoder input after embedding dropout (HF only).
    x0: B::Buf,
    blocks: Vec<BlockActs<B>>,
    /// (B, C) `<cls>` rows of the last block, pooler pre-activation and output.
    cls: B::Buf,
    pool_pre: B::Buf,
    pool: B::Buf,
    /// (B, C) pooled after classifier dropout (HF only).
    pool_drop: B::Buf,
    /// (B, K) logits and softmax probabilities; (B,) per-example losses.
    logits: B::Buf,
    probs: B::Buf,
    losses: B::Buf,
    // ---- gradient scratch ----
    /// (T, C) ping-pong gradient of a block's output / input.
    dx_a: B::Buf,
    dx_b: B::Buf,
    /// (T, C) gradient of AddNorm 1 output.
    dy: B::Buf,
    /// (T, C) gradient of a sub-layer output (W_o or FFN).
    dsub: B::Buf,
    /// (T, C) gradient of the attention output.
    dattn: B::Buf,
    /// (T, 3C).
    dqkv: B::Buf,
    /// (T, F) two FFN gradients.
    dh: B::Buf,
    dh_pre: B::Buf,
    /// (B, C), (B, C), (B, K).
    dcls: B::Buf,
    dpool: B::Buf,
    dpool_pre: B::Buf,
    dlogits: B::Buf,
}

/// What [`Model::backward_with`] calls with the gradient buffer and a range of it whose
/// gradients are final.
pub type GradsReady<'a, B> = dyn FnMut(&B, &mut <B as Backend>::Buf, Range<usize>) -> Result<()> + 'a;

/// Forward-pass settings.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// Dropout probability (0 in evaluation).
    pub dropout: f64,
    /// Seed of the dropout generator.
    pub seed: u64,
    /// Global training step (keys the dropout masks).
    pub step: u64,
}

impl Mode {
    /// Evaluation: no dropout.
    pub const EVAL: Mode = Mode { dropout: 0.0, seed: 0, step: 0 };
    fn site(&self, s: u32) -> Dropout {
        Dropout::new(self.dropout, self.seed, self.step, s)
    }
}

/// The dropout of each kind of site for a batch, its element indices shifted by the batch's
/// place in the whole batch it may be a shard of ([`crate::backend::Origin`]).
struct Sites {
    mode: Mode,
    /// Offsets of (T, C) tensors, of attention's (nh, Σ len²) probabilities, of (B, C) tensors.
    rows: u64,
    att: u64,
    seqs: u64,
}

impl Sites {
    fn new(mode: Mode, layout: &BatchLayout, c: usize, nh: usize) -> Sites {
        let o = layout.origin;
        Sites { mode, rows: (o.rows * c) as u64, att: (nh * o.att) as u64, seqs: (o.seqs * c) as u64 }
    }
    /// A (T, C) site: the embedding, AddNorm 1 and 2.
    fn rows(&self, s: u32) -> Dropout {
        self.mode.site(s).shifted(self.rows)
    }
    fn attention(&self, l: usize) -> Dropout {
        self.mode.site(site::attention(l)).shifted(self.att)
    }
    /// The classifier's (B, C) site.
    fn seqs(&self, s: u32) -> Dropout {
        self.mode.site(s).shifted(self.seqs)
    }
}

/// The outcome of a forward pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// Σ of the per-example losses.
    pub loss_sum: f64,
    /// Examples whose argmax logit equals the label.
    pub correct: usize,
    /// Examples in the batch.
    pub n: usize,
}

/// Uploads a packed host batch.
pub fn upload_batch<B: Backend>(be: &B, batch: &Batch) -> Result<DeviceBatch<B>> {
    upload_batch_with(be, batch, BatchLayout::new(&batch.lens))
}

/// Uploads a packed host batch with `layout`, which may hold more tokens than the batch's
/// sequences: a batch from [`Batch::with_padding_sequence`] with [`BatchLayout::padded`].
pub fn upload_batch_with<B: Backend>(be: &B, batch: &Batch, layout: BatchLayout) -> Result<DeviceBatch<B>> {
    let to_i32 = |v: &[usize]| -> Result<Vec<i32>> {
        v.iter()
            .map(|&x| {
                i32::try_from(x).map_err(|_| Error::msg(format!("batch too large: offset {x} exceeds i32")))
            })
            .collect()
    };
    Ok(DeviceBatch {
        tokens: be.upload_i32(&batch.tokens)?,
        segments: be.upload_i32(&batch.segments)?,
        positions: be.upload_i32(&batch.positions)?,
        cu_seqlens: be.upload_i32(&to_i32(&layout.cu_seqlens)?)?,
        att_offsets: be.upload_i32(&to_i32(&layout.att_offsets)?)?,
        labels: be.upload_i32(&batch.labels)?,
        labels_host: batch.labels.clone(),
        layout,
    })
}

impl<B: Backend> Model<B> {
    /// A model whose parameters are `host` (laid out as `ParamLayout::new(cfg)`).
    pub fn from_host(be: &B, cfg: BertConfig, host: &[B::F]) -> Result<Self> {
        cfg.validate()?;
        let layout = ParamLayout::new(&cfg);
        if host.len() != layout.total {
            return Err(Error::msg(format!(
                "parameter buffer has {} elements, the configuration needs {}",
                host.len(),
                layout.total
            )));
        }
        let mut params = be.upload(host)?;
        be.keep_bf16_copy(&mut params)?;
        let grads = be.alloc(layout.total)?;
        Ok(Model { cfg, layout, params, grads })
    }

    /// Host copy of all parameters.
    pub fn params_host(&self, be: &B) -> Result<Vec<B::F>> {
        be.download(be.view(&self.params))
    }

    /// Host copy of all gradients.
    pub fn grads_host(&self, be: &B) -> Result<Vec<B::F>> {
        be.download(be.view(&self.grads))
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self, be: &B) {
        be.zero(be.view_mut(&mut self.grads));
    }

    /// Forward pass over a packed batch: fills `acts`, returns the loss sum and correct count.
    pub fn forward(&self, be: &B, acts: &mut Acts<B>, batch: &DeviceBatch<B>, mode: Mode) -> Result<Output> {
        self.forward_ops(be, acts, batch, mode)?;
        self.output(be, acts, batch.layout.examples(), &batch.labels_host)
    }

    /// The loss sum and correct count of the last forward over `nb` examples with these labels
    /// (reads the losses and logits back: waits for the device).
    pub fn output(&self, be: &B, acts: &Acts<B>, nb: usize, labels: &[i32]) -> Result<Output> {
        let k = self.cfg.num_labels;
        let losses = be.download(be.slice(&acts.losses, 0..nb))?;
        let logits = be.download(be.slice(&acts.logits, 0..nb * k))?;
        let loss_sum: f64 = losses.iter().map(|x| x.to_f64()).sum();
        let correct = (0..nb).filter(|&i| argmax(&logits[i * k..(i + 1) * k]) as i32 == labels[i]).count();
        Ok(Output { loss_sum, correct, n: nb })
    }

    /// The per-example losses of the last forward (B,), on the device.
    pub fn losses<'a>(&self, be: &B, acts: &'a Acts<B>, nb: usize) -> B::Slice<'a> {
        be.slice(&acts.losses, 0..nb)
    }

    /// The logits of the last forward (B, K), on the device.
    pub fn logits<'a>(&self, be: &B, acts: &'a Acts<B>, nb: usize) -> B::Slice<'a> {
        be.slice(&acts.logits, 0..nb * self.cfg.num_labels)
    }

    /// The forward pass's ops, without reading anything back (see [`Model::forward`]).
    pub fn forward_ops(&self, be: &B, acts: &mut Acts<B>, batch: &DeviceBatch<B>, mode: Mode) -> Result<()> {
        let cfg = &self.cfg;
        let (c, f, nh, k) = (cfg.hidden, cfg.ffn, cfg.heads, cfg.num_labels);
        let (t, nb) = (batch.layout.t(), batch.layout.examples());
        let sites = Sites::new(mode, &batch.layout, c, nh);
        acts.ensure(be, cfg, &batch.layout)?;
        let r = &self.layout.ranges;
        let p = &self.params;
        let tc = 0..t * c;
        let tf = 0..t * f;

        be.embedding_forward(
            be.slice_mut(&mut acts.emb, tc.clone()),
            batch,
            be.slice(p, r.wte.clone()),
            be.slice(p, r.wse.clone()),
            be.slice(p, r.wpe.clone()),
            c,
        );
        if let Some((w, bias)) = &r.emb_ln {
            be.layernorm_forward(
                be.slice_mut(&mut acts.emb_ln, tc.clone()),
                be.slice_mut(&mut acts.x0, tc.clone()),
                be.slice_mut(&mut acts.emb_mean, 0..t),
                be.slice_mut(&mut acts.emb_rstd, 0..t),
                be.slice(&acts.emb, tc.clone()),
                None,
                be.slice(p, w.clone()),
                be.slice(p, bias.clone()),
                cfg.ln_eps,
                Dropout::OFF,
                t,
                c,
            );
            // x0 held the pre-norm sum (unused for a plain LayerNorm); now the dropped output.
            let d = if cfg.hf_extra_dropout { sites.rows(site::EMBEDDING) } else { Dropout::OFF };
            be.dropout_forward(be.slice_mut(&mut acts.x0, tc.clone()), be.slice(&acts.emb_ln, tc.clone()), d);
        }

        for l in 0..cfg.layers {
            let br = &r.blocks[l];
            let (prev, rest) = acts.blocks.split_at_mut(l);
            let a = &mut rest[0];
            let x: &B::Buf = match prev.last() {
                Some(pb) => &pb.out,
                None if r.emb_ln.is_some() => &acts.x0,
                None => &acts.emb,
            };
            be.matmul_forward(
                be.slice_mut(&mut a.qkv, 0..t * 3 * c),
                be.slice(x, tc.clone()),
                be.slice(p, br.qkv_weight.clone()),
                Some(be.slice(p, br.qkv_bias.clone())),
                t,
                c,
                3 * c,
            );
            be.attention_forward(
                be.slice_mut(&mut a.attn, tc.clone()),
                be.slice_mut(&mut a.att, 0..be.attention_saved_len(&batch.layout, nh, c)),
                be.slice(&a.qkv, 0..t * 3 * c),
                batch,
                nh,
                c,
                sites.attention(l),
            );
            be.matmul_forward(
                be.slice_mut(&mut a.proj, tc.clone()),
                be.slice(&a.attn, tc.clone()),
                be.slice(p, br.o_weight.clone()),
                Some(be.slice(p, br.o_bias.clone())),
                t,
                c,
                c,
            );
            be.layernorm_forward(
                be.slice_mut(&mut a.y, tc.clone()),
                be.slice_mut(&mut a.sum1, tc.clone()),
                be.slice_mut(&mut a.mean1, 0..t),
                be.slice_mut(&mut a.rstd1, 0..t),
                be.slice(x, tc.clone()),
                Some(be.slice(&a.proj, tc.clone())),
                be.slice(p, br.ln1_weight.clone()),
                be.slice(p, br.ln1_bias.clone()),
                cfg.ln_eps,
                sites.rows(site::addnorm1(l)),
                t,
                c,
            );
            be.matmul_act_forward(
                be.slice_mut(&mut a.h_pre, tf.clone()),
                be.slice_mut(&mut a.h, tf.clone()),
                be.slice(&a.y, tc.clone()),
                be.slice(p, br.fc1_weight.clone()),
                Some(be.slice(p, br.fc1_bias.clone())),
                t,
                c,
                f,
                cfg.activation,
            );
            be.matmul_forward(
                be.slice_mut(&mut a.ffn, tc.clone()),
                be.slice(&a.h, tf.clone()),
                be.slice(p, br.fc2_weight.clone()),
                Some(be.slice(p, br.fc2_bias.clone())),
                t,
                f,
                c,
            );
            be.layernorm_forward(
                be.slice_mut(&mut a.out, tc.clone()),
                be.slice_mut(&mut a.sum2, tc.clone()),
                be.slice_mut(&mut a.mean2, 0..t),
                be.slice_mut(&mut a.rstd2, 0..t),
                be.slice(&a.y, tc.clone()),
                Some(be.slice(&a.ffn, tc.clone())),
                be.slice(p, br.ln2_weight.clone()),
                be.slice(p, br.ln2_bias.clone()),
                cfg.ln_eps,
                sites.rows(site::addnorm2(l)),
                t,
                c,
            );
        }

        let bc = 0..nb * c;
        let last: &B::Buf = match acts.blocks.last() {
            Some(b) => &b.out,
            None if r.emb_ln.is_some() => &acts.x0,
            None => &acts.emb,
        };
        be.cls_forward(be.slice_mut(&mut acts.cls, bc.clone()), be.slice(last, tc.clone()), batch, c);
        be.matmul_forward(
            be.slice_mut(&mut acts.pool_pre, bc.clone()),
            be.slice(&acts.cls, bc.clone()),
            be.slice(p, r.pool_weight.clone()),
            Some(be.slice(p, r.pool_bias.clone())),
            nb,
            c,
            c,
        );
        be.activation_forward(
            be.slice_mut(&mut acts.pool, bc.clone()),
            be.slice(&acts.pool_pre, bc.clone()),
            Activation::Tanh,
        );
        let head_in: &B::Buf = if cfg.hf_extra_dropout {
            be.dropout_forward(
                be.slice_mut(&mut acts.pool_drop, bc.clone()),
                be.slice(&acts.pool, bc.clone()),
                sites.seqs(site::CLASSIFIER),
            );
            &acts.pool_drop
        } else {
            &acts.pool
        };
        be.matmul_forward(
            be.slice_mut(&mut acts.logits, 0..nb * k),
            be.slice(head_in, bc.clone()),
            be.slice(p, r.out_weight.clone()),
            Some(be.slice(p, r.out_bias.clone())),
            nb,
            c,
            k,
        );
        be.crossentropy_forward(
            be.slice_mut(&mut acts.losses, 0..nb),
            be.slice_mut(&mut acts.probs, 0..nb * k),
            be.slice(&acts.logits, 0..nb * k),
            batch,
            k,
        );
        Ok(())
    }

    /// Backward pass of `Σ losses` through the activations of the last forward; gradients of the
    /// parameters accumulate into `self.grads`.
    pub fn backward(&mut self, be: &B, acts: &mut Acts<B>, batch: &DeviceBatch<B>, mode: Mode) -> Result<()> {
        self.backward_with(be, acts, batch, mode, &mut |_, _, _| Ok(()))
    }

    /// The parameter ranges whose gradients [`Model::backward_with`] completes one after the
    /// other: the classifier head, then the blocks from the last to the first (each a contiguous
    /// run of the flat buffer; a group that is not is left out, to be taken with the rest).
    pub fn grad_stages(&self) -> Vec<Range<usize>> {
        let r = &self.layout.ranges;
        let span = |rs: &[&Range<usize>]| -> Option<Range<usize>> {
            let lo = rs.iter().map(|x| x.start).min()?;
            let hi = rs.iter().map(|x| x.end).max()?;
            (rs.iter().map(|x| x.len()).sum::<usize>() == hi - lo).then_some(lo..hi)
        };
        let mut v: Vec<Range<usize>> =
            span(&[&r.pool_weight, &r.pool_bias, &r.out_weight, &r.out_bias]).into_iter().collect();
        for b in r.blocks.iter().rev() {
            v.extend(span(&[
                &b.qkv_weight,
                &b.qkv_bias,
                &b.o_weight,
                &b.o_bias,
                &b.ln1_weight,
                &b.ln1_bias,
                &b.fc1_weight,
                &b.fc1_bias,
                &b.fc2_weight,
                &b.fc2_bias,
                &b.ln2_weight,
                &b.ln2_bias,
            ]));
        }
        v
    }

    /// [`Model::backward`], calling `ready(be, grads, range)` as soon as the gradients of each
    /// range of [`Model::grad_stages`] are complete, in that order (data parallel sums them while
    /// the layers below run their backward).
    pub fn backward_with(
        &mut self,
        be: &B,
        acts: &mut Acts<B>,
        batch: &DeviceBatch<B>,
        mode: Mode,
        ready: &mut GradsReady<'_, B>,
    ) -> Result<()> {
        // The ranges are announced only when every group is contiguous (always, with this
        // module's layout); otherwise the caller takes all of them after the backward.
        let stages = self.grad_stages();
        let head_ok = self.cfg.layers + 1 == stages.len();
        let mut stage = stages.into_iter();
        let cfg = self.cfg.clone();
        let (c, f, nh, k) = (cfg.hidden, cfg.ffn, cfg.heads, cfg.num_labels);
        let (t, nb) = (batch.layout.t(), batch.layout.examples());
        if acts.t_cap < t || acts.b_cap < nb {
            return Err(Error::msg("backward called without a matching forward"));
        }
        let sites = Sites::new(mode, &batch.layout, c, nh);
        let r = self.layout.ranges.clone();
        let p = &self.params;
        let g = &mut self.grads;
        let tc = 0..t * c;
        let tf = 0..t * f;
        let bc = 0..nb * c;
        let hf = r.emb_ln.is_some();
        let (mut dx_swaps, mut swapped_dpool) = (0usize, false);

        be.crossentropy_backward(
            be.slice_mut(&mut acts.dlogits, 0..nb * k),
            be.slice(&acts.probs, 0..nb * k),
            batch,
            k,
            1.0,
        );
        {
            let mut gs = be.split_mut(g, &[r.out_weight.clone(), r.out_bias.clone()]).into_iter();
            let (dw, db) = (gs.next(), gs.next());
            let (Some(dw), Some(db)) = (dw, db) else { return Err(Error::msg("internal: split_mut")) };
            let head_in = if cfg.hf_extra_dropout { &acts.pool_drop } else { &acts.pool };
            be.matmul_backward(
                Some(be.slice_mut(&mut acts.dpool, bc.clone())),
                false,
                dw,
                Some(db),
                be.slice(&acts.dlogits, 0..nb * k),
                be.slice(head_in, bc.clone()),
                be.slice(p, r.out_weight.clone()),
                nb,
                c,
                k,
            );
        }
        if cfg.hf_extra_dropout {
            // dpool currently holds ∂L/∂pool_drop; turn it into ∂L/∂pool (in dcls as scratch).
            be.dropout_backward(
                be.slice_mut(&mut acts.dcls, bc.clone()),
                be.slice(&acts.dpool, bc.clone()),
                sites.seqs(site::CLASSIFIER),
            );
            std::mem::swap(&mut acts.dcls, &mut acts.dpool);
            swapped_dpool = true;
        }
        be.activation_backward(
            be.slice_mut(&mut acts.dpool_pre, bc.clone()),
            be.slice(&acts.dpool, bc.clone()),
            be.slice(&acts.pool_pre, bc.clone()),
            be.slice(&acts.pool, bc.clone()),
            Activation::Tanh,
        );
        {
            let (dw, db) = split2(be, g, &r.pool_weight, &r.pool_bias)?;
            be.matmul_backward(
                Some(be.slice_mut(&mut acts.dcls, bc.clone())),
                false,
                dw,
                Some(db),
                be.slice(&acts.dpool_pre, bc.clone()),
                be.slice(&acts.cls, bc.clone()),
                be.slice(p, r.pool_weight.clone()),
                nb,
                c,
                c,
            );
        }
        if head_ok {
            if let Some(s) = stage.next() {
                ready(be, g, s)?;
            }
        }
        // ∂L/∂(last block output): zero except the <cls> rows.
        be.cls_backward(be.slice_mut(&mut acts.dx_a, tc.clone()), be.slice(&acts.dcls, bc.clone()), batch, c);

        for l in (0..cfg.layers).rev() {
            let br = &r.blocks[l];
            let (prev, rest) = acts.blocks.split_at(l);
            let a = &rest[0];
            let x: &B::Buf = match prev.last() {
                Some(pb) => &pb.out,
                None if hf => &acts.x0,
                None => &acts.emb,
            };
            // dx_a = ∂L/∂out (block output). AddNorm 2.
            {
                let (dw, db) = split2(be, g, &br.ln2_weight, &br.ln2_bias)?;
                be.layernorm_backward(
                    be.slice_mut(&mut acts.dy, tc.clone()),
                    Some(be.slice_mut(&mut acts.dsub, tc.clone())),
                    dw,
                    db,
                    be.slice(&acts.dx_a, tc.clone()),
                    be.slice(&a.sum2, tc.clone()),
                    be.slice(&a.mean2, 0..t),
                    be.slice(&a.rstd2, 0..t),
                    be.slice(p, br.ln2_weight.clone()),
                    sites.rows(site::addnorm2(l)),
                    t,
                    c,
                );
            }
            {
                // dh_pre = act'(h_pre) ⊙ (dsub·W2) (dh is scratch), dW2, db2.
                let (dw, db) = split2(be, g, &br.fc2_weight, &br.fc2_bias)?;
                be.matmul_backward_act(
                    be.slice_mut(&mut acts.dh_pre, tf.clone()),
                    be.slice_mut(&mut acts.dh, tf.clone()),
                    dw,
                    Some(db),
                    be.slice(&acts.dsub, tc.clone()),
                    be.slice(&a.h, tf.clone()),
                    be.slice(&a.h_pre, tf.clone()),
                    be.slice(p, br.fc2_weight.clone()),
                    t,
                    f,
                    c,
                    cfg.activation,
                );
            }
            {
                let (dw, db) = split2(be, g, &br.fc1_weight, &br.fc1_bias)?;
                be.matmul_backward(
                    Some(be.slice_mut(&mut acts.dy, tc.clone())),
                    true,
                    dw,
                    Some(db),
                    be.slice(&acts.dh_pre, tf.clone()),
                    be.slice(&a.y, tc.clone()),
                    be.slice(p, br.fc1_weight.clone()),
                    t,
                    c,
                    f,
                );
            }
            // AddNorm 1: dx_b = ∂L/∂x through the residual, dsub = ∂L/∂proj.
            {
                let (dw, db) = split2(be, g, &br.ln1_weight, &br.ln1_bias)?;
                be.layernorm_backward(
                    be.slice_mut(&mut acts.dx_b, tc.clone()),
                    Some(be.slice_mut(&mut acts.dsub, tc.clone())),
                    dw,
                    db,
                    be.slice(&acts.dy, tc.clone()),
                    be.slice(&a.sum1, tc.clone()),
                    be.slice(&a.mean1, 0..t),
                    be.slice(&a.rstd1, 0..t),
                    be.slice(p, br.ln1_weight.clone()),
                    sites.rows(site::addnorm1(l)),
                    t,
                    c,
                );
            }
            {
                let (dw, db) = split2(be, g, &br.o_weight, &br.o_bias)?;
                be.matmul_backward(
                    Some(be.slice_mut(&mut acts.dattn, tc.clone())),
                    false,
                    dw,
                    Some(db),
                    be.slice(&acts.dsub, tc.clone()),
                    be.slice(&a.attn, tc.clone()),
                    be.slice(p, br.o_weight.clone()),
                    t,
                    c,
                    c,
                );
            }
            be.attention_backward(
                be.slice_mut(&mut acts.dqkv, 0..t * 3 * c),
                be.slice(&acts.dattn, tc.clone()),
                be.slice(&a.attn, tc.clone()),
                be.slice(&a.att, 0..be.attention_saved_len(&batch.layout, nh, c)),
                be.slice(&a.qkv, 0..t * 3 * c),
                batch,
                nh,
                c,
                sites.attention(l),
            );
            {
                let (dw, db) = split2(be, g, &br.qkv_weight, &br.qkv_bias)?;
                be.matmul_backward(
                    Some(be.slice_mut(&mut acts.dx_b, tc.clone())),
                    true,
                    dw,
                    Some(db),
                    be.slice(&acts.dqkv, 0..t * 3 * c),
                    be.slice(x, tc.clone()),
                    be.slice(p, br.qkv_weight.clone()),
                    t,
                    c,
                    3 * c,
                );
            }
            if head_ok {
                if let Some(s) = stage.next() {
                    ready(be, g, s)?;
                }
            }
            // dx_b = ∂L/∂x is the next (lower) block's ∂L/∂out.
            std::mem::swap(&mut acts.dx_a, &mut acts.dx_b);
            dx_swaps += 1;
        }

        // dx_a = ∂L/∂(encoder input).
        if let Some((lw, lb)) = &r.emb_ln {
            if cfg.hf_extra_dropout {
                be.dropout_backward(
                    be.slice_mut(&mut acts.dx_b, tc.clone()),
                    be.slice(&acts.dx_a, tc.clone()),
                    sites.rows(site::EMBEDDING),
                );
                std::mem::swap(&mut acts.dx_a, &mut acts.dx_b);
                dx_swaps += 1;
            }
            let (dw, db) = split2(be, g, lw, lb)?;
            be.layernorm_backward(
                be.slice_mut(&mut acts.dx_b, tc.clone()),
                None,
                dw,
                db,
                be.slice(&acts.dx_a, tc.clone()),
                be.slice(&acts.emb, tc.clone()),
                be.slice(&acts.emb_mean, 0..t),
                be.slice(&acts.emb_rstd, 0..t),
                be.slice(p, lw.clone()),
                Dropout::OFF,
                t,
                c,
            );
            std::mem::swap(&mut acts.dx_a, &mut acts.dx_b);
            dx_swaps += 1;
        }
        let mut gs = if cfg.train_pos_embedding {
            be.split_mut(g, &[r.wpe.clone(), r.wte.clone(), r.wse.clone()])
        } else {
            be.split_mut(g, &[r.wte.clone(), r.wse.clone()])
        }
        .into_iter();
        let dwpe = if cfg.train_pos_embedding { gs.next() } else { None };
        let (Some(dwte), Some(dwse)) = (gs.next(), gs.next()) else {
            return Err(Error::msg("internal: split_mut"));
        };
        be.embedding_backward(dwte, dwse, dwpe, be.slice(&acts.dx_a, tc), batch, c);
        // The swapped scratch buffers go back to their places, so that every step addresses the
        // same memory in the same roles (a replayed step graph depends on it).
        if dx_swaps % 2 == 1 {
            std::mem::swap(&mut acts.dx_a, &mut acts.dx_b);
        }
        if swapped_dpool {
            std::mem::swap(&mut acts.dcls, &mut acts.dpool);
        }
        Ok(())
    }

    /// Host copy of the logits of the last forward: (B, K).
    pub fn logits_host(&self, be: &B, acts: &Acts<B>, nb: usize) -> Result<Vec<B::F>> {
        be.download(be.slice(&acts.logits, 0..nb * self.cfg.num_labels))
    }
}

fn split2<'a, B: Backend>(
    be: &B,
    g: &'a mut B::Buf,
    w: &std::ops::Range<usize>,
    b: &std::ops::Range<usize>,
) -> Result<(B::SliceMut<'a>, B::SliceMut<'a>)> {
    let mut it = be.split_mut(g, &[w.clone(), b.clone()]).into_iter();
    match (it.next(), it.next()) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err(Error::msg("internal: split_mut returned too few views")),
    }
}

/// Index of the first maximum (PyTorch's `argmax` tie rule), NaN never wins.
pub fn argmax<F: Float>(xs: &[F]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || (xs[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best
}

impl<B: Backend> Acts<B> {
    /// Empty activations; buffers are allocated by the first forward.
    pub fn new(be: &B, cfg: &BertConfig) -> Result<Self> {
        let z = || be.alloc(0);
        let mut blocks = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            blocks.push(BlockActs {
                qkv: z()?,
                att: z()?,
                attn: z()?,
                proj: z()?,
                sum1: z()?,
                mean1: z()?,
                rstd1: z()?,
                y: z()?,
                h_pre: z()?,
                h: z()?,
                ffn: z()?,
                sum2: z()?,
                mean2: z()?,
                rstd2: z()?,
                out: z()?,
            });
        }
        Ok(Acts {
            t_cap: 0,
            b_cap: 0,
            att_cap: 0,
            generation: 0,
            emb: z()?,
            emb_ln: z()?,
            emb_mean: z()?,
            emb_rstd: z()?,
            x0: z()?,
            blocks,
            cls: z()?,
            pool_pre: z()?,
            pool: z()?,
            pool_drop: z()?,
            logits: z()?,
            probs: z()?,
            losses: z()?,
            dx_a: z()?,
            dx_b: z()?,
            dy: z()?,
            dsub: z()?,
            dattn: z()?,
            dqkv: z()?,
            dh: z()?,
            dh_pre: z()?,
            dcls: z()?,
            dpool: z()?,
            dpool_pre: z()?,
            dlogits: z()?,
        })
    }

    /// How many times the buffers were reallocated: step graphs recorded before a change address
    /// buffers that are gone and must not be replayed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Grows the buffers to hold a batch of this layout (never shrinks).
    pub fn ensure(&mut self, be: &B, cfg: &BertConfig, layout: &BatchLayout) -> Result<()> {
        let (t, nb, att) = (layout.t(), layout.b(), be.attention_saved_len(layout, cfg.heads, cfg.hidden));
        if t > self.t_cap || att > self.att_cap || nb > self.b_cap {
            self.generation += 1;
        }
        let (c, f, k) = (cfg.hidden, cfg.ffn, cfg.num_labels);
        if t > self.t_cap {
            let t = t.next_power_of_two().max(t);
            for b in &mut self.blocks {
                b.qkv = be.alloc_act(t * 3 * c)?;
                b.attn = be.alloc_act(t * c)?;
                b.proj = be.alloc_act(t * c)?;
                b.sum1 = be.alloc_act(t * c)?;
                b.mean1 = be.alloc(t)?;
                b.rstd1 = be.alloc(t)?;
                b.y = be.alloc_act(t * c)?;
                b.h_pre = be.alloc_act(t * f)?;
                b.h = be.alloc_act(t * f)?;
                b.ffn = be.alloc_act(t * c)?;
                b.sum2 = be.alloc_act(t * c)?;
                b.mean2 = be.alloc(t)?;
                b.rstd2 = be.alloc(t)?;
                b.out = be.alloc_act(t * c)?;
            }
            self.emb = be.alloc_act(t * c)?;
            if cfg.embedding_layernorm {
                self.emb_ln = be.alloc_act(t * c)?;
                self.emb_mean = be.alloc(t)?;
                self.emb_rstd = be.alloc(t)?;
                self.x0 = be.alloc_act(t * c)?;
            }
            self.dx_a = be.alloc_act(t * c)?;
            self.dx_b = be.alloc_act(t * c)?;
            self.dy = be.alloc_act(t * c)?;
            self.dsub = be.alloc_act(t * c)?;
            self.dattn = be.alloc_act(t * c)?;
            self.dqkv = be.alloc_act(t * 3 * c)?;
            self.dh = be.alloc_act(t * f)?;
            self.dh_pre = be.alloc_act(t * f)?;
            self.t_cap = t;
        }
        if att > self.att_cap {
            for b in &mut self.blocks {
                b.att = be.alloc(att)?;
            }
            self.att_cap = att;
        }
        if nb > self.b_cap {
            self.cls = be.alloc(nb * c)?;
            self.pool_pre = be.alloc(nb * c)?;
            self.pool = be.alloc(nb * c)?;
            self.pool_drop = be.alloc(nb * c)?;
            self.logits = be.alloc(nb * k)?;
            self.probs = be.alloc(nb * k)?;
            self.losses = be.alloc(nb)?;
            self.dcls = be.alloc(nb * c)?;
            self.dpool = be.alloc(nb * c)?;
            self.dpool_pre = be.alloc(nb * c)?;
            self.dlogits = be.alloc(nb * k)?;
            self.b_cap = nb;
        }
        Ok(())
    }
}

/// PyTorch's default initialisation of every tensor, in f64 (cast by the caller):
/// Linear weight and bias ~ U(-1/√in, 1/√in) (kaiming_uniform with a = √5), `nn.Embedding` and
/// d2l's positional table ~ N(0, 1), LayerNorm weight 1 and bias 0. Each tensor draws from its
/// own stream, so re-initialising one tensor ([`init_output_layer`]) gives the same values.
pub fn init_params(layout: &ParamLayout, seed: u64) -> Vec<f64> {
    let mut out = vec![0.0; layout.total];
    for i in 0..layout.entries.len() {
        init_entry(layout, i, &mut out, seed);
    }
    out
}

/// Initialises entry `i` of `layout` inside `params` (see [`init_params`]).
fn init_entry(layout: &ParamLayout, i: usize, params: &mut [f64], seed: u64) {
    let e = &layout.entries[i];
    let mut rng = HostRng::new(seed, 1000 + i as u32);
    let dst = &mut params[e.range()];
    let name = e.name.as_str();
    if name.ends_with("embedding") || name.ends_with("embedding.weight") {
        dst.iter_mut().for_each(|x| *x = rng.normal());
    } else if name.contains(".ln.") || name.contains("embedding_norm") {
        let v = if name.ends_with("weight") { 1.0 } else { 0.0 };
        dst.iter_mut().for_each(|x| *x = v);
    } else {
        // Linear: fan_in is the last dim of the weight; biases use their weight's fan_in.
        let fan_in = if name.ends_with("weight") {
            *e.shape.last().unwrap_or(&1)
        } else {
            let wname = format!("{}weight", name.trim_end_matches("bias"));
            layout.get(&wname).and_then(|w| w.shape.last().copied()).unwrap_or(1)
        };
        let bound = 1.0 / (fan_in as f64).sqrt();
        dst.iter_mut().for_each(|x| *x = (2.0 * rng.uniform() - 1.0) * bound);
    }
}

/// Initialises the classifier's new `output` layer (used when a checkpoint lacks it), with the
/// same values [`init_params`] gives it.
pub fn init_output_layer(layout: &ParamLayout, params: &mut [f64], seed: u64) {
    for i in 0..layout.entries.len() {
        if layout.entries[i].name.starts_with("output.") {
            init_entry(layout, i, params, seed);
        }
    }
}

/// Casts f64 host parameters to the backend's scalar.
pub fn cast_params<F: Float>(host: &[f64]) -> Vec<F> {
    host.iter().map(|&x| <F as Float>::from_f64(x)).collect()
}
