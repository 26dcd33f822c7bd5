//! d2l's AddNorm: `out = LayerNorm(dropout(sub) + res)` over rows of length C, and its backward.
//!
//! LayerNorm uses the biased variance, computed in two passes (mean, then Σ(x − mean)²) in the
//! storage type, and saves `sum` (the pre-norm input), `mean` and `rstd = 1/√(var + eps)`.
//! The dropout element index is `row·C + col`.

use super::{cast, dropout_factors, rows_per_task, Float};
use crate::rng::Dropout;
use rayon::prelude::*;

/// Σ f(x[i]) with 8 independent partial sums (so the loop vectorises), combined pairwise.
#[inline(always)]
fn sum8<F: Float>(n: usize, f: impl Fn(usize) -> F) -> F {
    let mut acc = [F::zero(); 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    let mut tail = F::zero();
    for i in full..n {
        tail += f(i);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Forward. out, sum (T,C) overwritten; mean, rstd (T,) overwritten; res (T,C); sub (T,C) or
/// `None` (plain LayerNorm of res); weight, bias (C,).
#[allow(clippy::too_many_arguments)]
pub(super) fn layernorm_forward<F: Float>(
    out: &mut [F],
    sum: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    res: &[F],
    sub: Option<&[F]>,
    weight: &[F],
    bias: &[F],
    eps: f64,
    dropout: &Dropout,
    t: usize,
    c: usize,
) {
    let tc = t * c;
    for (have, need, what) in [
        (out.len(), tc, "out"),
        (sum.len(), tc, "sum"),
        (mean.len(), t, "mean"),
        (rstd.len(), t, "rstd"),
        (res.len(), tc, "res"),
        (sub.map_or(tc, <[F]>::len), tc, "sub"),
        (weight.len(), c, "weight"),
        (bias.len(), c, "bias"),
    ] {
        assert!(
            have >= need,
            "layernorm_forward: {what} has {have} elements, need {need} (T = {t}, C = {c})"
        );
    }
    if tc == 0 {
        return;
    }
    let (weight, bias) = (&weight[..c], &bias[..c]);
    let eps = cast::<F>(eps);
    let inv_c = F::one() / cast::<F>(c as f64);
    let rows = rows_per_task(c);
    (
        out[..tc].par_chunks_mut(rows * c),
        sum[..tc].par_chunks_mut(rows * c),
        mean[..t].par_chunks_mut(rows),
        rstd[..t].par_chunks_mut(rows),
    )
        .into_par_iter()
        .enumerate()
        .for_each_init(Vec::new, |fac: &mut Vec<F>, (chunk, (out, sum, mean, rstd))| {
            fac.resize(c, F::zero());
            let row0 = chunk * rows;
            for (r, ((o, s), (mu, rs))) in out
                .chunks_exact_mut(c)
                .zip(sum.chunks_exact_mut(c))
                .zip(mean.iter_mut().zip(rstd.iter_mut()))
                .enumerate()
            {
                let row = row0 + r;
                let x = &res[row * c..(row + 1) * c];
                match sub {
                    Some(sub) => {
                        let y = &sub[row * c..(row + 1) * c];
                        dropout_factors(dropout, (row * c) as u64, fac);
                        for (((s, &y), &f), &x) in s.iter_mut().zip(y).zip(fac.iter()).zip(x) {
                            *s = y * f + x;
                        }
                    }
                    None => s.copy_from_slice(x),
                }
                let s: &[F] = s;
                let m = sum8(c, |j| s[j]) * inv_c;
                let var = sum8(c, |j| (s[j] - m) * (s[j] - m)) * inv_c;
                let r = F::one() / (var + eps).sqrt();
                *mu = m;
                *rs = r;
                for (((o, &v), &w), &b) in o.iter_mut().zip(s.iter()).zip(weight).zip(bias) {
                    *o = (v - m) * r * w + b;
                }
            }
        });
}

/// Backward. dres (T,C) overwritten with ∂L/∂sum; dsub (T,C) overwritten with ∂L/∂sub (the
/// same, times the dropout factor); dweight, dbias (C,) accumulate. dout, sum (T,C); mean, rstd
/// (T,); weight (C,).
#[allow(clippy::too_many_arguments)]
pub(super) fn layernorm_backward<F: Float>(
    dres: &mut [F],
    dsub: Option<&mut [F]>,
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    sum: &[F],
    mean: &[F],
    rstd: &[F],
    weight: &[F],
    dropout: &Dropout,
    t: usize,
    c: usize,
) {
    let tc = t * c;
    for (have, need, what) in [
        (dres.len(), tc, "dres"),
        (dsub.as_ref().map_or(tc, |d| d.len()), tc, "dsub"),
        (dweight.len(), c, "dweight"),
        (dbias.len(), c, "dbias"),
        (dout.len(), tc, "dout"),
        (sum.len(), tc, "sum"),
        (mean.len(), t, "mean"),
        (rstd.len(), t, "rstd"),
        (weight.len(), c, "weight"),
    ] {
        assert!(
            have >= need,
            "layernorm_backward: {what} has {have} elements, need {need} (T = {t}, C = {c})"
        );
    }
    if tc == 0 {
        return;
    }
    let weight = &weight[..c];
    let inv_c = F::one() / cast::<F>(c as f64);
    let rows = rows_per_task(c);
    // Pass 1, over rows: dsum = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dout·w.
    let row_grads = |row0: usize, dres: &mut [F], mut dsub: Option<&mut [F]>, fac: &mut Vec<F>| {
        if dsub.is_some() {
            fac.resize(c, F::zero());
        }
        for (r, dr) in dres.chunks_exact_mut(c).enumerate() {
            let row = row0 + r;
            let (mu, rs) = (mean[row], rstd[row]);
            let (x, dy) = (&sum[row * c..(row + 1) * c], &dout[row * c..(row + 1) * c]);
            let sg = sum8(c, |j| dy[j] * weight[j]);
            let sgx = sum8(c, |j| dy[j] * weight[j] * ((x[j] - mu) * rs));
            let (mg, mgx) = (sg * inv_c, sgx * inv_c);
            for (((d, &x), &dy), &w) in dr.iter_mut().zip(x).zip(dy).zip(weight) {
                *d = rs * (dy * w - mg - (x - mu) * rs * mgx);
            }
            if let Some(ds) = dsub.as_deref_mut() {
                dropout_factors(dropout, (row * c) as u64, fac);
                for ((s, &d), &f) in ds[r * c..(r + 1) * c].iter_mut().zip(dr.iter()).zip(fac.iter()) {
                    *s = d * f;
                }
            }
        }
    };
    match dsub {
        Some(dsub) => dres[..tc]
            .par_chunks_mut(rows * c)
            .zip(dsub[..tc].par_chunks_mut(rows * c))
            .enumerate()
            .for_each_init(Vec::new, |fac, (i, (dr, ds))| row_grads(i * rows, dr, Some(ds), fac)),
        None => dres[..tc]
            .par_chunks_mut(rows * c)
            .enumerate()
            .for_each_init(Vec::new, |fac, (i, dr)| row_grads(i * rows, dr, None, fac)),
    }
    // Pass 2, over blocks of columns (each summed in row order, independent of the thread
    // count): dweight += Σ_rows dout·x̂, dbias += Σ_rows dout.
    const COLS: usize = 32;
    dweight[..c].par_chunks_mut(COLS).zip(dbias[..c].par_chunks_mut(COLS)).enumerate().for_each(
        |(blk, (dw, db))| {
            let c0 = blk * COLS;
            let n = dw.len();
            let (mut pw, mut pb) = ([F::zero(); COLS], [F::zero(); COLS]);
            for row in 0..t {
                let (mu, rs) = (mean[row], rstd[row]);
                let x = &sum[row * c + c0..row * c + c0 + n];
                let dy = &dout[row * c + c0..row * c + c0 + n];
                for (((pw, pb), &x), &dy) in pw.iter_mut().zip(pb.iter_mut()).zip(x).zip(dy) {
                    *pw += dy * ((x - mu) * rs);
                    *pb += dy;
                }
            }
            for (d, p) in dw.iter_mut().zip(pw) {
                *d += p;
            }
            for (d, p) in db.iter_mut().zip(pb) {
                *d += p;
            }
        },
    );
}
