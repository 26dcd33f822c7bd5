//! cuBLAS for [`Cuda`]: the row-major to column-major mapping of a [`Gemm`], `sgemm`, `GemmEx`
//! (bf16 copies, f32 with bf16 compute) and the dispatch to cuBLASLt's fused products
//! ([`super::lt`]), all under the step-graph protocol ([`super::graphs`]).

use std::ffi::c_void;

use cudarc::cublas::{result as blas, sys as blas_sys};

use super::super::device::{DevPtr, Epilogue, Gemm, GemmMath};
use super::super::graph::{GemmOp, Op};
use super::{bind, graphs, Cuda};
use crate::error::{Error, Result};

impl Cuda {
    /// cuBLAS `GemmEx` for a row-major [`Gemm`]: A and B of type `ab`, C of type `ct`, fp32
    /// scalars.
    ///
    /// # Safety
    /// The matrices described by `g` lie in live allocations with those element types.
    pub(super) unsafe fn gemm_ex(
        &self,
        g: &Gemm,
        ab: blas_sys::cudaDataType,
        ct: blas_sys::cudaDataType,
        compute: blas_sys::cublasComputeType_t,
        what: &str,
    ) -> Result<()> {
        let (t1, t2, m, n, k, first, ld1, second, ld2) = sgemm_colmajor(g)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let ldc =
            i32::try_from(g.ldc).map_err(|_| Error::msg(format!("{what}: ldc = {} exceeds i32", g.ldc)))?;
        let h = self.blas.lock().unwrap_or_else(|p| p.into_inner());
        bind(self.ctx)?;
        // SAFETY: `*h` is a live handle on our stream; the caller guarantees the matrices; alpha
        // and beta are host f32 values, as the 32F compute types require.
        unsafe {
            blas::gemm_ex(
                *h,
                op(t1),
                op(t2),
                m,
                n,
                k,
                (&g.alpha as *const f32).cast::<c_void>(),
                first as *const c_void,
                ab,
                ld1,
                second as *const c_void,
                ab,
                ld2,
                (&g.beta as *const f32).cast::<c_void>(),
                g.c as *mut c_void,
                ct,
                ldc,
                compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| {
            Error::msg(format!(
                "cuBLAS {what} (row-major m={} n={} k={}, trans_a={}, trans_b={}): {e}",
                g.m, g.n, g.k, g.trans_a, g.trans_b
            ))
        })
    }

    pub(super) unsafe fn blas_sgemm(&self, g: &Gemm) -> Result<()> {
        let (t1, t2, m, n, k, first, ld1, second, ld2) = sgemm_colmajor(g)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if let graphs::Step::Done = self.graph_op(Op::Gemm { op: GemmOp::F32, g: *g }) {
            return Ok(());
        }
        let ldc =
            i32::try_from(g.ldc).map_err(|_| Error::msg(format!("sgemm: ldc = {} exceeds i32", g.ldc)))?;
        let h = self.blas.lock().unwrap_or_else(|p| p.into_inner());
        bind(self.ctx)?;
        // SAFETY: `*h` is a live handle on our stream; the caller guarantees the matrices lie
        // in live allocations; alpha/beta are host values (the default pointer mode).
        unsafe {
            blas::sgemm(
                *h,
                op(t1),
                op(t2),
                m,
                n,
                k,
                &g.alpha,
                first as *const f32,
                ld1,
                second as *const f32,
                ld2,
                &g.beta,
                g.c as *mut f32,
                ldc,
            )
        }
        .map_err(|e| {
            Error::msg(format!(
                "cuBLAS sgemm (row-major m={} n={} k={}, trans_a={}, trans_b={}): {e}",
                g.m, g.n, g.k, g.trans_a, g.trans_b
            ))
        })
    }

    pub(super) unsafe fn blas_gemm_bf16(&self, g: &Gemm, c_bf16: bool) -> Result<()> {
        if let graphs::Step::Done = self.graph_op(Op::Gemm { op: GemmOp::Bf16(c_bf16), g: *g }) {
            return Ok(());
        }
        let bf16 = blas_sys::cudaDataType::CUDA_R_16BF;
        let ct = if c_bf16 { bf16 } else { blas_sys::cudaDataType::CUDA_R_32F };
        let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        // SAFETY: forwarded from the caller (A, B bf16; C bf16 or f32).
        unsafe { self.gemm_ex(g, bf16, ct, compute, "GemmEx bf16") }
    }

    pub(super) unsafe fn blas_gemm_fast_bf16(&self, g: &Gemm) -> Result<()> {
        if let graphs::Step::Done = self.graph_op(Op::Gemm { op: GemmOp::FastBf16, g: *g }) {
            return Ok(());
        }
        let f32t = blas_sys::cudaDataType::CUDA_R_32F;
        let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF;
        // SAFETY: forwarded from the caller (A, B, C f32).
        unsafe { self.gemm_ex(g, f32t, f32t, compute, "GemmEx f32 with bf16 compute") }
    }

    pub(super) unsafe fn blas_gemm_lt(&self, g: &Gemm, math: GemmMath, ep: Epilogue) -> Result<bool> {
        let mut lt = self.lt.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(lt) = lt.as_mut() else { return Ok(false) };
        bind(self.ctx)?;
        if self.graph_busy() {
            // A graph records only the products that run: decide first.
            // SAFETY: forwarded; nothing runs.
            if !unsafe { lt.available(g, math, ep)? } {
                return Ok(false);
            }
            if let graphs::Step::Done = self.graph_op(Op::Gemm { op: GemmOp::Lt(math, ep), g: *g }) {
                return Ok(true);
            }
        }
        // SAFETY: forwarded from the caller; the context is current.
        unsafe { lt.run(g, math, ep, self.stream) }
    }
}

/// cuBLAS (column-major) arguments for a row-major [`Gemm`]: row-major `C = op(A)·op(B)` is
/// column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, so A and B swap places, m and n swap, the transpose
/// flags stay with their matrices. Returns `(trans_first, trans_second, m', n', k, first, ld1,
/// second, ld2)` after checking the sizes and strides.
#[allow(clippy::type_complexity)]
pub(super) fn sgemm_colmajor(g: &Gemm) -> Result<(bool, bool, i32, i32, i32, DevPtr, i32, DevPtr, i32)> {
    let a_cols = if g.trans_a { g.m } else { g.k };
    let b_cols = if g.trans_b { g.k } else { g.n };
    let bad = |what: String| Error::msg(format!("sgemm m={} n={} k={}: {what}", g.m, g.n, g.k));
    for (name, ld, cols) in [("lda", g.lda, a_cols), ("ldb", g.ldb, b_cols), ("ldc", g.ldc, g.n)] {
        if ld < cols.max(1) {
            return Err(bad(format!("{name} = {ld} is less than the row length {cols}")));
        }
    }
    let int = |x: usize, what: &str| i32::try_from(x).map_err(|_| bad(format!("{what} = {x} exceeds i32")));
    Ok((
        g.trans_b,
        g.trans_a,
        int(g.n, "n")?,
        int(g.m, "m")?,
        int(g.k, "k")?,
        g.b,
        int(g.ldb, "ldb")?,
        g.a,
        int(g.lda, "lda")?,
    ))
}

fn op(t: bool) -> blas_sys::cublasOperation_t {
    if t {
        blas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_maps_row_major_to_column_major() {
        let g = Gemm {
            trans_a: true,
            trans_b: false,
            m: 3,
            n: 5,
            k: 7,
            alpha: 1.0,
            a: 0xA,
            lda: 3,
            b: 0xB,
            ldb: 6,
            beta: 0.0,
            c: 0xC,
            ldc: 5,
        };
        assert_eq!(sgemm_colmajor(&g).ok(), Some((false, true, 5, 3, 7, 0xB, 6, 0xA, 3)));
        let bad = Gemm { lda: 2, ..g };
        assert!(sgemm_colmajor(&bad).unwrap_err().to_string().contains("lda = 2"));
    }
}
