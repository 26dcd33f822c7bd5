//! Multi-head scaled dot-product attention over packed variable-length sequences.
//!
//! For sequence `b` (rows `r0 = cu_seqlens[b] .. r0 + L`) and head `h` (columns `h·hs..(h+1)·hs`
//! of each of Q, K, V inside qkv (T,3C)):
//!
//! ```text
//! S = Q Kᵀ / √hs          (L,L)   only the keys of sequence b exist
//! P = softmax_rows(S)     (L,L)   stored in att at nh·att_offsets[b] + h·L²
//! O = dropout(P) V        (L,hs)  dropout element index = position inside att
//! ```
//!
//! Leaving the other keys out is exactly d2l's masking by `-1e6`: `exp(-1e6 - max)` underflows
//! to 0 in both f32 and f64. Work is split over (sequence, head) pairs.

use super::matmul::gemm_strided;
use super::{cast, check_layout, dropout_factors, Float, SendPtr};
use crate::backend::BatchLayout;
use crate::rng::Dropout;
use rayon::prelude::*;

/// Checks the layout and that every buffer `(have, elements per token row, name)` holds T rows,
/// and att its NH·Σ len² probabilities. Returns the head size.
fn check(
    op: &str,
    layout: &BatchLayout,
    nh: usize,
    c: usize,
    att: usize,
    bufs: [(usize, usize, &str); 3],
) -> usize {
    let t = check_layout(op, layout);
    assert!(nh > 0 && c % nh == 0, "{op}: C = {c} is not a multiple of the {nh} heads");
    let need = layout.att_len(nh);
    assert!(att >= need, "{op}: att has {att} elements, need NH·Σ len² = {need}");
    for (have, per_row, what) in bufs {
        let need = t * per_row;
        assert!(have >= need, "{op}: {what} has {have} elements, need {need} (T = {t}, C = {c}, NH = {nh})");
    }
    c / nh
}

/// Forward. out (T,C) overwritten; att (NH·Σ len²) receives the pre-dropout probabilities;
/// qkv (T,3C) = [Q | K | V].
pub(super) fn attention_forward<F: Float>(
    out: &mut [F],
    att: &mut [F],
    qkv: &[F],
    layout: &BatchLayout,
    nh: usize,
    c: usize,
    dropout: &Dropout,
) {
    let hs = check(
        "attention_forward",
        layout,
        nh,
        c,
        att.len(),
        [(out.len(), c, "out"), (qkv.len(), 3 * c, "qkv"), (0, 0, "")],
    );
    let cu = &layout.cu_seqlens;
    let nb = layout.b();
    // The (b,h) attention matrices are consecutive in att, in (b,h) order.
    let mut blocks: Vec<(usize, usize, &mut [F])> = Vec::with_capacity(nb * nh);
    let mut rest = &mut att[..layout.att_len(nh)];
    for b in 0..nb {
        let l = cu[b + 1] - cu[b];
        for h in 0..nh {
            let (blk, tail) = std::mem::take(&mut rest).split_at_mut(l * l);
            blocks.push((b, h, blk));
            rest = tail;
        }
    }
    let sqrt_hs = cast::<F>(hs as f64).sqrt();
    let outp = SendPtr(out.as_mut_ptr());
    blocks.into_par_iter().for_each_init(Vec::new, |pd: &mut Vec<F>, (b, h, p)| {
        let (r0, l) = (cu[b], cu[b + 1] - cu[b]);
        if l == 0 {
            return;
        }
        let q = qkv[r0 * 3 * c + h * hs..].as_ptr();
        let k = qkv[r0 * 3 * c + c + h * hs..].as_ptr();
        let v = qkv[r0 * 3 * c + 2 * c + h * hs..].as_ptr();
        // SAFETY: p is this task's own (L,L) block; Q, K, V are (L,hs) views of qkv with row
        // stride 3C whose last element, at (r0+L-1)·3C + 2C + h·hs + hs - 1 < T·3C, was checked.
        unsafe { gemm_strided(l, l, hs, p.as_mut_ptr(), l, false, q, (3 * c, 1), k, (1, 3 * c)) };
        for prow in p.chunks_exact_mut(l) {
            let mut max = F::neg_infinity();
            for s in prow.iter_mut() {
                *s /= sqrt_hs;
                max = max.max(*s);
            }
            let mut sum = F::zero();
            for s in prow.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            for s in prow.iter_mut() {
                *s /= sum;
            }
        }
        let probs: &[F] = if dropout.active() {
            pd.resize(l * l, F::zero());
            dropout_factors(dropout, (nh * layout.att_offsets[b] + h * l * l) as u64, pd);
            for (f, &p) in pd.iter_mut().zip(p.iter()) {
                *f *= p;
            }
            pd
        } else {
            p
        };
        // SAFETY: rows r0..r0+L, columns h·hs..(h+1)·hs of out (T,C) belong to this (b,h) task
        // alone (sequences own disjoint rows, heads disjoint columns) and lie inside out, whose
        // length >= T·C was checked; V as above.
        unsafe {
            let o = outp.get().add(r0 * c + h * hs);
            gemm_strided(l, hs, l, o, c, false, probs.as_ptr(), (l, 1), v, (3 * c, 1));
        }
    });
}

