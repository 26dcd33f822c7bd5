//! Row gathers and element-wise ops: the embedding sum and its scatter-add, activations, the
//! `<cls>` gather, and stand-alone dropout.

use super::{cast, check_layout, dropout_factors, rows_per_task, wide, Cpu, Float, ELEMS_PER_TASK};
use crate::backend::{Activation, BatchLayout, DeviceBatch};
use crate::rng::Dropout;
use rayon::prelude::*;

/// Row `id` of a table with rows of length `c`; panics with the op, table and id when the id is
/// out of range (ids are validated by the data pipeline, so that is a programming error).
#[inline]
fn row_index(op: &str, table: &str, id: i32, rows: usize, pos: usize) -> usize {
    match usize::try_from(id) {
        Ok(i) if i < rows => i,
        _ => panic!("{op}: {table} id {id} at token {pos} is outside the table's {rows} rows"),
    }
}

/// out (T,C) = wte (V,C)[tokens] + wse (S,C)[segments] + wpe (P,C)[positions], summed in that
/// order like d2l (`(tok + seg) + pos`).
pub(super) fn embedding_forward<F: Float>(
    out: &mut [F],
    batch: &DeviceBatch<Cpu<F>>,
    wte: &[F],
    wse: &[F],
    wpe: &[F],
    c: usize,
) {
    let t = check_layout("embedding_forward", &batch.layout);
    assert!(
        out.len() >= t * c
            && batch.tokens.len() >= t
            && batch.segments.len() >= t
            && batch.positions.len() >= t,
        "embedding_forward: out has {} elements, tokens/segments/positions {}/{}/{}; need T = {t} rows of C = {c}",
        out.len(),
        batch.tokens.len(),
        batch.segments.len(),
        batch.positions.len()
    );
    if c == 0 {
        return;
    }
    let (nv, ns, np) = (wte.len() / c, wse.len() / c, wpe.len() / c);
    let rows = rows_per_task(c);
    out[..t * c].par_chunks_mut(rows * c).enumerate().for_each(|(chunk, out)| {
        for (r, o) in out.chunks_exact_mut(c).enumerate() {
            let i = chunk * rows + r;
            let tk = row_index("embedding_forward", "token", batch.tokens[i], nv, i);
            let sg = row_index("embedding_forward", "segment", batch.segments[i], ns, i);
            let ps = row_index("embedding_forward", "position", batch.positions[i], np, i);
            let (a, b, p) = (&wte[tk * c..][..c], &wse[sg * c..][..c], &wpe[ps * c..][..c]);
            for (((o, &a), &b), &p) in o.iter_mut().zip(a).zip(b).zip(p) {
                *o = (a + b) + p;
            }
        }
    });
}

/// Scatter-adds dout (T,C) into dwte (V,C), dwse (S,C) and, unless `None` (frozen positional
/// table), dwpe (P,C). The three tables are updated in parallel, each in token order.
pub(super) fn embedding_backward<F: Float>(
    dwte: &mut [F],
    dwse: &mut [F],
    dwpe: Option<&mut [F]>,
    dout: &[F],
    batch: &DeviceBatch<Cpu<F>>,
    c: usize,
) {
    let t = check_layout("embedding_backward", &batch.layout);
    assert!(dout.len() >= t * c, "embedding_backward: dout has {} elements, need {t}×{c}", dout.len());
    if c == 0 {
        return;
    }
    let scatter = |table: &str, dw: &mut [F], ids: &[i32]| {
        assert!(ids.len() >= t, "embedding_backward: {} {table} ids for T = {t}", ids.len());
        let rows = dw.len() / c;
        for (i, (&id, d)) in ids[..t].iter().zip(dout.chunks_exact(c)).enumerate() {
            let r = row_index("embedding_backward", table, id, rows, i);
            for (w, &d) in dw[r * c..(r + 1) * c].iter_mut().zip(d) {
                *w += d;
            }
        }
    };
    rayon::join(
        || scatter("token", dwte, &batch.tokens),
        || {
            rayon::join(
                || scatter("segment", dwse, &batch.segments),
                || {
                    if let Some(dwpe) = dwpe {
                        scatter("position", dwpe, &batch.positions)
                    }
                },
            )
        },
    );
}

/// √(2/π), for tanh-GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// 1/√(2π), the standard normal density at 0.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// erf from libm (< 1 ulp): `erff` for f32 (what PyTorch's f32 GELU evaluates), `erf` for f64.
#[inline(always)]
fn erf<F: Float>(x: F) -> F {
    if F::NAME == "f32" {
        cast(libm::erff(wide(x) as f32) as f64)
    } else {
        cast(libm::erf(wide(x)))
    }
}

/// GELU's Φ(x) = ½(1 + erf(x/√2)).
#[inline(always)]
fn gelu_cdf<F: Float>(x: F) -> F {
    cast::<F>(0.5) * (F::one() + erf(x * cast(std::f64::consts::FRAC_1_SQRT_2)))
}

