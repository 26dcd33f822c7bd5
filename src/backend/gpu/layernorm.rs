//! Launchers of kernels/layernorm.cu: fused dropout + residual + LayerNorm (d2l's AddNorm).
//! One warp per row (4 rows per 128-thread block); parameter gradients by the column sums of
//! reduce.cu.

use super::device::{Device, KArg, LaunchCfg};
use super::launch::{bf16_acts, dropout_args, i, need, need_f32, p, pm, variant};
use super::memory::{GView, GViewMut};
use super::Gpu;
use crate::rng::Dropout;

/// Threads per block of the row kernels (one warp per row).
const ROW_THREADS: u32 = 128;

fn row_cfg(t: usize) -> LaunchCfg {
    let rows_per_block = (ROW_THREADS / 32) as usize;
    LaunchCfg::linear(t.div_ceil(rows_per_block) as u32, ROW_THREADS, 0)
}

/// See [`Backend::layernorm_forward`](crate::backend::Backend::layernorm_forward).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<D: Device>(
    g: &Gpu<D>,
    out: GViewMut<'_>,
    sum: GViewMut<'_>,
    mean: GViewMut<'_>,
    rstd: GViewMut<'_>,
    res: GView<'_>,
    sub: Option<GView<'_>>,
    weight: GView<'_>,
    bias: GView<'_>,
    eps: f64,
    dropout: Dropout,
    t: usize,
    c: usize,
) {
    let op = "layernorm_forward";
    let tc = t * c;
    for (what, have, n) in [
        ("out", out.len, tc),
        ("sum", sum.len, tc),
        ("mean", mean.len, t),
        ("rstd", rstd.len, t),
        ("res", res.len, tc),
        ("sub", sub.map_or(tc, |s| s.len), tc),
        ("weight", weight.len, c),
        ("bias", bias.len, c),
    ] {
        need(op, what, have, n);
    }
    let bf16 = bf16_acts(
        op,
        &[
            ("out", out.is_bf16()),
            ("sum", sum.is_bf16()),
            ("res", res.is_bf16()),
            ("sub", sub.map_or(res.is_bf16(), |s| s.is_bf16())),
        ],
    );
    for (what, b) in [("mean", mean.is_bf16()), ("rstd", rstd.is_bf16()), ("weight", weight.is_bf16())] {
        need_f32(op, what, b);
    }
    if tc == 0 {
        return;
    }
    let [s0, s1, s2, s3, s4, s5] = dropout_args(&dropout);
    let args = [
        pm(&out),
        pm(&sum),
        pm(&mean),
        pm(&rstd),
        p(&res),
        KArg::Ptr(sub.map_or(0, |s| s.ptr)),
        p(&weight),
        p(&bias),
        KArg::F32(eps as f32),
        i(t),
        i(c),
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
    ];
    g.launch(variant(op, bf16), row_cfg(t), &args);
}

/// See [`Backend::layernorm_backward`](crate::backend::Backend::layernorm_backward).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<D: Device>(
    g: &Gpu<D>,
    dres: GViewMut<'_>,
    dsub: Option<GViewMut<'_>>,
    dweight: GViewMut<'_>,
    dbias: GViewMut<'_>,
    dout: GView<'_>,
    sum: GView<'_>,
    mean: GView<'_>,
    rstd: GView<'_>,
    weight: GView<'_>,
    dropout: Dropout,
    t: usize,
    c: usize,
) {
    let op = "layernorm_backward";
    let tc = t * c;
    for (what, have, n) in [
        ("dres", dres.len, tc),
        ("dsub", dsub.as_ref().map_or(tc, |d| d.len), tc),
        ("dweight", dweight.len, c),
        ("dbias", dbias.len, c),
        ("dout", dout.len, tc),
        ("sum", sum.len, tc),
        ("mean", mean.len, t),
        ("rstd", rstd.len, t),
        ("weight", weight.len, c),
    ] {
        need(op, what, have, n);
    }
    let bf16 = bf16_acts(
        op,
        &[
            ("dres", dres.is_bf16()),
            ("dsub", dsub.as_ref().map_or(dres.is_bf16(), |d| d.is_bf16())),
            ("dout", dout.is_bf16()),
            ("sum", sum.is_bf16()),
        ],
    );
    for (what, b) in [("mean", mean.is_bf16()), ("rstd", rstd.is_bf16()), ("weight", weight.is_bf16())] {
        need_f32(op, what, b);
    }
    if tc == 0 {
        return;
    }
    let [s0, s1, s2, s3, s4, s5] = dropout_args(&dropout);
    let args = [
        pm(&dres),
        KArg::Ptr(dsub.as_ref().map_or(0, |d| d.ptr)),
        p(&dout),
        p(&sum),
        p(&mean),
        p(&rstd),
        p(&weight),
        i(t),
        i(c),
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
    ];
    g.launch(variant("layernorm_backward_rows", bf16), row_cfg(t), &args);
    g.layernorm_param_sums(dweight.ptr, dbias.ptr, dout.ptr, sum.ptr, mean.ptr, rstd.ptr, bf16, t, c);
}
