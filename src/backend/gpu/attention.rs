//! Launchers of kernels/attention.cu: masked softmax attention over packed sequences.
//!
//! One block per (sequence, head): grid (B, NH), [`AttentionLaunch::threads`] threads (a multiple
//! of 32). Dynamic shared memory is sized from the longest sequence of the host layout, within
//! [`AttentionLaunch::shared_limit`]:
//! - forward: one row of L floats per warp (`nwarps·max_len` floats); above the limit the kernel
//!   uses each row of `att` in global memory as the row buffer instead;
//! - backward: the whole dS matrix (`max_len·(max_len|1)` floats) when it fits the limit, else the
//!   fallback (`(1 + nwarps)·max_len` floats: the row sums r and one dS row per warp), which
//!   recomputes the columns of dS instead of storing them. The kernel decides per block, so the
//!   short sequences of a batch with one long one still keep dS in shared memory.

use super::device::{Device, KArg, LaunchCfg};
use super::launch::{dropout_args, i, need, p, pi, pm};
use super::memory::{GView, GViewMut};
use super::Gpu;
use crate::backend::{BatchLayout, DeviceBatch};
use crate::error::Error;
use crate::rng::Dropout;

/// Default budget of dynamic shared memory per block: dS stays in shared memory up to 156 tokens.
/// Above the 48 KiB CUDA default, so the CUDA device opts the kernel in
/// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`); every sm_80+ GPU allows at least 99 KiB.
pub const SHARED_LIMIT: usize = 96 * 1024;

/// Block shape and shared-memory budget of the attention kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionLaunch {
    /// Threads per block: a multiple of 32 in 32..=512 (the backward kernel uses up to ~96
    /// registers per thread on sm_80, too many for 1024-thread blocks).
    pub threads: u32,
    /// Bytes of dynamic shared memory above which the kernels take their global-memory paths
    /// (the backward fallback itself still needs `4·(1 + threads/32)·max_len` bytes).
    pub shared_limit: usize,
}

impl Default for AttentionLaunch {
    fn default() -> Self {
        AttentionLaunch { threads: 128, shared_limit: SHARED_LIMIT }
    }
}

impl AttentionLaunch {
    fn warps(&self) -> usize {
        self.threads as usize / 32
    }

    /// Floats of dynamic shared memory for the forward kernel (0: rows of att are the buffers).
    pub fn forward_shared_floats(&self, max_len: usize) -> usize {
        let rows = self.warps() * max_len;
        if rows * 4 <= self.shared_limit {
            rows
        } else {
            0
        }
    }

    /// Floats of dynamic shared memory for the backward kernel: dS whole if it fits, else the
    /// fallback's row sums and per-warp rows.
    pub fn backward_shared_floats(&self, max_len: usize) -> usize {
        let whole = max_len * (max_len | 1);
        if whole * 4 <= self.shared_limit {
            whole
        } else {
            (1 + self.warps()) * max_len
        }
    }
}

/// Checks what both kernels rely on: the block shape, `C % NH == 0`, a consistent layout, the
/// sizes of att and of every `(elements, elements per token row, name)` buffer, and indices that
/// fit the kernels' `int`s. Returns (B, the longest sequence).
fn check<D: Device>(
    op: &str,
    cfg: &AttentionLaunch,
    batch: &DeviceBatch<Gpu<D>>,
    (nh, c): (usize, usize),
    att: usize,
    bufs: &[(usize, usize, &str)],
) -> (usize, usize) {
    let lay: &BatchLayout = &batch.layout;
    assert!(
        cfg.threads % 32 == 0 && (32..=512).contains(&cfg.threads),
        "{op}: {} threads per block; the kernels need a multiple of 32 in 32..=512",
        cfg.threads
    );
    assert!(nh > 0 && c % nh == 0, "{op}: C = {c} is not a multiple of the {nh} heads");
    let nb = lay.b();
    assert!(
        lay.cu_seqlens.first().is_none_or(|&x| x == 0)
            && lay.att_offsets.first().is_none_or(|&x| x == 0)
            && lay.att_offsets.len() == lay.cu_seqlens.len(),
        "{op}: inconsistent layout ({} cu_seqlens from {:?}, {} att_offsets from {:?})",
        lay.cu_seqlens.len(),
        lay.cu_seqlens.first(),
        lay.att_offsets.len(),
        lay.att_offsets.first()
    );
    let mut max_len = 0;
    for b in 0..nb {
        let (s, e) = (lay.cu_seqlens[b], lay.cu_seqlens[b + 1]);
        assert!(e >= s, "{op}: cu_seqlens decreases at sequence {b} ({s} then {e})");
        let len = e - s;
        assert!(
            lay.att_offsets[b + 1].checked_sub(lay.att_offsets[b]) == Some(len * len),
            "{op}: att_offsets[{}] - att_offsets[{b}] is not len² = {} (layout inconsistent)",
            b + 1,
            len * len
        );
        max_len = max_len.max(len);
    }
    need(op, "cu_seqlens", batch.cu_seqlens.len(), nb + 1);
    need(op, "att_offsets", batch.att_offsets.len(), nb + 1);
    let t = lay.t();
    let (tot, limit) = (lay.att_offsets.last().copied().unwrap_or(0), i32::MAX as usize);
    assert!(
        t <= limit && 3 * c <= limit && tot <= limit && nb <= limit && nh <= 65_535,
        "{op}: T = {t}, C = {c}, Σ len² = {tot}, B = {nb} or NH = {nh} exceeds the kernels' 32-bit indices"
    );
    need(op, "att", att, lay.att_len(nh));
    for &(have, per_row, what) in bufs {
        need(op, what, have, t * per_row);
    }
    (nb, max_len)
}

