//! The emulator's matrix products (the `Device` trait's GEMM methods, run on the host in f32: one
//! accumulator per output element, in `k` order) and cuBLASLt's epilogues as documented (bias,
//! bias + ReLU with its bit mask, the ReLU mask applied to a product, the bias gradient).

use super::super::device::{DevPtr, Epilogue, Gemm, GemmMath};
use super::super::graph::{GemmOp, Op};
use super::{lock, Emu};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// How a product reads its operands.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Operands {
    /// f32, as stored.
    F32,
    /// bf16 (`u16`), widened exactly.
    Bf16,
    /// f32, rounded to bf16 as the library does inside the product (round to nearest even,
    /// what `cvt.rn` does).
    RoundedToBf16,
}

impl Emu {
    /// A plain product (`Device::sgemm`, `gemm_bf16`, `gemm_fast_bf16`), recorded as `op` while
    /// a step graph is captured or updated.
    ///
    /// # Safety
    /// The matrices described by `g` lie inside live allocations.
    pub(super) unsafe fn gemm_plain(&self, g: &Gemm, op: GemmOp, how: Operands) -> Result<()> {
        if self.recorded(Op::Gemm { op, g: *g }) {
            return Ok(());
        }
        let _stream = lock(&self.stream);
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let c_bf16 = matches!(op, GemmOp::Bf16(true));
        let (a, b) = self.operands(g, how)?;
        // SAFETY: forwarded from the caller's guarantee on C.
        let vals = unsafe { self.gemm_host(g, &a, &b, c_bf16)? };
        // SAFETY: as above.
        unsafe { self.store_c(g, &vals, c_bf16) };
        Ok(())
    }

    /// op(A)'s and op(B)'s stored matrices, read as `how` says.
    fn operands(&self, g: &Gemm, how: Operands) -> Result<(Vec<f32>, Vec<f32>)> {
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let read = |ptr, rows, cols, ld, what| match how {
            Operands::Bf16 => self.read_matrix_bf16(ptr, rows, cols, ld, what),
            Operands::F32 | Operands::RoundedToBf16 => self.read_matrix(ptr, rows, cols, ld, what),
        };
        let (mut a, mut b) = (read(g.a, ar, ac, g.lda, "A")?, read(g.b, br, bc, g.ldb, "B")?);
        if how == Operands::RoundedToBf16 {
            for x in a.iter_mut().chain(b.iter_mut()) {
                *x = f32::from_bits((crate::backend::cpu::convert::f32_to_bf16(*x) as u32) << 16);
            }
        }
        Ok((a, b))
    }

