//! Launchers of kernels/classifier.cu: the classifier head's own kernels, the `<cls>` row gather
//! (and its scatter back) and softmax cross-entropy over the logits. The pooler (`hidden`: Linear
//! + tanh) and the output layer are products of the matmul family.

use super::device::{Device, KArg};
use super::launch::{i, need, need_f32, p, pi, pm, variant};
use super::memory::{GView, GViewMut};
use super::Gpu;
use crate::backend::{DeviceBatch, METRICS_SLOTS};
use crate::error::{Error, Result};

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
    need_f32("cls_forward", "out", out.is_bf16());
    g.launch_n(
        variant("cls_forward", x.is_bf16()),
        nb * c,
        &[pm(&out), p(&x), pi(&batch.cu_seqlens), i(nb), i(c)],
    );
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
    g.zero_bytes(dx.ptr, t * c * dx.dtype.size() as usize);
    need_f32("cls_backward", "dout", dout.is_bf16());
    let args = [pm(&dx), p(&dout), pi(&batch.cu_seqlens), i(nb), i(c)];
    g.launch_n(variant("cls_backward", dx.is_bf16()), nb * c, &args);
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

/// See [`Backend::metrics_push`](crate::backend::Backend::metrics_push).
pub(super) fn metrics_push<D: Device>(
    g: &Gpu<D>,
    slot: usize,
    losses: GView<'_>,
    logits: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    k: usize,
) -> Result<()> {
    let nb = losses.len;
    assert!(slot < METRICS_SLOTS, "metrics_push: slot {slot} outside the ring of {METRICS_SLOTS}");
    need("metrics_push", "logits", logits.len, nb * k);
    need("metrics_push", "labels", batch.labels.len(), nb);
    let ptr = {
        let mut ring = g.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if ring.is_none() {
            // Outlives every step graph: not owned by one.
            *ring = Some(g.alloc_persistent::<i32>(4 * METRICS_SLOTS)?);
        }
        ring.as_ref().map_or(0, |b| b.ptr)
    };
    let cfg = super::device::LaunchCfg::linear(1, 32, 0);
    let args = [KArg::Ptr(ptr), i(slot), p(&losses), p(&logits), pi(&batch.labels), i(nb), i(k)];
    g.launch("step_metrics", cfg, &args);
    Ok(())
}

/// See [`Backend::metrics_read`](crate::backend::Backend::metrics_read).
pub(super) fn metrics_read<D: Device>(
    g: &Gpu<D>,
    first: usize,
    count: usize,
) -> Result<Vec<(f64, usize, usize)>> {
    if count > METRICS_SLOTS {
        return Err(Error::msg(format!("metrics_read: {count} slots from a ring of {METRICS_SLOTS}")));
    }
    g.check()?;
    let ring = g.metrics.lock().unwrap_or_else(|p| p.into_inner());
    let Some(buf) = ring.as_ref() else { return Ok(Vec::new()) };
    let mut words = vec![0u32; 4 * METRICS_SLOTS];
    // SAFETY: the ring holds 4 * METRICS_SLOTS i32.
    unsafe { g.dev.copy_dtoh(buf.ptr, bytemuck::cast_slice_mut(&mut words))? };
    Ok((0..count)
        .map(|q| {
            let w = &words[4 * ((first + q) % METRICS_SLOTS)..][..4];
            (f64::from_bits(u64::from(w[0]) | (u64::from(w[1]) << 32)), w[2] as usize, w[3] as usize)
        })
        .collect())
}
