//! Linear layers: `out = inp·Wᵀ + b` and its backward, through the `gemm` crate.
//!
//! `gemm::gemm` computes `dst = alpha·dst + beta·lhs·rhs` (alpha and beta swapped with respect to
//! BLAS) with strides in elements, so every transpose is a stride swap and nothing is copied.

use super::reduce::column_sums_into;
use super::Float;
use gemm::Parallelism;
use rayon::prelude::*;

/// Products with more multiply-adds than this use the thread pool; smaller ones are faster on one
/// thread.
const PAR_MIN_WORK: usize = 1 << 18;

/// A row-major matrix view for [`gemm_into`]: base slice, row stride and column stride.
#[derive(Clone, Copy)]
struct Mat<'a, F> {
    data: &'a [F],
    rs: usize,
    cs: usize,
}

/// dst (m,n), row-major with row stride n, `= dst + lhs·rhs` (`accumulate`) or `= lhs·rhs`.
/// lhs is (m,k), rhs is (k,n) under their strides.
#[allow(clippy::too_many_arguments)]
fn gemm_into<F: Float>(
    threads: usize,
    dst: &mut [F],
    lhs: Mat<'_, F>,
    rhs: Mat<'_, F>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the largest offset each operand is read or written at must be inside its slice.
    let last = |mat: &Mat<'_, F>, rows: usize, cols: usize| (rows - 1) * mat.rs + (cols - 1) * mat.cs;
    assert!(dst.len() >= m * n, "matmul: output has {} elements, need {m}×{n}", dst.len());
    if k > 0 {
        assert!(last(&lhs, m, k) < lhs.data.len(), "matmul: left operand too small for ({m},{k})");
        assert!(last(&rhs, k, n) < rhs.data.len(), "matmul: right operand too small for ({k},{n})");
    }
    let par = if threads > 1 && m.saturating_mul(n).saturating_mul(k) > PAR_MIN_WORK {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every element gemm touches inside the three slices; dst is
    // a unique borrow and cannot alias lhs/rhs; F is f32 or f64 (the only `Float` impls), which
    // gemm supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { F::one() } else { F::zero() },
            F::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// A single-threaded strided product for callers that write disjoint parts of a shared buffer:
/// dst (m,n), row stride `dst_rs`, column stride 1, `= dst + lhs·rhs` (`accumulate`) or
/// `= lhs·rhs`; lhs (m,k) and rhs (k,n) with the given (row, column) strides.
///
/// # Safety
/// Every element addressed through the strides must lie inside a live allocation; no element of
/// dst may be read or written by anyone else during the call, nor overlap lhs or rhs.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_strided<F: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut F,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const F,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const F,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from this function's contract; F is f32 or f64.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { F::one() } else { F::zero() },
            F::one(),
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// out (N,OC) = inp (N,IC) · weight (OC,IC)ᵀ + bias (OC,).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_forward<F: Float>(
    threads: usize,
    out: &mut [F],
    inp: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    n: usize,
    ic: usize,
    oc: usize,
) {
    assert!(out.len() >= n * oc, "matmul_forward: out has {} elements, need {n}×{oc}", out.len());
    let out = &mut out[..n * oc];
    if let Some(bias) = bias {
        assert!(bias.len() >= oc, "matmul_forward: bias has {} elements, need {oc}", bias.len());
        out.par_chunks_mut(oc.max(1)).with_min_len(rows(oc)).for_each(|row| row.copy_from_slice(&bias[..oc]));
    }
    gemm_into(
        threads,
        out,
        Mat { data: inp, rs: ic, cs: 1 },
        // Wᵀ: element (i, j) of the (IC,OC) matrix is weight[j·IC + i].
        Mat { data: weight, rs: 1, cs: ic },
        n,
        oc,
        ic,
        bias.is_some(),
    );
}

/// Backward of [`matmul_forward`]: dinp (N,IC) = dout (N,OC) · weight (OC,IC), overwritten or
/// (`accumulate_dinp`) added; dweight (OC,IC) += doutᵀ · inp (N,IC); dbias (OC,) += Σ_rows dout.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_backward<F: Float>(
    threads: usize,
    dinp: Option<&mut [F]>,
    accumulate_dinp: bool,
    dweight: &mut [F],
    dbias: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    weight: &[F],
    n: usize,
    ic: usize,
    oc: usize,
) {
    if let Some(dinp) = dinp {
        gemm_into(
            threads,
            dinp,
            Mat { data: dout, rs: oc, cs: 1 },
            Mat { data: weight, rs: ic, cs: 1 },
            n,
            ic,
            oc,
            accumulate_dinp,
        );
    }
    gemm_into(
        threads,
        dweight,
        // doutᵀ: element (i, j) of the (OC,N) matrix is dout[j·OC + i].
        Mat { data: dout, rs: 1, cs: oc },
        Mat { data: inp, rs: ic, cs: 1 },
        oc,
        ic,
        n,
        true,
    );
    if let Some(dbias) = dbias {
        assert!(dbias.len() >= oc, "matmul_backward: dbias has {} elements, need {oc}", dbias.len());
        assert!(dout.len() >= n * oc, "matmul_backward: dout has {} elements, need {n}×{oc}", dout.len());
        column_sums_into(&mut dbias[..oc], &dout[..n * oc], oc);
    }
}