    pub(super) unsafe fn gemm_fused(&self, g: &Gemm, math: GemmMath, ep: Epilogue) -> Result<bool> {
        if !self.lt {
            return Ok(false);
        }
        if self.recorded(Op::Gemm { op: GemmOp::Lt(math, ep), g: *g }) {
            return Ok(true);
        }
        let _stream = lock(&self.stream);
        if matches!(
            ep,
            Epilogue::Bias(_) | Epilogue::ReluBias(_) | Epilogue::ReluAuxBias { .. } | Epilogue::DRelu { .. }
        ) && g.beta != 0.0
        {
            return Err(Error::msg(format!("emu: gemm_lt: the {} epilogue needs beta = 0", ep.kind())));
        }
        if let Epilogue::ReluAuxBias { aux, aux_ld, .. } | Epilogue::DRelu { aux, aux_ld } = ep {
            if aux_ld % 128 != 0 || aux_ld < g.n {
                return Err(Error::msg(format!("emu: gemm_lt: aux_ld {aux_ld} for {} columns", g.n)));
            }
            self.check_range(aux, g.m * aux_ld / 8, "gemm_lt ReLU mask")?;
        }
        let (how, c_bf16) = match math {
            GemmMath::F32 => (Operands::F32, false),
            GemmMath::Bf16Fast => (Operands::RoundedToBf16, false),
            GemmMath::Bf16 { c_bf16 } => (Operands::Bf16, c_bf16),
        };
        let (a, b) = self.operands(g, how)?;
        if let Epilogue::BiasGradA(out) = ep {
            // Σ_k op(A)[i, k], in f32 in k order, over the operand as the product reads it.
            let at = |i: usize, kk: usize| if g.trans_a { a[kk * g.lda + i] } else { a[i * g.lda + kk] };
            let sums: Vec<f32> = (0..g.m).map(|i| (0..g.k).fold(0f32, |s, kk| s + at(i, kk))).collect();
            self.check_range(out, g.m * 4, "gemm_lt bias gradient")?;
            // SAFETY: `m` f32 at `out` lie inside a live allocation (checked above).
            unsafe { std::ptr::copy_nonoverlapping(sums.as_ptr(), out as *mut f32, g.m) };
        }
        // The epilogue works on the f32 result; C is written (rounded, if bf16) at the end.
        // SAFETY: forwarded from the caller's guarantee on C.
        let mut vals = unsafe { self.gemm_host(g, &a, &b, c_bf16)? };
        let n = g.n;
        if let Epilogue::Bias(bias) | Epilogue::ReluBias(bias) | Epilogue::ReluAuxBias { bias, .. } = ep {
            let bias = self.read_matrix(bias, 1, n, n, "bias")?;
            let relu = !matches!(ep, Epilogue::Bias(_));
            for row in vals.chunks_mut(n) {
                for (x, bj) in row.iter_mut().zip(&bias) {
                    let v = *x + bj;
                    *x = if relu && v < 0.0 { 0.0 } else { v };
                }
            }
        }
        if let Epilogue::ReluAuxBias { aux, aux_ld, .. } = ep {
            // The mask of the values kept (> 0), in cuBLASLt's layout (see `Epilogue`).
            let mut bits = vec![0u8; g.m * aux_ld / 8];
            for i in 0..g.m {
                for j in 0..n {
                    if vals[i * n + j] > 0.0 {
                        let b = i * aux_ld + j;
                        bits[b / 8] |= 1 << (b % 8);
                    }
                }
            }
            // SAFETY: the mask's range was checked above.
            unsafe { std::ptr::copy_nonoverlapping(bits.as_ptr(), aux as *mut u8, bits.len()) };
        }
        if let Epilogue::DRelu { aux, aux_ld } = ep {
            let mut bits = vec![0u8; g.m * aux_ld / 8];
            // SAFETY: the mask's range was checked above.
            unsafe { std::ptr::copy_nonoverlapping(aux as *const u8, bits.as_mut_ptr(), bits.len()) };
            for i in 0..g.m {
                for j in 0..n {
                    let b = i * aux_ld + j;
                    if bits[b / 8] & (1 << (b % 8)) == 0 {
                        vals[i * n + j] = 0.0;
                    }
                }
            }
        }
        // SAFETY: gemm_host checked C's span and alignment.
        unsafe { self.store_c(g, &vals, c_bf16) };
        Ok(true)
    }
}

/// Elements spanned by a (rows, cols) row-major matrix with row stride `ld`.
fn span(rows: usize, cols: usize, ld: usize, what: &str) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    if ld < cols {
        return Err(Error::msg(format!(
            "emu: sgemm {what}: row stride {ld} is less than its {cols} columns"
        )));
    }
    (rows - 1)
        .checked_mul(ld)
        .and_then(|x| x.checked_add(cols))
        .filter(|x| x.checked_mul(4).is_some())
        .ok_or_else(|| Error::msg(format!("emu: sgemm {what}: ({rows}, {cols}) with stride {ld} overflows")))
}

