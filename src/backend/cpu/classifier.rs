//! The classifier head's own ops: the `<cls>` row gather (and its scatter back) and softmax
//! cross-entropy over the logits. The pooler (`hidden`: Linear + tanh) and the output layer are
//! matmul and activation ops.

use super::{cast, check_layout, Float, ELEMS_PER_TASK};
use crate::backend::BatchLayout;
use rayon::prelude::*;

/// losses (B,) = −log softmax(logits (B,K))[label], computed as
/// `−(logit[label] − max − log Σ exp(logit − max))`; probs (B,K) = softmax(logits), saved for
/// backward. labels (≥ B,) in 0..K; a label outside that range (never produced by the data
/// pipeline) gives a NaN loss instead of a panic, so that it cannot go unnoticed.
pub(super) fn crossentropy_forward<F: Float>(
    losses: &mut [F],
    probs: &mut [F],
    logits: &[F],
    labels: &[i32],
    k: usize,
) {
    let nb = losses.len();
    assert!(
        k > 0 && probs.len() >= nb * k && logits.len() >= nb * k && labels.len() >= nb,
        "crossentropy_forward: losses {nb}, probs {}, logits {}, labels {} elements for K = {k}",
        probs.len(),
        logits.len(),
        labels.len()
    );
    for (b, loss) in losses.iter_mut().enumerate() {
        let x = &logits[b * k..(b + 1) * k];
        let p = &mut probs[b * k..(b + 1) * k];
        let max = x.iter().copied().fold(F::neg_infinity(), F::max);
        let mut sum = F::zero();
        for (p, &x) in p.iter_mut().zip(x) {
            *p = (x - max).exp();
            sum += *p;
        }
        for p in p.iter_mut() {
            *p /= sum;
        }
        *loss = match usize::try_from(labels[b]) {
            Ok(y) if y < k => -(x[y] - max - sum.ln()),
            _ => F::nan(),
        };
    }
}

/// dlogits (B,K) = scale · (probs (B,K) − onehot(label)), overwritten: the gradient of
/// `scale · Σ losses`. An out-of-range label contributes no one-hot term.
pub(super) fn crossentropy_backward<F: Float>(
    dlogits: &mut [F],
    probs: &[F],
    labels: &[i32],
    k: usize,
    scale: f64,
) {
    assert!(
        k > 0 && dlogits.len() % k == 0,
        "crossentropy_backward: dlogits has {} elements, K = {k}",
        dlogits.len()
    );
    let nb = dlogits.len() / k;
    assert!(
        probs.len() >= nb * k && labels.len() >= nb,
        "crossentropy_backward: probs {} and labels {} elements for B = {nb}, K = {k}",
        probs.len(),
        labels.len()
    );
    let scale = cast::<F>(scale);
    for (b, d) in dlogits.chunks_exact_mut(k).enumerate() {
        let y = usize::try_from(labels[b]).ok().filter(|&y| y < k);
        for (j, (d, &p)) in d.iter_mut().zip(&probs[b * k..(b + 1) * k]).enumerate() {
            let onehot = if Some(j) == y { F::one() } else { F::zero() };
            *d = scale * (p - onehot);
        }
    }
}

/// out (B,C) = x (T,C) at the first row of each example sequence (an empty sequence gives a zero
/// row); a padding sequence after the examples is not gathered.
pub(super) fn cls_forward<F: Float>(out: &mut [F], x: &[F], layout: &BatchLayout, c: usize) {
    let t = check_layout("cls_forward", layout);
    let nb = layout.examples();
    assert!(
        out.len() >= nb * c && x.len() >= t * c,
        "cls_forward: out has {} elements (need B·C = {}), x {} (need T·C = {})",
        out.len(),
        nb * c,
        x.len(),
        t * c
    );
    for b in 0..nb {
        let o = &mut out[b * c..(b + 1) * c];
        if layout.len(b) > 0 {
            let r = layout.cu_seqlens[b];
            o.copy_from_slice(&x[r * c..(r + 1) * c]);
        } else {
            o.fill(F::zero());
        }
    }
}

/// dx (T,C) overwritten: zero except the first row of each sequence, which gets dout (B,C).
pub(super) fn cls_backward<F: Float>(dx: &mut [F], dout: &[F], layout: &BatchLayout, c: usize) {
    let t = check_layout("cls_backward", layout);
    let nb = layout.examples();
    assert!(
        dx.len() >= t * c && dout.len() >= nb * c,
        "cls_backward: dx has {} elements (need T·C = {}), dout {} (need B·C = {})",
        dx.len(),
        t * c,
        dout.len(),
        nb * c
    );
    dx[..t * c].par_chunks_mut(ELEMS_PER_TASK).for_each(|d| d.fill(F::zero()));
    for b in 0..nb {
        if layout.len(b) > 0 {
            let r = layout.cu_seqlens[b];
            dx[r * c..(r + 1) * c].copy_from_slice(&dout[b * c..(b + 1) * c]);
        }
    }
}

/// Whether any loss is not finite: the twin of classifier.cu's `loss_nonfinite` (the CPU trainer
/// checks the summed loss on the host, which is finite exactly when every loss is).
pub fn any_nonfinite<F: Float>(losses: &[F]) -> bool {
    losses.iter().any(|x| !x.is_finite())
}