/// The inner term u = √(2/π)(x + 0.044715x³) of tanh-GELU.
#[inline(always)]
fn gelu_tanh_u<F: Float>(x: F) -> F {
    cast::<F>(SQRT_2_OVER_PI) * (x + cast::<F>(0.044715) * x * x * x)
}

/// out = f(x) element-wise, in parallel chunks (`f` is inlined into the loop, so the activation
/// is chosen once per call, not per element).
fn map1<F: Float>(out: &mut [F], inp: &[F], f: impl Fn(F) -> F + Sync) {
    out.par_chunks_mut(ELEMS_PER_TASK).zip(inp.par_chunks(ELEMS_PER_TASK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(x);
        }
    });
}

/// d = f(dy, x, y) element-wise, in parallel chunks.
fn map3<F: Float>(d: &mut [F], dy: &[F], x: &[F], y: &[F], f: impl Fn(F, F, F) -> F + Sync) {
    d.par_chunks_mut(ELEMS_PER_TASK)
        .zip(dy.par_chunks(ELEMS_PER_TASK))
        .zip(x.par_chunks(ELEMS_PER_TASK).zip(y.par_chunks(ELEMS_PER_TASK)))
        .for_each(|((d, dy), (x, y))| {
            for (((d, &dy), &x), &y) in d.iter_mut().zip(dy).zip(x).zip(y) {
                *d = f(dy, x, y);
            }
        });
}

/// out (N,) = act(inp (N,)). ReLU keeps NaN (like PyTorch); GELU uses the exact erf; GeluTanh
/// is `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
pub(super) fn act_forward<F: Float>(out: &mut [F], inp: &[F], act: Activation) {
    assert!(out.len() == inp.len(), "act_forward: out has {} elements, inp {}", out.len(), inp.len());
    let half = cast::<F>(0.5);
    match act {
        Activation::Relu => map1(out, inp, |x| if x < F::zero() { F::zero() } else { x }),
        Activation::Gelu => map1(out, inp, |x| x * gelu_cdf(x)),
        Activation::GeluTanh => map1(out, inp, |x| half * x * (F::one() + gelu_tanh_u(x).tanh())),
        Activation::Tanh => map1(out, inp, |x| x.tanh()),
    }
}

/// dinp (N,) = act'(inp (N,)) · dout (N,), overwritten; out (N,) is the forward output (ReLU
/// and tanh use it; ReLU's gradient is 0 where the output is <= 0, PyTorch's threshold_backward).
pub(super) fn act_backward<F: Float>(dinp: &mut [F], dout: &[F], inp: &[F], out: &[F], act: Activation) {
    let n = dinp.len();
    assert!(
        dout.len() == n && inp.len() == n && out.len() == n,
        "act_backward: dinp/dout/inp/out have {n}/{}/{}/{} elements",
        dout.len(),
        inp.len(),
        out.len()
    );
    let half = cast::<F>(0.5);
    match act {
        Activation::Relu => map3(dinp, dout, inp, out, |dy, _, y| if y > F::zero() { dy } else { F::zero() }),
        Activation::Gelu => map3(dinp, dout, inp, out, |dy, x, _| {
            let pdf = cast::<F>(INV_SQRT_2PI) * (-half * x * x).exp();
            dy * (gelu_cdf(x) + x * pdf)
        }),
        Activation::GeluTanh => map3(dinp, dout, inp, out, |dy, x, _| {
            let (k, a) = (cast::<F>(SQRT_2_OVER_PI), cast::<F>(0.044715));
            let th = gelu_tanh_u(x).tanh();
            let du = k * (F::one() + cast::<F>(3.0) * a * x * x);
            dy * (half * (F::one() + th) + half * x * (F::one() - th * th) * du)
        }),
        Activation::Tanh => map3(dinp, dout, inp, out, |dy, _, y| dy * (F::one() - y * y)),
    }
}

/// out (B,C) = x (T,C) at the first row of each sequence (an empty sequence gives a zero row).
pub(super) fn cls_forward<F: Float>(out: &mut [F], x: &[F], layout: &BatchLayout, c: usize) {
    let t = check_layout("cls_forward", layout);
    let nb = layout.b();
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
    let nb = layout.b();
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

/// out (N,) = x (N,) · dropout factor of its index (0 or 1/(1−p)); a copy when dropout is off.
/// Forward and backward are the same map.
pub(super) fn dropout_apply<F: Float>(op: &str, out: &mut [F], x: &[F], dropout: &Dropout) {
    assert!(out.len() == x.len(), "{op}: output has {} elements, input {}", out.len(), x.len());
    if !dropout.active() {
        out.copy_from_slice(x);
        return;
    }
    out.par_chunks_mut(ELEMS_PER_TASK).zip(x.par_chunks(ELEMS_PER_TASK)).enumerate().for_each_init(
        Vec::new,
        |fac, (chunk, (o, x))| {
            fac.resize(o.len(), F::zero());
            dropout_factors(dropout, (chunk * ELEMS_PER_TASK) as u64, fac);
            for ((o, &x), &f) in o.iter_mut().zip(x).zip(fac.iter()) {
                *o = x * f;
            }
        },
    );
}
