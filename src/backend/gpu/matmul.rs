//! The matrix products: Linear layers as cuBLAS GEMMs (exact fp32 `sgemm`, or bf16 operands with
//! fp32 accumulation on tensor cores when the backend runs in bf16), the bias added by
//! `bias_forward` (kernels/activation.cu) and the bias gradient by the column sums of reduce.cu.

use super::device::{Device, Gemm};
use super::launch::{i, need, p, pm};
use super::memory::{GView, GViewMut};
use super::Gpu;

impl<D: Device> Gpu<D> {
    /// C = alpha·op(A)·op(B) + beta·C, in bf16 when the backend runs in bf16 (see [`Gpu::new_bf16`]).
    pub(crate) fn sgemm(&self, g: Gemm) {
        if self.failed() || g.m == 0 || g.n == 0 {
            return;
        }
        if self.bf16 && g.k > 0 {
            if self.bf16_copies {
                return self.gemm_bf16(g);
            }
            // SAFETY: the launcher checked the matrices against the views.
            let r = unsafe { self.dev.gemm_fast_bf16(&g) };
            self.record(r);
            self.profile_mark("matmul");
            return;
        }
        // SAFETY: the launcher checked the matrices against the views.
        let r = unsafe { self.dev.sgemm(&g) };
        self.record(r);
        self.profile_mark("matmul");
    }

    /// [`Gpu::sgemm`] on bf16 copies of A and B (pooled scratch, converted on the device): the
    /// engine before cuBLAS converted inside the GEMM, kept for comparison
    /// (`NLI_BERT_BF16_GEMM=copies`).
    fn gemm_bf16(&self, g: Gemm) {
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let span = |rows: usize, cols: usize, ld: usize| (rows - 1) * ld + cols;
        let (na, nb) = (span(ar, ac, g.lda), span(br, bc, g.ldb));
        let (a16, b16) = match (self.to_bf16(g.a, na), self.to_bf16(g.b, nb)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return self.record(Err(e)),
        };
        if self.failed() {
            return;
        }
        // SAFETY: the copies hold the same (rows, cols, ld) matrices as A and B; C as checked by
        // the launcher.
        let r = unsafe { self.dev.gemm_bf16(&Gemm { a: a16.ptr, b: b16.ptr, ..g }) };
        self.record(r);
        self.profile_mark("matmul");
    }
}

/// See [`Backend::matmul_forward`](crate::backend::Backend::matmul_forward).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<D: Device>(
    g: &Gpu<D>,
    out: GViewMut<'_>,
    inp: GView<'_>,
    weight: GView<'_>,
    bias: Option<GView<'_>>,
    n: usize,
    ic: usize,
    oc: usize,
) {
    need("matmul_forward", "out", out.len, n * oc);
    need("matmul_forward", "inp", inp.len, n * ic);
    need("matmul_forward", "weight", weight.len, oc * ic);
    // out (n,oc) = inp (n,ic) · weightᵀ
    g.sgemm(Gemm {
        trans_a: false,
        trans_b: true,
        m: n,
        n: oc,
        k: ic,
        alpha: 1.0,
        a: inp.ptr,
        lda: ic,
        b: weight.ptr,
        ldb: ic,
        beta: 0.0,
        c: out.ptr,
        ldc: oc,
    });
    if ic == 0 && n * oc > 0 {
        g.zero_bytes(out.ptr, n * oc);
    }
    if let Some(bias) = bias {
        need("matmul_forward", "bias", bias.len, oc);
        g.launch_n("bias_forward", n * oc, &[pm(&out), p(&bias), i(n), i(oc)]);
    }
}

/// See [`Backend::matmul_backward`](crate::backend::Backend::matmul_backward).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<D: Device>(
    g: &Gpu<D>,
    dinp: Option<GViewMut<'_>>,
    accumulate_dinp: bool,
    dweight: GViewMut<'_>,
    dbias: Option<GViewMut<'_>>,
    dout: GView<'_>,
    inp: GView<'_>,
    weight: GView<'_>,
    n: usize,
    ic: usize,
    oc: usize,
) {
    need("matmul_backward", "dout", dout.len, n * oc);
    need("matmul_backward", "inp", inp.len, n * ic);
    need("matmul_backward", "weight", weight.len, oc * ic);
    need("matmul_backward", "dweight", dweight.len, oc * ic);
    if let Some(dinp) = dinp {
        need("matmul_backward", "dinp", dinp.len, n * ic);
        if oc == 0 && !accumulate_dinp {
            g.zero_bytes(dinp.ptr, n * ic);
        }
        // dinp (n,ic) = dout (n,oc) · weight (oc,ic)
        g.sgemm(Gemm {
            trans_a: false,
            trans_b: false,
            m: n,
            n: ic,
            k: oc,
            alpha: 1.0,
            a: dout.ptr,
            lda: oc,
            b: weight.ptr,
            ldb: ic,
            beta: if accumulate_dinp { 1.0 } else { 0.0 },
            c: dinp.ptr,
            ldc: ic,
        });
    }
    // dweight (oc,ic) += doutᵀ (oc,n) · inp (n,ic)
    if n > 0 {
        g.sgemm(Gemm {
            trans_a: true,
            trans_b: false,
            m: oc,
            n: ic,
            k: n,
            alpha: 1.0,
            a: dout.ptr,
            lda: oc,
            b: inp.ptr,
            ldb: ic,
            beta: 1.0,
            c: dweight.ptr,
            ldc: ic,
        });
    }
    if let Some(dbias) = dbias {
        need("matmul_backward", "dbias", dbias.len, oc);
        g.column_sums(dbias.ptr, dout.ptr, n, oc);
    }
}
