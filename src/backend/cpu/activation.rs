//! Element-wise activations (ReLU, GELU with erf, GELU with tanh, tanh) forward and backward, and
//! stand-alone dropout (the sites not fused into LayerNorm or attention). The bias of the Linear
//! layers is added inside the matmul family.

use super::{cast, dropout_factors, wide, Float, ELEMS_PER_TASK};
use crate::backend::Activation;
use crate::rng::Dropout;
use rayon::prelude::*;

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
pub(super) fn activation_forward<F: Float>(out: &mut [F], inp: &[F], act: Activation) {
    assert!(out.len() == inp.len(), "activation_forward: out has {} elements, inp {}", out.len(), inp.len());
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
pub(super) fn activation_backward<F: Float>(
    dinp: &mut [F],
    dout: &[F],
    inp: &[F],
    out: &[F],
    act: Activation,
) {
    let n = dinp.len();
    assert!(
        dout.len() == n && inp.len() == n && out.len() == n,
        "activation_backward: dinp/dout/inp/out have {n}/{}/{}/{} elements",
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
