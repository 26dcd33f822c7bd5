//! Launchers of kernels/classifier.cu: the classifier head's own kernels, the `<cls>` row gather
//! (and its scatter back) and softmax cross-entropy over the logits. The pooler (`hidden`: Linear
//! + tanh) and the output layer are products of the matmul family.

use super::device::{Device, KArg};
use super::launch::{i, need, p, pi, pm};
use super::memory::{GView, GViewMut};
use super::Gpu;
use crate::backend::DeviceBatch;

/// See [`Backend::cls_forward`](crate::backend::Backend::cls_forward).
pub(super) fn cls_forward<D: Device>(
    g: &Gpu<D>,
    out: GViewMut<'_>,
    x: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    c: usize,
) {
    let (t, nb) = (batch.layout.t(), batch.layout.examples());
    need("cls_forward", "out", out.len, nb * c);
    need("cls_forward", "x", x.len, t * c);
    g.launch_n("cls_forward", nb * c, &[pm(&out), p(&x), pi(&batch.cu_seqlens), i(nb), i(c)]);
}

/// See [`Backend::cls_backward`](crate::backend::Backend::cls_backward).
pub(super) fn cls_backward<D: Device>(
    g: &Gpu<D>,
    dx: GViewMut<'_>,
    dout: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    c: usize,
) {
    let (t, nb) = (batch.layout.t(), batch.layout.examples());
    need("cls_backward", "dx", dx.len, t * c);
    need("cls_backward", "dout", dout.len, nb * c);
    g.zero_bytes(dx.ptr, t * c);
    g.launch_n("cls_backward", nb * c, &[pm(&dx), p(&dout), pi(&batch.cu_seqlens), i(nb), i(c)]);
}

/// See [`Backend::crossentropy_forward`](crate::backend::Backend::crossentropy_forward).
pub(super) fn loss_forward<D: Device>(
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
pub(super) fn loss_backward<D: Device>(
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

/// See [`Backend::loss_guard`](crate::backend::Backend::loss_guard): `loss_nonfinite` into the
/// backend's flag (made once, outside any step graph), which Adam's launches then pass.
pub(super) fn loss_guard<D: Device>(g: &Gpu<D>, losses: GView<'_>) {
    let flag = {
        let mut guard = g.guard.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            match g.alloc_persistent::<i32>(1) {
                Ok(b) => *guard = Some(b),
                Err(e) => return g.record(Err(e)),
            }
        }
        guard.as_ref().map_or(0, |b| b.ptr)
    };
    let cfg = super::device::LaunchCfg::linear(1, 256, 0);
    g.launch("loss_nonfinite", cfg, &[p(&losses), i(losses.len), KArg::Ptr(flag)]);
    g.guard_on.store(true, std::sync::atomic::Ordering::Relaxed);
}
