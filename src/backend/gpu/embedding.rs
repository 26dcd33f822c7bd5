//! Launchers of kernels/embedding.cu: the token + segment + position sum and its gradients
//! (token rows by scatter-add, position rows walking the sequences, segment rows by the column
//! sums of reduce.cu).

use super::device::Device;
use super::launch::{bf16_acts, i, need, p, pi, pm, variant};
use super::memory::{GView, GViewMut};
use super::Gpu;
use crate::backend::DeviceBatch;

/// See [`Backend::embedding_forward`](crate::backend::Backend::embedding_forward).
pub(super) fn forward<D: Device>(
    g: &Gpu<D>,
    out: GViewMut<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    wte: GView<'_>,
    wse: GView<'_>,
    wpe: GView<'_>,
    c: usize,
) {
    let t = batch.layout.t();
    need("embedding_forward", "out", out.len, t * c);
    need("embedding_forward", "tokens", batch.tokens.len, t);
    let args = [
        pm(&out),
        pi(&batch.tokens),
        pi(&batch.segments),
        pi(&batch.positions),
        p(&wte),
        p(&wse),
        p(&wpe),
        i(t),
        i(c),
    ];
    g.launch_n(variant("embedding_forward", out.is_bf16()), t * c, &args);
}

/// See [`Backend::embedding_backward`](crate::backend::Backend::embedding_backward).
pub(super) fn backward<D: Device>(
    g: &Gpu<D>,
    dwte: GViewMut<'_>,
    dwse: GViewMut<'_>,
    dwpe: Option<GViewMut<'_>>,
    dout: GView<'_>,
    batch: &DeviceBatch<Gpu<D>>,
    c: usize,
) {
    let t = batch.layout.t();
    need("embedding_backward", "dout", dout.len, t * c);
    if c == 0 {
        return;
    }
    let bf16 = bf16_acts("embedding_backward", &[("dout", dout.is_bf16())]);
    let args = [pm(&dwte), pi(&batch.tokens), p(&dout), i(t), i(c)];
    g.launch_n(variant("embedding_backward_tokens", bf16), t * c, &args);
    g.selected_row_sums(dwse.ptr, batch.segments.ptr, dout.ptr, bf16, t, c, dwse.len / c);
    if let Some(dwpe) = dwpe {
        // position p's gradient sums row cu_seqlens[b] + p of every sequence longer than p
        let (nb, rows) = (batch.layout.b(), dwpe.len / c);
        g.launch_n(
            variant("embedding_backward_positions", bf16),
            rows * c,
            &[pm(&dwpe), pi(&batch.cu_seqlens), p(&dout), i(nb), i(c), i(rows)],
        );
    }
}
