//! Launchers of kernels/loss.cu: softmax cross-entropy over the classifier's logits.

use super::device::{Device, KArg};
use super::{i, need, p, pi, pm, GView, GViewMut, Gpu};
use crate::backend::DeviceBatch;

/// See [`Backend::crossentropy_forward`](crate::backend::Backend::crossentropy_forward).
pub(super) fn forward<D: Device>(
    g: &Gpu<D>,
    losses: GViewMut<'_>,
    probs: GViewMut<'_>,
    logits: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    k: usize,
) {
    let nb = losses.len;
    assert!(k > 0, "crossentropy_forward: K = 0");
    need("crossentropy_forward", "probs", probs.len, nb * k);
    need("crossentropy_forward", "logits", logits.len, nb * k);
    need("crossentropy_forward", "labels", batch.labels.len(), nb);
    let args = [pm(&losses), pm(&probs), p(&logits), pi(&batch.labels), i(nb), i(k)];
    g.launch_n("crossentropy_forward", nb, &args);
}

/// See [`Backend::crossentropy_backward`](crate::backend::Backend::crossentropy_backward).
pub(super) fn backward<D: Device>(
    g: &Gpu<D>,
    dlogits: GViewMut<'_>,
    probs: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    k: usize,
    scale: f64,
) {
    assert!(
        k > 0 && dlogits.len % k == 0,
        "crossentropy_backward: dlogits has {} elements, K = {k}",
        dlogits.len
    );
    let nb = dlogits.len / k;
    need("crossentropy_backward", "probs", probs.len, nb * k);
    need("crossentropy_backward", "labels", batch.labels.len(), nb);
    let args = [pm(&dlogits), p(&probs), pi(&batch.labels), i(nb), i(k), KArg::F32(scale as f32)];
    g.launch_n("crossentropy_backward", nb * k, &args);
}
