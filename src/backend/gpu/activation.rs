//! Launchers of kernels/activation.cu: the element-wise nonlinearities (ReLU, GELU erf, GELU tanh,
//! tanh) forward and backward, and stand-alone dropout (the sites that are not fused into
//! LayerNorm or attention). The bias of the Linear layers (`bias_forward`, also in activation.cu)
//! is launched by the matmul family.

use super::device::{Device, KArg};
use super::launch::{bf16_acts, dropout_args, l, p, pm, variant};
use super::memory::{GView, GViewMut};
use super::Gpu;
use crate::backend::Activation;
use crate::rng::Dropout;

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Relu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Tanh => 3,
    }
}

/// See [`Backend::activation_forward`](crate::backend::Backend::activation_forward).
pub(super) fn forward<D: Device>(g: &Gpu<D>, out: GViewMut<'_>, inp: GView<'_>, act: Activation) {
    assert!(out.len == inp.len, "activation_forward: out has {} elements, inp {}", out.len, inp.len);
    let bf16 = bf16_acts("activation_forward", &[("out", out.is_bf16()), ("inp", inp.is_bf16())]);
    let args = [pm(&out), p(&inp), l(out.len), KArg::I32(act_code(act))];
    g.launch_n(variant("activation_forward", bf16), out.len, &args);
}

/// See [`Backend::activation_backward`](crate::backend::Backend::activation_backward).
pub(super) fn backward<D: Device>(
    g: &Gpu<D>,
    dinp: GViewMut<'_>,
    dout: GView<'_>,
    inp: GView<'_>,
    out: GView<'_>,
    act: Activation,
) {
    let n = dinp.len;
    assert!(
        dout.len == n && inp.len == n && out.len == n,
        "activation_backward: dinp/dout/inp/out have {n}/{}/{}/{} elements",
        dout.len,
        inp.len,
        out.len
    );
    let bf16 = bf16_acts(
        "activation_backward",
        &[("dinp", dinp.is_bf16()), ("dout", dout.is_bf16()), ("inp", inp.is_bf16()), ("out", out.is_bf16())],
    );
    g.launch_n(
        variant("activation_backward", bf16),
        n,
        &[pm(&dinp), p(&dout), p(&inp), p(&out), l(n), KArg::I32(act_code(act))],
    );
}

/// See [`Backend::dropout_forward`](crate::backend::Backend::dropout_forward).
pub(super) fn dropout_forward<D: Device>(g: &Gpu<D>, out: GViewMut<'_>, inp: GView<'_>, dropout: Dropout) {
    assert!(out.len == inp.len, "dropout_forward: out has {} elements, inp {}", out.len, inp.len);
    let [a, b, c, d, e, f] = dropout_args(&dropout);
    let bf16 = bf16_acts("dropout_forward", &[("out", out.is_bf16()), ("inp", inp.is_bf16())]);
    g.launch_n(variant("dropout_forward", bf16), out.len, &[pm(&out), p(&inp), l(out.len), a, b, c, d, e, f]);
}

/// See [`Backend::dropout_backward`](crate::backend::Backend::dropout_backward).
pub(super) fn dropout_backward<D: Device>(g: &Gpu<D>, dinp: GViewMut<'_>, dout: GView<'_>, dropout: Dropout) {
    assert!(dinp.len == dout.len, "dropout_backward: dinp has {} elements, dout {}", dinp.len, dout.len);
    let [a, b, c, d, e, f] = dropout_args(&dropout);
    let bf16 = bf16_acts("dropout_backward", &[("dinp", dinp.is_bf16()), ("dout", dout.is_bf16())]);
    g.launch_n(
        variant("dropout_backward", bf16),
        dinp.len,
        &[pm(&dinp), p(&dout), l(dinp.len), a, b, c, d, e, f],
    );
}
