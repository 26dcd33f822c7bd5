//! The Backend trait: every tensor operation the model needs, as `<op>_forward` / `<op>_backward`
//! pairs over packed, unpadded batches. `model/bert.rs` is written once against this trait.
//!
//! Conventions (see the dimension legend in `lib.rs`):
//! - matrices are row-major; Linear weights are PyTorch-style `(OC, IC)` and `y = x·Wᵀ + b`;
//! - parameter gradients **accumulate** (`+=`); activation gradients **overwrite** unless the
//!   argument says otherwise;
//! - every shape is in the argument's doc comment.

pub mod cpu;
pub mod gpu;

use crate::error::Result;
use crate::float::Float;
use crate::rng::Dropout;
use std::ops::Range;

/// Element-wise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(x, 0) (d2l's FFN).
    Relu,
    /// Exact erf GELU (Hugging Face `gelu`).
    Gelu,
    /// tanh-approximated GELU (Hugging Face `gelu_new`).
    GeluTanh,
    /// tanh (the pooler).
    Tanh,
}

/// Where a packed batch sits in a larger one it is a shard of (data parallel: each rank runs a
/// contiguous run of the whole batch's sequences): the rows, sequences and `Σ len²` before it.
/// It shifts the shard's dropout element indices ([`crate::rng::Dropout::offset`]) so that the
/// shard drops the units the whole batch would. Zero for a batch of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// Tokens (rows of every (T, ·) tensor) before the shard.
    pub rows: usize,
    /// Sequences before the shard.
    pub seqs: usize,
    /// `Σ len²` of the sequences before the shard.
    pub att: usize,
}

/// The host-side description of a packed batch, shared by every backend.
///
/// Sequence `b` occupies rows `cu_seqlens[b]..cu_seqlens[b+1]` of every `(T, ·)` tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchLayout {
    /// (B+1,) prefix sums of sequence lengths; `cu_seqlens[B] == T`.
    pub cu_seqlens: Vec<usize>,
    /// (B+1,) prefix sums of `len_b²`: sequence `b`'s attention matrices for head `h` start at
    /// `nh * att_offsets[b] + h * len_b²` in the `att` buffer.
    pub att_offsets: Vec<usize>,
    /// The leading sequences that are examples (with a label, gathered by the classifier): all
    /// of them, except after [`BatchLayout::padded`], whose last sequence is padding.
    pub examples: usize,
    /// The batch's place in the whole batch it is a shard of (see [`Origin`]).
    pub origin: Origin,
}

impl BatchLayout {
    /// Layout for sequences of the given lengths.
    pub fn new(lens: &[usize]) -> Self {
        let mut cu = Vec::with_capacity(lens.len() + 1);
        let mut att = Vec::with_capacity(lens.len() + 1);
        cu.push(0);
        att.push(0);
        for &l in lens {
            cu.push(cu.last().copied().unwrap_or(0) + l);
            att.push(att.last().copied().unwrap_or(0) + l * l);
        }
        BatchLayout { cu_seqlens: cu, att_offsets: att, examples: lens.len(), origin: Origin::default() }
    }

    /// Layout for sequences of the given lengths followed by one padding sequence of `pad`
    /// tokens (none when `pad` is 0), which is no example: it fills a packed batch up to a fixed
    /// length (a step graph's bucket) and, attending only to itself and gathered by nothing, gets
    /// no gradient and changes no other sequence's result.
    pub fn padded(lens: &[usize], pad: usize) -> Self {
        let mut all = lens.to_vec();
        if pad > 0 {
            all.push(pad);
        }
        BatchLayout { examples: lens.len(), ..Self::new(&all) }
    }

    /// The same layout as a shard at `origin` of a larger batch.
    pub fn with_origin(self, origin: Origin) -> Self {
        BatchLayout { origin, ..self }
    }

    /// Number of examples (sequences with a label), B without the padding sequence.
    pub fn examples(&self) -> usize {
        self.examples.min(self.b())
    }
    /// Number of sequences B.
    pub fn b(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }
    /// Total number of tokens T.
    pub fn t(&self) -> usize {
        self.cu_seqlens.last().copied().unwrap_or(0)
    }
    /// Length of sequence `b`.
    pub fn len(&self, b: usize) -> usize {
        self.cu_seqlens[b + 1] - self.cu_seqlens[b]
    }
    /// Whether the batch has no sequences.
    pub fn is_empty(&self) -> bool {
        self.b() == 0
    }
    /// Elements of the attention-probability buffer for `nh` heads.
    pub fn att_len(&self, nh: usize) -> usize {
        nh * self.att_offsets.last().copied().unwrap_or(0)
    }
}