/// The launch: grid (B, NH), the configured block, `floats` of dynamic shared memory; records
/// an error (and launches nothing) when the shared memory exceeds what a block can have.
fn run<D: Device>(
    g: &Gpu<D>,
    name: &str,
    cfg: &AttentionLaunch,
    nb: usize,
    nh: usize,
    floats: usize,
    args: &[KArg],
) {
    if nb == 0 {
        return;
    }
    let bytes = floats * 4;
    if bytes > SHARED_LIMIT.max(cfg.shared_limit) {
        g.record(Err(Error::msg(format!(
            "{name}: the longest sequence needs {bytes} bytes of shared memory with {} threads per block, \
             more than the {} a block may use; use shorter sequences",
            cfg.threads,
            SHARED_LIMIT.max(cfg.shared_limit)
        ))));
        return;
    }
    let launch =
        LaunchCfg { grid: [nb as u32, nh as u32, 1], block: [cfg.threads, 1, 1], shared_bytes: bytes as u32 };
    g.launch(name, launch, args);
}

/// See [`Backend::attention_forward`](crate::backend::Backend::attention_forward).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<D: Device>(
    g: &Gpu<D>,
    out: GViewMut<'_>,
    att: GViewMut<'_>,
    qkv: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    nh: usize,
    c: usize,
    dropout: Dropout,
) {
    forward_with(g, &AttentionLaunch::default(), out, att, qkv, batch, nh, c, dropout);
}

/// [`forward`] with an explicit block shape and shared-memory budget (tests force the
/// global-memory path with a small `shared_limit`).
/// out (T,C) overwritten; att (NH·Σ len²) receives the pre-dropout probabilities; qkv (T,3C).
#[allow(clippy::too_many_arguments)]
pub fn forward_with<D: Device>(
    g: &Gpu<D>,
    cfg: &AttentionLaunch,
    out: GViewMut<'_>,
    att: GViewMut<'_>,
    qkv: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    nh: usize,
    c: usize,
    dropout: Dropout,
) {
    let op = "attention_forward";
    let (nb, max_len) =
        check(op, cfg, batch, (nh, c), att.len, &[(out.len, c, "out"), (qkv.len, 3 * c, "qkv")]);
    let floats = cfg.forward_shared_floats(max_len);
    let [s, st, si, th, sc] = dropout_args(&dropout);
    let args = [
        pm(&out),
        pm(&att),
        p(&qkv),
        pi(&batch.cu_seqlens),
        pi(&batch.att_offsets),
        i(nh),
        i(c),
        i(floats),
        s,
        st,
        si,
        th,
        sc,
    ];
    run(g, op, cfg, nb, nh, floats, &args);
}

/// See [`Backend::attention_backward`](crate::backend::Backend::attention_backward).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<D: Device>(
    g: &Gpu<D>,
    dqkv: GViewMut<'_>,
    dout: GView<'_>,
    att: GView<'_>,
    qkv: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    nh: usize,
    c: usize,
    dropout: Dropout,
) {
    backward_with(g, &AttentionLaunch::default(), dqkv, dout, att, qkv, batch, nh, c, dropout);
}

/// [`backward`] with an explicit block shape and shared-memory budget (tests force the
/// recomputing fallback with a small `shared_limit`).
/// dqkv (T,3C) overwritten from dout (T,C), att (NH·Σ len²) and qkv (T,3C).
#[allow(clippy::too_many_arguments)]
pub fn backward_with<D: Device>(
    g: &Gpu<D>,
    cfg: &AttentionLaunch,
    dqkv: GViewMut<'_>,
    dout: GView<'_>,
    att: GView<'_>,
    qkv: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    nh: usize,
    c: usize,
    dropout: Dropout,
) {
    let op = "attention_backward";
    let bufs = [(dqkv.len, 3 * c, "dqkv"), (dout.len, c, "dout"), (qkv.len, 3 * c, "qkv")];
    let (nb, max_len) = check(op, cfg, batch, (nh, c), att.len, &bufs);
    let floats = cfg.backward_shared_floats(max_len);
    let [s, st, si, th, sc] = dropout_args(&dropout);
    let args = [
        pm(&dqkv),
        p(&dout),
        p(&att),
        p(&qkv),
        pi(&batch.cu_seqlens),
        pi(&batch.att_offsets),
        i(nh),
        i(c),
        i(floats),
        s,
        st,
        si,
        th,
        sc,
    ];
    run(g, op, cfg, nb, nh, floats, &args);
}
