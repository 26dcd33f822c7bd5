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
use super::launch::{bf16_acts, dropout_args, i, need, need_f32, p, pi, pm, THREADS};
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
/// sizes of att (`(have, need)`) and of every `(elements, elements per token row, name)` buffer,
/// and indices that fit the kernels' `int`s. Returns (B, the longest sequence).
fn check<D: Device>(
    op: &str,
    cfg: &AttentionLaunch,
    batch: &DeviceBatch<Gpu<D>>,
    (nh, c): (usize, usize),
    (att, att_need): (usize, usize),
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
    need(op, "att", att, att_need);
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
    if bf16_acts(op, &[("out", out.is_bf16()), ("qkv", qkv.is_bf16())]) {
        // The f32 kernels on widened copies (head sizes above the flash kernels' 64 only).
        let (Some(q32), Some(o32)) = (g.widened(&qkv), g.scratch_f32(out.len)) else { return };
        forward_with(
            g,
            cfg,
            o32.view_mut_at(0, out.len),
            att,
            q32.view_at(0, qkv.len),
            batch,
            nh,
            c,
            dropout,
        );
        g.narrow_into(&out, o32.ptr());
        return;
    }
    need_f32(op, "att", att.is_bf16());
    let (nb, max_len) = check(
        op,
        cfg,
        batch,
        (nh, c),
        (att.len, batch.layout.att_len(nh)),
        &[(out.len, c, "out"), (qkv.len, 3 * c, "qkv")],
    );
    let floats = cfg.forward_shared_floats(max_len);
    let [s, st, si, th, sc, so] = dropout_args(&dropout);
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
        so,
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
    let acts = [("dqkv", dqkv.is_bf16()), ("dout", dout.is_bf16()), ("qkv", qkv.is_bf16())];
    if bf16_acts(op, &acts) {
        let (Some(do32), Some(q32), Some(d32)) = (g.widened(&dout), g.widened(&qkv), g.scratch_f32(dqkv.len))
        else {
            return;
        };
        let (dov, qv) = (do32.view_at(0, dout.len), q32.view_at(0, qkv.len));
        backward_with(g, cfg, d32.view_mut_at(0, dqkv.len), dov, att, qv, batch, nh, c, dropout);
        g.narrow_into(&dqkv, d32.ptr());
        return;
    }
    let bufs = [(dqkv.len, 3 * c, "dqkv"), (dout.len, c, "dout"), (qkv.len, 3 * c, "qkv")];
    let (nb, max_len) = check(op, cfg, batch, (nh, c), (att.len, batch.layout.att_len(nh)), &bufs);
    let floats = cfg.backward_shared_floats(max_len);
    let [s, st, si, th, sc, so] = dropout_args(&dropout);
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
        so,
    ];
    run(g, op, cfg, nb, nh, floats, &args);
}

// ---- flash attention (bf16 tensor cores) ---------------------------------------------------

/// The padded head widths the flash kernels are compiled for.
pub const FLASH_HEAD_DIMS: [usize; 3] = [16, 32, 64];
/// Rows per block of the flash kernels (queries of the forward and dQ kernels, keys of dK/dV).
const FLASH_ROWS: usize = 64;
/// Threads per block of the flash kernels (4 warps of 16 rows).
const FLASH_THREADS: u32 = 128;

/// The kernel width for head size `hs` (the smallest of [`FLASH_HEAD_DIMS`] that holds it), or
/// None when the head is too wide for the flash kernels (the classic kernels take it).
pub fn flash_dim(hs: usize) -> Option<usize> {
    FLASH_HEAD_DIMS.iter().copied().find(|&d| hs >= 1 && hs <= d)
}

/// Checks and the launch geometry shared by the flash launchers: (B, T, kernel suffix `dD`).
fn flash_check<D: Device>(
    op: &str,
    batch: &DeviceBatch<Gpu<D>>,
    (nh, c): (usize, usize),
    lse: usize,
    bufs: &[(usize, usize, &str)],
) -> (usize, usize, usize) {
    let t = batch.layout.t();
    let (nb, _) = check(op, &AttentionLaunch::default(), batch, (nh, c), (lse, nh * t), bufs);
    let hs = c / nh;
    let d = flash_dim(hs).unwrap_or_else(|| panic!("{op}: head size {hs} is above the flash kernels' 64"));
    (nb, t, d)
}

