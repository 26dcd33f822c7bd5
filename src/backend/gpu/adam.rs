//! Launchers of kernels/adam.cu: Adam/AdamW over the whole flat parameter buffer in one launch,
//! the row-sparse step over the token-embedding rows a run has used, and zeroing those rows'
//! gradients.

use super::device::{Device, KArg};
use super::launch::{i, l, p, pm};
use super::memory::{GView, GViewMut};
use super::Gpu;
use crate::backend::AdamStep;

/// Adam's per-step scalars as kernel arguments (rounded once to f32, as the CPU twin does).
fn adam_args(s: &AdamStep) -> [KArg; 10] {
    let wd = s.weight_decay;
    let w = 1.0 - s.beta1;
    let lerp_w = w as f32;
    let l2 = if wd != 0.0 && !s.decoupled { wd as f32 } else { 0.0 };
    let decay = if wd != 0.0 && s.decoupled { (1.0 - s.lr * wd) as f32 } else { 1.0 };
    [
        KArg::F32(l2),
        KArg::F32(decay),
        KArg::F32(lerp_w),
        KArg::F32(1.0 - lerp_w),
        KArg::I32((w.abs() < 0.5) as i32),
        KArg::F32(s.beta2 as f32),
        KArg::F32((1.0 - s.beta2) as f32),
        KArg::F32((-s.step_size()) as f32),
        KArg::F32(s.bias_correction2_sqrt() as f32),
        KArg::F32(s.eps as f32),
    ]
}

/// Parameters, gradients and moments are f32 (their bf16 copy, if any, rides on the parameters'
/// view and is written by the kernel too).
fn f32_state(op: &str, params: &GViewMut<'_>, grads: &GView<'_>, m: &GViewMut<'_>, v: &GViewMut<'_>) {
    assert!(
        !params.is_bf16() && !grads.is_bf16() && !m.is_bf16() && !v.is_bf16(),
        "{op}: parameters, gradients and moments must be f32"
    );
}

/// See [`Backend::adam_update`](crate::backend::Backend::adam_update).
pub(super) fn update<D: Device>(
    g: &Gpu<D>,
    params: GViewMut<'_>,
    grads: GView<'_>,
    m: GViewMut<'_>,
    v: GViewMut<'_>,
    step: &AdamStep,
) {
    let n = params.len;
    assert!(
        grads.len == n && m.len == n && v.len == n,
        "adam_update: params/grads/m/v have {n}/{}/{}/{} elements",
        grads.len,
        m.len,
        v.len
    );
    f32_state("adam_update", &params, &grads, &m, &v);
    let mut args = vec![pm(&params), KArg::Ptr(params.shadow), p(&grads), pm(&m), pm(&v), l(n)];
    args.extend(adam_args(step));
    args.push(KArg::Ptr(g.guard_ptr()));
    g.launch_n("adam_update", n, &args);
}

/// See [`Backend::adam_update_rows`](crate::backend::Backend::adam_update_rows).
#[allow(clippy::too_many_arguments)]
pub(super) fn update_rows<D: Device>(
    g: &Gpu<D>,
    params: GViewMut<'_>,
    grads: GView<'_>,
    m: GViewMut<'_>,
    v: GViewMut<'_>,
    rows: &[u32],
    row_len: usize,
    step: &AdamStep,
) {
    let n = params.len;
    assert!(
        grads.len == n && m.len == n && v.len == n,
        "adam_update_rows: params/grads/m/v have {n}/{}/{}/{} elements",
        grads.len,
        m.len,
        v.len
    );
    f32_state("adam_update_rows", &params, &grads, &m, &v);
    g.row_launches("adam_update_rows", rows, row_len, n / row_len.max(1), |rows_ptr, cfg| {
        let mut args = vec![
            pm(&params),
            KArg::Ptr(params.shadow),
            p(&grads),
            pm(&m),
            pm(&v),
            KArg::Ptr(rows_ptr),
            i(row_len),
        ];
        args.extend(adam_args(step));
        args.push(KArg::Ptr(g.guard_ptr()));
        g.launch("adam_update_rows", cfg, &args);
    });
}

/// See [`Backend::zero_rows`](crate::backend::Backend::zero_rows).
pub(super) fn zero_rows<D: Device>(g: &Gpu<D>, buf: GViewMut<'_>, rows: &[u32], row_len: usize) {
    g.row_launches("zero_rows", rows, row_len, buf.len / row_len.max(1), |rows_ptr, cfg| {
        g.launch("zero_rows", cfg, &[pm(&buf), KArg::Ptr(rows_ptr), i(row_len)]);
    });
}