impl Emu {
    /// alpha·op(A)·op(B) + beta·C on the host, A and B already read as f32 (see [`Gemm`]), C
    /// read as bf16 when `c_bf16`: the (m, n) result, row-major and dense, before it is stored.
    ///
    /// # Safety
    /// C as described by `g` lies inside a live allocation (checked again here).
    unsafe fn gemm_host(&self, g: &Gemm, a: &[f32], b: &[f32], c_bf16: bool) -> Result<Vec<f32>> {
        let (m, n, k) = (g.m, g.n, g.k);
        let esize = if c_bf16 { 2 } else { 4 };
        let c_span = span(m, n, g.ldc, "C")?;
        self.check_range(g.c, c_span * esize, "sgemm C")?;
        if g.c % esize as u64 != 0 {
            return Err(Error::msg(format!("emu: sgemm C at {:#x} is not {esize}-byte aligned", g.c)));
        }
        // op(A) as (m, k) rows and op(B)ᵀ as (n, k) rows, contiguous.
        let at =
            |r: usize, c: usize, t: bool, x: &[f32], ld: usize| if t { x[c * ld + r] } else { x[r * ld + c] };
        let a_rows: Vec<f32> = (0..m * k).map(|i| at(i / k, i % k, g.trans_a, a, g.lda)).collect();
        let b_cols: Vec<f32> = (0..n * k).map(|i| at(i % k, i / k, g.trans_b, b, g.ldb)).collect();
        let mut prod = vec![0f32; m * n];
        prod.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let ai = &a_rows[i * k..(i + 1) * k];
            for (j, out) in row.iter_mut().enumerate() {
                let bj = &b_cols[j * k..(j + 1) * k];
                let mut acc = 0f32;
                for (x, y) in ai.iter().zip(bj) {
                    acc += x * y;
                }
                *out = acc;
            }
        });
        let old = if g.beta == 0.0 {
            None
        } else if c_bf16 {
            Some(self.read_matrix_bf16(g.c, m, n, g.ldc, "C")?)
        } else {
            Some(self.read_matrix(g.c, m, n, g.ldc, "C")?)
        };
        for i in 0..m {
            for j in 0..n {
                let v = g.alpha * prod[i * n + j];
                prod[i * n + j] = match &old {
                    None => v,
                    Some(c) => v + g.beta * c[i * g.ldc + j],
                };
            }
        }
        Ok(prod)
    }

    /// Writes the (m, n) result `vals` into C (rounded to bf16 when `c_bf16`).
    ///
    /// # Safety
    /// C's span and alignment were checked by [`Emu::gemm_host`].
    unsafe fn store_c(&self, g: &Gemm, vals: &[f32], c_bf16: bool) {
        for i in 0..g.m {
            for j in 0..g.n {
                let v = vals[i * g.n + j];
                // SAFETY: (i, j) lies in C's checked span: i*ldc + j <= (m-1)*ldc + n-1 (ldc >= n
                // was checked by `span`), and C is aligned for its element type.
                unsafe {
                    if c_bf16 {
                        *(g.c as *mut u16).add(i * g.ldc + j) = crate::backend::cpu::convert::f32_to_bf16(v);
                    } else {
                        *(g.c as *mut f32).add(i * g.ldc + j) = v;
                    }
                }
            }
        }
    }

    /// A (rows, cols) bf16 matrix with row stride `ld`, widened to f32 (exact).
    fn read_matrix_bf16(
        &self,
        ptr: DevPtr,
        rows: usize,
        cols: usize,
        ld: usize,
        what: &str,
    ) -> Result<Vec<f32>> {
        let n = span(rows, cols, ld, what)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        self.check_range(ptr, n * 2, &format!("gemm_bf16 {what}"))?;
        if ptr % 2 != 0 {
            return Err(Error::msg(format!("emu: gemm_bf16 {what} at {ptr:#x} is not 2-byte aligned")));
        }
        let mut raw = vec![0u16; n];
        // SAFETY: `n` u16 at `ptr` lie inside a live allocation (checked above) and `ptr` is
        // 2-byte aligned; `raw` is a distinct host buffer.
        unsafe { std::ptr::copy_nonoverlapping(ptr as *const u16, raw.as_mut_ptr(), n) };
        Ok(raw.into_iter().map(|h| f32::from_bits((h as u32) << 16)).collect())
    }

    fn read_matrix(&self, ptr: DevPtr, rows: usize, cols: usize, ld: usize, what: &str) -> Result<Vec<f32>> {
        let n = span(rows, cols, ld, what)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        self.check_range(ptr, n * 4, &format!("sgemm {what}"))?;
        if ptr % 4 != 0 {
            return Err(Error::msg(format!("emu: sgemm {what} at {ptr:#x} is not 4-byte aligned")));
        }
        let mut out = vec![0f32; n];
        // SAFETY: `n` f32 at `ptr` lie inside a live allocation (checked above) and `ptr` is
        // 4-byte aligned; `out` is a distinct host buffer.
        unsafe { std::ptr::copy_nonoverlapping(ptr as *const f32, out.as_mut_ptr(), n) };
        Ok(out)
    }
}