/// The arguments every flash kernel ends with: the layout, the sizes and the dropout.
fn flash_tail<D: Device>(
    batch: &DeviceBatch<Gpu<D>>,
    (nb, t, nh, c): (usize, usize, usize, usize),
    dropout: &Dropout,
) -> [KArg; 12] {
    let [s, st, si, th, sc, so] = dropout_args(dropout);
    [pi(&batch.cu_seqlens), pi(&batch.att_offsets), i(nb), i(t), i(nh), i(c), s, st, si, th, sc, so]
}

fn flash_cfg(t: usize, nh: usize) -> LaunchCfg {
    LaunchCfg {
        grid: [t.div_ceil(FLASH_ROWS) as u32, nh as u32, 1],
        block: [FLASH_THREADS, 1, 1],
        shared_bytes: 0,
    }
}

/// Flash attention forward: out (T,C) overwritten; lse (nh·T) receives each row's log-sum-exp
/// of the scaled scores (what backward needs instead of the probabilities); qkv (T,3C).
#[allow(clippy::too_many_arguments)]
pub fn flash_forward<D: Device>(
    g: &Gpu<D>,
    out: GViewMut<'_>,
    lse: GViewMut<'_>,
    qkv: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    nh: usize,
    c: usize,
    dropout: Dropout,
) {
    let op = "attention_flash_forward";
    let (nb, t, d) =
        flash_check(op, batch, (nh, c), lse.len, &[(out.len, c, "out"), (qkv.len, 3 * c, "qkv")]);
    if nb == 0 || t == 0 {
        return;
    }
    let bf16 = bf16_acts(op, &[("out", out.is_bf16()), ("qkv", qkv.is_bf16())]);
    need_f32(op, "lse", lse.is_bf16());
    let sfx = if bf16 { "_bf16" } else { "" };
    let args = [&[pm(&out), pm(&lse), p(&qkv)][..], &flash_tail(batch, (nb, t, nh, c), &dropout)].concat();
    g.launch(&format!("attention_flash_forward_d{d}{sfx}"), flash_cfg(t, nh), &args);
}

/// Flash attention backward: dqkv (T,3C) overwritten from dout (T,C), the forward's out (T,C)
/// and lse (nh·T), and qkv (T,3C). Three kernels: `dd = rowsum(dout ⊙ out)` per head into pool
/// scratch, then dK/dV and dQ (each recomputes the probabilities).
#[allow(clippy::too_many_arguments)]
pub fn flash_backward<D: Device>(
    g: &Gpu<D>,
    dqkv: GViewMut<'_>,
    dout: GView<'_>,
    out: GView<'_>,
    lse: GView<'_>,
    qkv: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    nh: usize,
    c: usize,
    dropout: Dropout,
) {
    let op = "attention_flash_backward";
    let bufs =
        [(dqkv.len, 3 * c, "dqkv"), (dout.len, c, "dout"), (out.len, c, "out"), (qkv.len, 3 * c, "qkv")];
    let (nb, t, d) = flash_check(op, batch, (nh, c), lse.len, &bufs);
    let bf16 = bf16_acts(
        op,
        &[("dqkv", dqkv.is_bf16()), ("dout", dout.is_bf16()), ("out", out.is_bf16()), ("qkv", qkv.is_bf16())],
    );
    need_f32(op, "lse", lse.is_bf16());
    let sfx = if bf16 { "_bf16" } else { "" };
    if nb == 0 || t == 0 {
        return;
    }
    let dd = match g.alloc_uninit::<f32>(nh * t) {
        Ok(b) => b,
        Err(e) => return g.record(Err(e)),
    };
    let ddv = GView::new(dd.ptr(), dd.len());
    let warps = (THREADS / 32) as usize;
    let prep = LaunchCfg { grid: [t.div_ceil(warps) as u32, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 };
    let prep_args = [p(&ddv), p(&dout), p(&out), i(t), i(nh), i(c)];
    g.launch(&format!("attention_flash_backward_prep{sfx}"), prep, &prep_args);
    let head = [pm(&dqkv), p(&dout), p(&lse), p(&ddv), p(&qkv)];
    let args = [&head[..], &flash_tail(batch, (nb, t, nh, c), &dropout)].concat();
    g.launch(&format!("attention_flash_backward_dkdv_d{d}{sfx}"), flash_cfg(t, nh), &args);
    g.launch(&format!("attention_flash_backward_dq_d{d}{sfx}"), flash_cfg(t, nh), &args);
}
