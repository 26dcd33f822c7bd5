//! Column sums: the CPU twin of kernels/reduce.cu, used for the bias gradients. Parallel over
//! blocks of columns, each summed in row order, so the result does not depend on the thread count.

use super::{Float, ELEMS_PER_TASK};
use rayon::prelude::*;

/// acc (C,) += Σ_rows x (R,C). Parallel over blocks of columns, each summed in row order, so the
/// result does not depend on the thread count.
pub(super) fn column_sums_into<F: Float>(acc: &mut [F], x: &[F], c: usize) {
    const COLS: usize = 64;
    let r = x.len() / c.max(1);
    let min_blocks = if r * c >= ELEMS_PER_TASK { 1 } else { usize::MAX };
    acc.par_chunks_mut(COLS).with_min_len(min_blocks).enumerate().for_each(|(blk, a)| {
        let c0 = blk * COLS;
        let mut part = [F::zero(); COLS];
        let part = &mut part[..a.len()];
        for row in x.chunks_exact(c) {
            for (p, &v) in part.iter_mut().zip(&row[c0..c0 + a.len()]) {
                *p += v;
            }
        }
        for (a, p) in a.iter_mut().zip(part.iter()) {
            *a += *p;
        }
    });
}
