//! Softmax cross-entropy over the classifier logits.

use super::{cast, Float};

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