/// A packed batch resident on a backend: host layout plus the integer inputs on the device.
pub struct DeviceBatch<B: Backend + ?Sized> {
    /// Host copy of the layout.
    pub layout: BatchLayout,
    /// (T,) token ids.
    pub tokens: B::IBuf,
    /// (T,) segment ids in {0, 1}.
    pub segments: B::IBuf,
    /// (T,) position ids (0..len_b per sequence).
    pub positions: B::IBuf,
    /// (B+1,) prefix sums of sequence lengths.
    pub cu_seqlens: B::IBuf,
    /// (B+1,) prefix sums of squared lengths (see [`BatchLayout::att_offsets`]).
    pub att_offsets: B::IBuf,
    /// (B,) labels in {0, 1, 2}.
    pub labels: B::IBuf,
    /// Host copy of the labels.
    pub labels_host: Vec<i32>,
}

/// Hyper-parameters of one Adam/AdamW step, with the bias corrections computed on the host in
/// f64 exactly as PyTorch's `_single_tensor_adam` does.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Weight decay (L2 added to the gradient for Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// AdamW (decoupled weight decay) instead of Adam.
    pub decoupled: bool,
    /// Step number, from 1.
    pub t: u64,
}

impl AdamStep {
    /// `lr / (1 - β1^t)`.
    pub fn step_size(&self) -> f64 {
        self.lr / (1.0 - self.beta1.powf(self.t as f64))
    }
    /// `sqrt(1 - β2^t)`.
    pub fn bias_correction2_sqrt(&self) -> f64 {
        (1.0 - self.beta2.powf(self.t as f64)).sqrt()
    }
}

/// Slots of a backend's metrics ring ([`Backend::metrics_push`]): a run reads the queued metrics
/// at least this often.
pub const METRICS_SLOTS: usize = 1024;

/// The operations of the model, implemented by every backend.
pub trait Backend {
    /// Storage scalar of parameters and activations (CPU: f32 or f64).
    type F: Float;
    /// An owned device buffer of `F`.
    type Buf: Send;
    /// An owned device buffer of `i32`.
    type IBuf: Send;
    /// A shared view of part of a `Buf`.
    type Slice<'a>: Copy
    where
        Self: 'a;
    /// A mutable view of part of a `Buf`.
    type SliceMut<'a>
    where
        Self: 'a;

    /// A recorded training step (a CUDA graph, see [`Backend::graph_capture`]); `()` where the
    /// backend records none.
    type Graph: Send;

