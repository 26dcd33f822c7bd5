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

/// The per-step scalars, rounded once to `F`.
struct Consts<F> {
    l2: Option<F>,
    decay: Option<F>,
    lerp_w: F,
    lerp_w1: F,
    small_w: bool,
    beta2: F,
    one_minus_beta2: F,
    neg_step: F,
    bc2: F,
    eps: F,
}

impl<F: Float> Consts<F> {
    fn new(step: &AdamStep) -> Self {
        let wd = step.weight_decay;
        let w = 1.0 - step.beta1;
        let lerp_w = cast::<F>(w);
        Consts {
            l2: (wd != 0.0 && !step.decoupled).then(|| cast::<F>(wd)),
            decay: (wd != 0.0 && step.decoupled).then(|| cast::<F>(1.0 - step.lr * wd)),
            lerp_w,
            lerp_w1: F::one() - lerp_w,
            small_w: w.abs() < 0.5,
            beta2: cast::<F>(step.beta2),
            one_minus_beta2: cast::<F>(1.0 - step.beta2),
            neg_step: cast::<F>(-step.step_size()),
            bc2: cast::<F>(step.bias_correction2_sqrt()),
            eps: cast::<F>(step.eps),
        }
    }

    /// One chunk of elements, in PyTorch's order of operations.
    #[inline]
    fn apply(&self, p: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = match self.l2 {
                Some(wd) => g + wd * *p,
                None => g,
            };
            if let Some(f) = self.decay {
                *p *= f;
            }
            *m = if self.small_w { *m + self.lerp_w * (g - *m) } else { g - (g - *m) * self.lerp_w1 };
            *v = *v * self.beta2 + self.one_minus_beta2 * g * g;
            let denom = v.sqrt() / self.bc2 + self.eps;
            *p += self.neg_step * *m / denom;
        }
    }
}

fn check_lens(n: usize, g: usize, m: usize, v: usize) {
    assert!(g == n && m == n && v == n, "adam_update: params/grads/m/v have {n}/{g}/{m}/{v} elements");
}

/// params, grads, m, v: (N,) each; params, m, v updated in place.
pub(super) fn adam_update<F: Float>(
    params: &mut [F],
    grads: &[F],
    m: &mut [F],
    v: &mut [F],
    step: &AdamStep,
) {
    check_lens(params.len(), grads.len(), m.len(), v.len());
    let k = Consts::<F>::new(step);
    (params.par_chunks_mut(ELEMS_PER_TASK), grads.par_chunks(ELEMS_PER_TASK))
        .into_par_iter()
        .zip(m.par_chunks_mut(ELEMS_PER_TASK).zip(v.par_chunks_mut(ELEMS_PER_TASK)))
        .for_each(|((p, g), (m, v))| k.apply(p, g, m, v));
}

/// The same step on the rows `rows` (sorted, distinct) of (R, row_len) tables only.
pub(super) fn adam_update_rows<F: Float>(
    params: &mut [F],
    grads: &[F],
    m: &mut [F],
    v: &mut [F],
    rows: &[u32],
    row_len: usize,
    step: &AdamStep,
) {
    check_lens(params.len(), grads.len(), m.len(), v.len());
    let n_rows = params.len() / row_len.max(1);
    let mut active = vec![false; n_rows];
    for &r in rows {
        assert!((r as usize) < n_rows, "adam_update_rows: row {r} outside the {n_rows}-row table");
        active[r as usize] = true;
    }
    let k = Consts::<F>::new(step);
    (params.par_chunks_mut(row_len), grads.par_chunks(row_len))
        .into_par_iter()
        .zip(m.par_chunks_mut(row_len).zip(v.par_chunks_mut(row_len)))
        .enumerate()
        .with_min_len(64)
        .filter(|(i, _)| active[*i])
        .for_each(|(_, ((p, g), (m, v)))| k.apply(p, g, m, v));
}

/// Zeroes the rows `rows` of a (R, row_len) table.
pub(super) fn zero_rows<F: Float>(buf: &mut [F], rows: &[u32], row_len: usize) {
    let n_rows = buf.len() / row_len.max(1);
    for &r in rows {
        let r = r as usize;
        assert!(r < n_rows, "zero_rows: row {r} outside the {n_rows}-row table");
        buf[r * row_len..(r + 1) * row_len].fill(F::zero());
    }
}
