//! One Adam / AdamW step with the arithmetic of PyTorch 2.x `_single_tensor_adam` on the CPU
//! (non-capturable, non-fused, `maximize = False`, `amsgrad = False`):
//!
//! ```text
//! Adam:  g ← g + wd·p                    (grad.add(param, alpha=wd), when wd ≠ 0)
//! AdamW: p ← p·(1 − lr·wd)               (param.mul_(1 - lr*wd); the factor is computed in f64)
//! m ← lerp(m, g, 1 − β1)                 (m + w·(g − m) for w < 0.5, else g − (g − m)·(1 − w))
//! v ← v·β2 + (1 − β2)·g·g                (mul_ then addcmul_)
//! p ← p + (−step_size)·m / (√v / bc2 + ε) (addcdiv_)
//! ```
//!
//! The host scalars (`step_size`, `bc2`, `1 − β1`, …) are computed in f64 like Python does and
//! rounded once to `F`, as PyTorch's CPU kernels use the tensor's own type for f32 tensors.

use super::{cast, Float, ELEMS_PER_TASK};
use crate::backend::AdamStep;
use rayon::prelude::*;

/// params, grads, m, v: (N,) each; params, m, v updated in place.
pub(super) fn adam_update<F: Float>(
    params: &mut [F],
    grads: &[F],
    m: &mut [F],
    v: &mut [F],
    step: &AdamStep,
) {
    let n = params.len();
    assert!(
        grads.len() == n && m.len() == n && v.len() == n,
        "adam_update: params/grads/m/v have {n}/{}/{}/{} elements",
        grads.len(),
        m.len(),
        v.len()
    );
    let wd = step.weight_decay;
    let l2 = (wd != 0.0 && !step.decoupled).then(|| cast::<F>(wd));
    let decay = (wd != 0.0 && step.decoupled).then(|| cast::<F>(1.0 - step.lr * wd));
    let w = 1.0 - step.beta1;
    let lerp_w = cast::<F>(w);
    let lerp_w1 = F::one() - lerp_w;
    let small_w = w.abs() < 0.5;
    let beta2 = cast::<F>(step.beta2);
    let one_minus_beta2 = cast::<F>(1.0 - step.beta2);
    let neg_step = cast::<F>(-step.step_size());
    let bc2 = cast::<F>(step.bias_correction2_sqrt());
    let eps = cast::<F>(step.eps);
    (params.par_chunks_mut(ELEMS_PER_TASK), grads.par_chunks(ELEMS_PER_TASK))
        .into_par_iter()
        .zip(m.par_chunks_mut(ELEMS_PER_TASK).zip(v.par_chunks_mut(ELEMS_PER_TASK)))
        .for_each(|((p, g), (m, v))| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = match l2 {
                    Some(wd) => g + wd * *p,
                    None => g,
                };
                if let Some(f) = decay {
                    *p *= f;
                }
                *m = if small_w { *m + lerp_w * (g - *m) } else { g - (g - *m) * lerp_w1 };
                *v = *v * beta2 + one_minus_beta2 * g * g;
                let denom = v.sqrt() / bc2 + eps;
                *p += neg_step * *m / denom;
            }
        });
}