    /// Human-readable device name, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------------------------
    /// A zeroed buffer of `n` elements.
    fn alloc(&self, n: usize) -> Result<Self::Buf>;
    /// A buffer holding `host`.
    fn upload(&self, host: &[Self::F]) -> Result<Self::Buf>;
    /// A zeroed buffer of `n` activations or activation gradients, stored as the backend keeps
    /// them: the GPU with bf16 storage as bf16 ([`gpu::DType`]), everything else as
    /// [`Backend::alloc`]. Views of it read and write `F` as any other buffer's.
    fn alloc_act(&self, n: usize) -> Result<Self::Buf> {
        self.alloc(n)
    }
    /// An activation buffer ([`Backend::alloc_act`]) holding `host`, rounded to its storage type.
    fn upload_act(&self, host: &[Self::F]) -> Result<Self::Buf> {
        self.upload(host)
    }
    /// Bytes per stored activation element ([`Backend::alloc_act`]): 2 with bf16 storage.
    fn act_bytes(&self) -> usize {
        std::mem::size_of::<Self::F>()
    }
    /// Keeps a bf16 copy of parameter buffer `params` for products on bf16 activations, written
    /// again by every [`Backend::adam_update`] / [`Backend::adam_update_rows`] in the same pass as
    /// the parameters (the GPU with bf16 storage). Parameters change only through those ops after
    /// this call. Nothing elsewhere.
    fn keep_bf16_copy(&self, params: &mut Self::Buf) -> Result<()> {
        let _ = params;
        Ok(())
    }
    /// Sums `buf` in place over the ranks of `comm`, a device communicator (NCCL on CUDA) of this
    /// backend's kind, on the device. `Ok(false)`: this backend has none (the caller sums through
    /// the host).
    fn device_all_reduce(&self, buf: Self::SliceMut<'_>, comm: &dyn std::any::Any) -> Result<bool> {
        let _ = (buf, comm);
        Ok(false)
    }
    /// Later ops wait for the sums [`Backend::device_all_reduce`] issued (which may run beside
    /// the backward); a no-op where they are synchronous.
    fn collectives_wait(&self) -> Result<()> {
        Ok(())
    }
    /// Copies `host` into the elements of `dst` (same length; rounded to a bf16 view's storage).
    fn upload_into(&self, dst: Self::SliceMut<'_>, host: &[Self::F]) -> Result<()>;
    /// A device copy of integer data.
    fn upload_i32(&self, host: &[i32]) -> Result<Self::IBuf>;
    /// Host copy of a view.
    fn download(&self, s: Self::Slice<'_>) -> Result<Vec<Self::F>>;
    /// Length of a buffer.
    fn buf_len(&self, b: &Self::Buf) -> usize;
    /// A view of a whole buffer.
    fn view<'a>(&self, b: &'a Self::Buf) -> Self::Slice<'a>;
    /// A view of `r` of a buffer.
    fn slice<'a>(&self, b: &'a Self::Buf, r: Range<usize>) -> Self::Slice<'a>;
    /// A mutable view of a whole buffer.
    fn view_mut<'a>(&self, b: &'a mut Self::Buf) -> Self::SliceMut<'a>;
    /// A mutable view of `r` of a buffer.
    fn slice_mut<'a>(&self, b: &'a mut Self::Buf, r: Range<usize>) -> Self::SliceMut<'a>;
    /// A shorter-lived mutable view of the same elements.
    fn reborrow_mut<'a>(&self, s: &'a mut Self::SliceMut<'_>) -> Self::SliceMut<'a>;
    /// A shared view of a mutable view's elements, while it is borrowed.
    fn as_slice<'a>(&self, s: &'a Self::SliceMut<'_>) -> Self::Slice<'a>;
    /// Disjoint mutable views of a buffer; `ranges` must be sorted and non-overlapping.
    fn split_mut<'a>(&self, b: &'a mut Self::Buf, ranges: &[Range<usize>]) -> Vec<Self::SliceMut<'a>>;
    /// Sets a view to zero.
    fn zero(&self, s: Self::SliceMut<'_>);

    // ---- embedding ----------------------------------------------------------------------
    /// `out[i] = wte[tokens[i]] + wse[segments[i]] + wpe[positions[i]]`.
    /// out (T,C); wte (V,C); wse (S,C); wpe (P,C).
    #[allow(clippy::too_many_arguments)]
    fn embedding_forward(
        &self,
        out: Self::SliceMut<'_>,
        batch: &DeviceBatch<Self>,
        wte: Self::Slice<'_>,
        wse: Self::Slice<'_>,
        wpe: Self::Slice<'_>,
        c: usize,
    );
    /// Scatter-adds dout (T,C) into dwte (V,C), dwse (S,C) and, unless frozen, dwpe (P,C).
    fn embedding_backward(
        &self,
        dwte: Self::SliceMut<'_>,
        dwse: Self::SliceMut<'_>,
        dwpe: Option<Self::SliceMut<'_>>,
        dout: Self::Slice<'_>,
        batch: &DeviceBatch<Self>,
        c: usize,
    );

    // ---- linear -------------------------------------------------------------------------
    /// out (N,OC) = inp (N,IC) · weight (OC,IC)ᵀ + bias (OC).
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward(
        &self,
        out: Self::SliceMut<'_>,
        inp: Self::Slice<'_>,
        weight: Self::Slice<'_>,
        bias: Option<Self::Slice<'_>>,
        n: usize,
        ic: usize,
        oc: usize,
    );
    /// out (N,OC) = act(inp (N,IC) · weight (OC,IC)ᵀ + bias (OC)): a Linear layer and its
    /// activation. `pre` (N,OC) receives the pre-activation for [`Backend::activation_backward`]
    /// when `act` needs it there; for ReLU, whose backward reads only `out`, a backend may fuse
    /// the two (the GPU: one cuBLASLt product with the bias and ReLU in its epilogue) and leave
    /// `pre` unwritten, or holding what its [`Backend::matmul_backward_act`] needs instead (the
    /// GPU: ReLU's bit mask).
    #[allow(clippy::too_many_arguments)]
    fn matmul_act_forward(
        &self,
        pre: Self::SliceMut<'_>,
        out: Self::SliceMut<'_>,
        inp: Self::Slice<'_>,
        weight: Self::Slice<'_>,
        bias: Option<Self::Slice<'_>>,
        n: usize,
        ic: usize,
        oc: usize,
        act: Activation,
    ) {
        let mut pre = pre;
        self.matmul_forward(self.reborrow_mut(&mut pre), inp, weight, bias, n, ic, oc);
        self.activation_forward(out, self.as_slice(&pre), act);
    }
    /// The backward of a Linear layer whose input `act_out` (N,IC) is `act(pre)` from
    /// [`Backend::matmul_act_forward`]: dinp (N,IC) = act'(pre) ⊙ (dout·weight), overwritten —
    /// the gradient with respect to `pre` — and, as [`Backend::matmul_backward`], dweight (OC,IC)
    /// += doutᵀ·act_out, dbias (OC) += Σ_rows dout. `dact` (N,IC) is scratch. For ReLU after a
    /// fused forward the GPU applies ReLU's mask inside the product (`pre` then holds the mask).
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward_act(
        &self,
        dinp: Self::SliceMut<'_>,
        dact: Self::SliceMut<'_>,
        dweight: Self::SliceMut<'_>,
        dbias: Option<Self::SliceMut<'_>>,
        dout: Self::Slice<'_>,
        act_out: Self::Slice<'_>,
        pre: Self::Slice<'_>,
        weight: Self::Slice<'_>,
        n: usize,
        ic: usize,
        oc: usize,
        act: Activation,
    ) {
        let mut dact = dact;
        self.matmul_backward(
            Some(self.reborrow_mut(&mut dact)),
            false,
            dweight,
            dbias,
            dout,
            act_out,
            weight,
            n,
            ic,
            oc,
        );
        self.activation_backward(dinp, self.as_slice(&dact), pre, act_out, act);
    }
    /// dinp (N,IC) = dout·weight (overwritten, or added when `accumulate_dinp`);
    /// dweight (OC,IC) += doutᵀ·inp; dbias (OC) += Σ_rows dout.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward(
        &self,
        dinp: Option<Self::SliceMut<'_>>,
        accumulate_dinp: bool,
        dweight: Self::SliceMut<'_>,
        dbias: Option<Self::SliceMut<'_>>,
        dout: Self::Slice<'_>,
        inp: Self::Slice<'_>,
        weight: Self::Slice<'_>,
        n: usize,
        ic: usize,
        oc: usize,
    );

    // ---- attention ----------------------------------------------------------------------
    /// Multi-head scaled dot-product attention over each packed sequence, d2l semantics: keys
    /// beyond a sequence never enter its softmax; dropout on the probabilities.
    /// qkv (T,3C) holds [Q | K | V], head h in columns h·hs..(h+1)·hs of each; out (T,C);
    /// att ([`Backend::attention_saved_len`] elements) receives what backward needs: the
    /// pre-dropout probabilities (nh·Σ len²), or with flash attention the row log-sum-exps (nh·T).
    /// Elements of the `att` buffer that [`Backend::attention_forward`] fills for backward.
    fn attention_saved_len(&self, layout: &BatchLayout, nh: usize, c: usize) -> usize {
        let _ = c;
        layout.att_len(nh)
    }
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: Self::SliceMut<'_>,
        att: Self::SliceMut<'_>,
        qkv: Self::Slice<'_>,
        batch: &DeviceBatch<Self>,
        nh: usize,
        c: usize,
        dropout: Dropout,
    );
    /// dqkv (T,3C) overwritten from dout (T,C), the forward's out (T,C), the saved att and qkv.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dqkv: Self::SliceMut<'_>,
        dout: Self::Slice<'_>,
        out: Self::Slice<'_>,
        att: Self::Slice<'_>,
        qkv: Self::Slice<'_>,
        batch: &DeviceBatch<Self>,
        nh: usize,
        c: usize,
        dropout: Dropout,
    );

    // ---- AddNorm ------------------------------------------------------------------------
    /// d2l's AddNorm: `out = LayerNorm(dropout(sub) + res)` over rows of length C.
    /// out, sum (T,C) (sum = the pre-norm input, saved); mean, rstd (T,); weight, bias (C,).
    /// With `sub = None` this is a plain LayerNorm of `res` (HF embedding LayerNorm).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        out: Self::SliceMut<'_>,
        sum: Self::SliceMut<'_>,
        mean: Self::SliceMut<'_>,
        rstd: Self::SliceMut<'_>,
        res: Self::Slice<'_>,
        sub: Option<Self::Slice<'_>>,
        weight: Self::Slice<'_>,
        bias: Self::Slice<'_>,
        eps: f64,
        dropout: Dropout,
        t: usize,
        c: usize,
    );
    /// dres (T,C) overwritten with ∂L/∂sum; dsub (T,C) overwritten with the dropout applied;
    /// dweight, dbias (C,) accumulate.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dres: Self::SliceMut<'_>,
        dsub: Option<Self::SliceMut<'_>>,
        dweight: Self::SliceMut<'_>,
        dbias: Self::SliceMut<'_>,
        dout: Self::Slice<'_>,
        sum: Self::Slice<'_>,
        mean: Self::Slice<'_>,
        rstd: Self::Slice<'_>,
        weight: Self::Slice<'_>,
        dropout: Dropout,
        t: usize,
        c: usize,
    );

    // ---- activations --------------------------------------------------------------------
    /// out = act(inp), element-wise over n elements.
    fn activation_forward(&self, out: Self::SliceMut<'_>, inp: Self::Slice<'_>, act: Activation);
    /// dinp = act'(inp) · dout (overwrites); `out` is the forward output (used by ReLU/tanh).
    fn activation_backward(
        &self,
        dinp: Self::SliceMut<'_>,
        dout: Self::Slice<'_>,
        inp: Self::Slice<'_>,
        out: Self::Slice<'_>,
        act: Activation,
    );

    // ---- <cls> gather -------------------------------------------------------------------
    /// out (B,C) = x (T,C) at the first row of each example sequence ([`BatchLayout::examples`]).
    fn cls_forward(&self, out: Self::SliceMut<'_>, x: Self::Slice<'_>, batch: &DeviceBatch<Self>, c: usize);
    /// dx (T,C) = 0 except the first row of each example sequence, which gets dout (B,C).
    fn cls_backward(
        &self,
        dx: Self::SliceMut<'_>,
        dout: Self::Slice<'_>,
        batch: &DeviceBatch<Self>,
        c: usize,
    );

    // ---- dropout (HF sites) -------------------------------------------------------------
    /// out = dropout(inp) (inverted scaling); with `Dropout::OFF` a copy.
    fn dropout_forward(&self, out: Self::SliceMut<'_>, inp: Self::Slice<'_>, dropout: Dropout);
    /// dinp = dout · mask / (1-p).
    fn dropout_backward(&self, dinp: Self::SliceMut<'_>, dout: Self::Slice<'_>, dropout: Dropout);

    // ---- loss ---------------------------------------------------------------------------
    /// Softmax cross-entropy per example: losses (B,) = `-log softmax(logits)[label]`;
    /// probs (B,K) saved for backward. logits (B,K).
    fn crossentropy_forward(
        &self,
        losses: Self::SliceMut<'_>,
        probs: Self::SliceMut<'_>,
        logits: Self::Slice<'_>,
        batch: &DeviceBatch<Self>,
        k: usize,
    );
    /// dlogits (B,K) = scale · (probs − onehot(label)) (gradient of `scale · Σ losses`).
    fn crossentropy_backward(
        &self,
        dlogits: Self::SliceMut<'_>,
        probs: Self::Slice<'_>,
        batch: &DeviceBatch<Self>,
        k: usize,
        scale: f64,
    );

    // ---- optimizer ----------------------------------------------------------------------
    /// One Adam/AdamW step on a parameter range with PyTorch's exact arithmetic:
    /// m ← lerp(m, g, 1-β1); v ← β2·v + (1-β2)·g²; p ← p − step_size · m / (√v / bc2 + ε).
    fn adam_update(
        &self,
        params: Self::SliceMut<'_>,
        grads: Self::Slice<'_>,
        m: Self::SliceMut<'_>,
        v: Self::SliceMut<'_>,
        step: &AdamStep,
    );
    /// [`Backend::adam_update`] restricted to the rows `rows` (sorted, distinct) of (R, row_len)
    /// tables. Exact when every other row has zero gradient and zero moments and there is no
    /// weight decay: PyTorch's step leaves such a row unchanged (m, v stay 0; p moves by 0/ε).
    #[allow(clippy::too_many_arguments)]
    fn adam_update_rows(
        &self,
        params: Self::SliceMut<'_>,
        grads: Self::Slice<'_>,
        m: Self::SliceMut<'_>,
        v: Self::SliceMut<'_>,
        rows: &[u32],
        row_len: usize,
        step: &AdamStep,
    );
    /// Sets the rows `rows` of a (R, row_len) table to zero.
    fn zero_rows(&self, buf: Self::SliceMut<'_>, rows: &[u32], row_len: usize);

    // ---- step graphs --------------------------------------------------------------------
    /// Whether a training step of a model with `nh` heads over `c` columns can be recorded once
    /// and replayed ([`Backend::graph_capture`]): the launch shapes of every op must depend only on
    /// the packed length and the number of sequences (on the GPU: with flash attention).
    fn graphs_supported(&self, nh: usize, c: usize) -> bool {
        let _ = (nh, c);
        false
    }
    /// Records the ops `f` issues into a new graph without running them (replay it to run).
    fn graph_capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Self::Graph> {
        let _ = f;
        Err(crate::error::Error::msg(format!("{} records no step graphs", self.name())))
    }
    /// Re-issues a step's ops into `graph` (new kernel arguments and uploaded bytes); nothing
    /// runs. `Ok(Some(why))`: the ops differ from the graph's, which must be captured anew.
    fn graph_update(&self, graph: &Self::Graph, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<String>> {
        let _ = (graph, f);
        Err(crate::error::Error::msg(format!("{} records no step graphs", self.name())))
    }
    /// Runs a recorded step.
    fn graph_replay(&self, graph: &Self::Graph) -> Result<()> {
        let _ = graph;
        Err(crate::error::Error::msg(format!("{} records no step graphs", self.name())))
    }
    /// From now on, [`Backend::adam_update`] and [`Backend::adam_update_rows`] do nothing when any
    /// of `losses` is not finite (a flag computed on the device, for steps that do not read the
    /// loss before the optimizer: graphs). The CPU checks the loss on the host instead.
    fn loss_guard(&self, losses: Self::Slice<'_>) {
        let _ = losses;
    }
    /// Ends [`Backend::loss_guard`].
    fn loss_guard_clear(&self) {}
    /// What the device reports about its fused products (the GPU: per cuBLASLt epilogue, the
    /// products that ran fused out of those asked), if anything.
    fn fused_report(&self) -> Option<String> {
        None
    }
    /// Writes the metrics of the forward just issued into slot `slot` (< [`METRICS_SLOTS`]) of the
    /// backend's ring on the device — the loss sum (`Σ losses` in f64, in order) and the correct
    /// count (argmax of `logits` (B,K) against the batch's labels), as
    /// [`crate::model::bert::Model::output`] computes them — to be read later with
    /// [`Backend::metrics_read`] rather than after every step. `Ok(false)`: this backend has no
    /// such ring (the CPU reads them after each step).
    fn metrics_push(
        &self,
        slot: usize,
        losses: Self::Slice<'_>,
        logits: Self::Slice<'_>,
        batch: &DeviceBatch<Self>,
        k: usize,
    ) -> Result<bool> {
        let _ = (slot, losses, logits, batch, k);
        Ok(false)
    }
    /// Slots `first, first + 1, …` (`count` of them, wrapping) of the metrics ring:
    /// `(loss sum, correct, examples)` each (waits for the device).
    fn metrics_read(&self, first: usize, count: usize) -> Result<Vec<(f64, usize, usize)>> {
        let _ = (first, count);
        Ok(Vec::new())
    }

    /// Waits for the work issued so far and returns the first error of any earlier op (a GPU's
    /// ops cannot return their device errors). Nothing to wait for on the CPU.
    /// Starts timing each op family (the GPU backends record an event after every op); Ok(false)
    /// where the backend cannot time ops.
    fn breakdown_start(&self) -> Result<bool> {
        Ok(false)
    }
    /// Stops timing and returns the milliseconds spent per op family since
    /// [`Backend::breakdown_start`] (the stream's time from one op's end to the next op's end, so
    /// work between ops that records no mark of its own, such as pool zeroing, counts towards the
    /// next op), in the order the families first ran.
    fn breakdown_take(&self) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