/// Rows per task so that a task handles about [`ELEMS_PER_TASK`] elements.
fn rows(c: usize) -> usize {
    super::rows_per_task(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_with_bias_and_transposes() {
        let (n, ic, oc) = (5, 7, 3);
        let inp: Vec<f64> = (0..n * ic).map(|i| (i as f64 * 0.37).sin()).collect();
        let w: Vec<f64> = (0..oc * ic).map(|i| (i as f64 * 0.91).cos()).collect();
        let b: Vec<f64> = (0..oc).map(|i| i as f64 - 1.0).collect();
        let mut out = vec![f64::NAN; n * oc];
        matmul_forward(1, &mut out, &inp, &w, Some(&b), n, ic, oc);
        for i in 0..n {
            for j in 0..oc {
                let r: f64 = b[j] + (0..ic).map(|k| inp[i * ic + k] * w[j * ic + k]).sum::<f64>();
                assert!((out[i * oc + j] - r).abs() < 1e-12, "({i},{j})");
            }
        }
        // Without bias the (NaN-filled) output must be overwritten, not read.
        let mut out2 = vec![f64::NAN; n * oc];
        matmul_forward(1, &mut out2, &inp, &w, None, n, ic, oc);
        for (i, (&a, &o)) in out.iter().zip(&out2).enumerate() {
            assert!((a - b[i % oc] - o).abs() < 1e-12);
        }
    }

    #[test]
    fn threaded_gemm_is_bitwise_equal_to_single_threaded() {
        let (n, ic, oc) = (130, 96, 70); // n·ic·oc > PAR_MIN_WORK
        let inp: Vec<f32> = (0..n * ic).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..oc * ic).map(|i| (i as f32 * 0.91).cos()).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (mut a, mut b) = (vec![0f32; n * oc], vec![0f32; n * oc]);
        pool.install(|| {
            matmul_forward(1, &mut a, &inp, &w, None, n, ic, oc);
            matmul_forward(2, &mut b, &inp, &w, None, n, ic, oc);
        });
        assert!(a == b, "gemm results depend on the thread count");
        let (mut da, mut db) = (vec![0f32; oc * ic], vec![0f32; oc * ic]);
        let (mut ba, mut bb) = (vec![0f32; oc], vec![0f32; oc]);
        pool.install(|| {
            matmul_backward(1, None, false, &mut da, Some(&mut ba), &a, &inp, &w, n, ic, oc);
            matmul_backward(2, None, false, &mut db, Some(&mut bb), &a, &inp, &w, n, ic, oc);
        });
        assert!(da == db && ba == bb, "weight gradients depend on the thread count");
    }
}