/// Backward. dqkv (T,3C) overwritten from dout (T,C), the saved att probabilities and qkv (T,3C).
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_backward<F: Float>(
    dqkv: &mut [F],
    dout: &[F],
    att: &[F],
    qkv: &[F],
    layout: &BatchLayout,
    nh: usize,
    c: usize,
    dropout: &Dropout,
) {
    let hs = check(
        "attention_backward",
        layout,
        nh,
        c,
        att.len(),
        [(dqkv.len(), 3 * c, "dqkv"), (dout.len(), c, "dout"), (qkv.len(), 3 * c, "qkv")],
    );
    let cu = &layout.cu_seqlens;
    let nb = layout.b();
    let sqrt_hs = cast::<F>(hs as f64).sqrt();
    let dp = SendPtr(dqkv.as_mut_ptr());
    (0..nb * nh).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(fac, g): &mut (Vec<F>, Vec<F>), task| {
            let (b, h) = (task / nh, task % nh);
            let (r0, l) = (cu[b], cu[b + 1] - cu[b]);
            if l == 0 {
                return;
            }
            let base = nh * layout.att_offsets[b] + h * l * l;
            let p = &att[base..base + l * l];
            let at = |col0: usize| r0 * 3 * c + col0 + h * hs;
            let (q, k, v) = (qkv[at(0)..].as_ptr(), qkv[at(c)..].as_ptr(), qkv[at(2 * c)..].as_ptr());
            let dout_p = dout[r0 * c + h * hs..].as_ptr();
            // dQ, dK, dV of this (b,h): rows r0..r0+L, columns {0, C, 2C} + h·hs .. + hs of dqkv.
            let (dq, dk, dv) = (
                dp.get().wrapping_add(at(0)),
                dp.get().wrapping_add(at(c)),
                dp.get().wrapping_add(at(2 * c)),
            );
            // Dropout factors f and the dropped probabilities Pd = f ⊙ P (L,L).
            let active = dropout.active();
            if active {
                fac.resize(2 * l * l, F::zero());
                let (f, pd) = fac.split_at_mut(l * l);
                dropout_factors(dropout, base as u64, f);
                for ((pd, &f), &p) in pd.iter_mut().zip(f.iter()).zip(p) {
                    *pd = f * p;
                }
            }
            let pd: &[F] = if active { &fac[l * l..] } else { p };
            g.resize(l * l, F::zero());
            // SAFETY (all four products): Q, K, V, dout are read through in-bounds (L,hs) views
            // (buffer sizes checked above); g is this task's scratch; dQ, dK, dV are (L,hs)
            // regions of dqkv (T,3C) written by this (b,h) task only, inside its checked length.
            unsafe {
                // dV = Pdᵀ · dO; g = dO · Vᵀ (the gradient of the dropped probabilities).
                gemm_strided(l, hs, l, dv, 3 * c, false, pd.as_ptr(), (1, l), dout_p, (c, 1));
                gemm_strided(l, l, hs, g.as_mut_ptr(), l, false, dout_p, (c, 1), v, (1, 3 * c));
            }
            // dP = f ⊙ g; dS = P ⊙ (dP − Σ_j P dP) / √hs, in place in g.
            for (i, grow) in g.chunks_exact_mut(l).enumerate() {
                let prow = &p[i * l..(i + 1) * l];
                if active {
                    for (g, &f) in grow.iter_mut().zip(&fac[i * l..(i + 1) * l]) {
                        *g *= f;
                    }
                }
                let rowdot = grow.iter().zip(prow).fold(F::zero(), |acc, (&g, &p)| acc + g * p);
                for (g, &p) in grow.iter_mut().zip(prow) {
                    *g = p * (*g - rowdot) / sqrt_hs;
                }
            }
            // SAFETY: as above.
            unsafe {
                // dQ = dS · K; dK = dSᵀ · Q.
                gemm_strided(l, hs, l, dq, 3 * c, false, g.as_ptr(), (l, 1), k, (3 * c, 1));
                gemm_strided(l, hs, l, dk, 3 * c, false, g.as_ptr(), (1, l), q, (3 * c, 1));
            }
        },
    );
}
