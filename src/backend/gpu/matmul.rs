//! The matrix products: Linear layers as cuBLASLt products (exact fp32, or bf16 operands with
//! fp32 accumulation on tensor cores when the backend runs in bf16) with the bias, the ReLU and
//! the bias gradient fused into their epilogues; where the device has no such product, cuBLAS
//! GEMMs with the bias added by `bias_forward` (kernels/activation.cu), the ReLU by
//! activation.cu and the bias gradient by the column sums of reduce.cu.
//!
//! With bf16 activations ([`super::DType::Bf16`]) a product reads them as stored and the weight
//! from its bf16 copy (the view's `shadow`, which Adam keeps; a weight without one is converted
//! into scratch first), and writes its output as bf16 (activations, their gradients) or f32 (the
//! weight gradients).

use super::device::{relu_aux_bytes, relu_aux_ld, DevPtr, Device, Epilogue, Gemm, GemmMath, KArg};
use super::launch::{bf16_acts, i, need, p, pm};
use super::memory::{GBuf, GView, GViewMut};
use super::Gpu;
use crate::backend::Activation;

/// How a product's matrices are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Storage {
    /// A, B and C f32 (the products round to bf16 inside in bf16 mode).
    F32,
    /// A and B bf16, C bf16 when `c_bf16`, else f32.
    Bf16 {
        /// C stored as bf16.
        c_bf16: bool,
    },
}

impl<D: Device> Gpu<D> {
    /// The weight operand of a product on bf16 activations: the address of its bf16 copy, and
    /// the scratch that holds a converted copy when the weight has none (kept alive until the
    /// product is issued).
    fn weight_bf16(&self, w: &GView<'_>) -> Option<(DevPtr, Option<GBuf<D, f32>>)> {
        if w.shadow != 0 {
            return Some((w.shadow, None));
        }
        match self.to_bf16(w.ptr, w.len) {
            Ok(b) => Some((b.ptr, Some(b))),
            Err(e) => {
                self.record(Err(e));
                None
            }
        }
    }

    /// The product `g` fused with `ep` on cuBLASLt, if this backend uses fused products and the
    /// device has one for it. False: nothing was run, the caller does it the plain way. After a
    /// device error (kept sticky) it returns true, so that the caller issues nothing more.
    pub(crate) fn gemm_fused(&self, g: Gemm, ep: Epilogue, st: Storage) -> bool {
        if self.failed() {
            return true;
        }
        if !self.fused || (st == Storage::F32 && self.bf16 && self.bf16_copies) {
            return false;
        }
        let math = match st {
            Storage::Bf16 { c_bf16 } => GemmMath::Bf16 { c_bf16 },
            Storage::F32 if self.bf16 => GemmMath::Bf16Fast,
            Storage::F32 => GemmMath::F32,
        };
        // SAFETY: the launcher checked the matrices and the epilogue's vector against the views.
        match unsafe { self.dev.gemm_lt(&g, math, ep) } {
            Ok(true) => {
                self.profile_mark("matmul");
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.record(Err(e));
                true
            }
        }
    }

    /// C = alpha·op(A)·op(B) + beta·C, in bf16 when the backend runs in bf16 (see [`Gpu::new_bf16`]),
    /// on matrices stored as `st` says.
    pub(crate) fn gemm(&self, g: Gemm, st: Storage) {
        if self.failed() || g.m == 0 || g.n == 0 {
            return;
        }
        if g.k > 0 && self.gemm_fused(g, Epilogue::None, st) {
            return;
        }
        if let Storage::Bf16 { c_bf16 } = st {
            if g.k == 0 {
                // Nothing to multiply: C = beta·C; only ever beta = 0 here (the launchers zero C).
                return;
            }
            // SAFETY: the launcher checked the matrices against the views (A, B bf16).
            let r = unsafe { self.dev.gemm_bf16(&g, c_bf16) };
            self.record(r);
            self.profile_mark("matmul");
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
        let r = unsafe { self.dev.gemm_bf16(&Gemm { a: a16.ptr, b: b16.ptr, ..g }, false) };
        self.record(r);
        self.profile_mark("matmul");
    }
}

/// The storage of a Linear layer's product on activations `acts` (input, output or their
/// gradients, which must agree) writing `c` (its own bf16 flag), and the address the product reads
/// the weight from (its bf16 copy with bf16 activations, plus any scratch holding it).
#[allow(clippy::type_complexity)]
fn operands<D: Device>(
    g: &Gpu<D>,
    op: &str,
    acts: &[(&str, bool)],
    c_bf16: bool,
    weight: &GView<'_>,
) -> Option<(Storage, DevPtr, Option<GBuf<D, f32>>)> {
    assert!(!weight.is_bf16(), "{op}: the weight must be f32 (its bf16 copy rides on the view)");
    if bf16_acts(op, acts) {
        let (w, scratch) = g.weight_bf16(weight)?;
        Some((Storage::Bf16 { c_bf16 }, w, scratch))
    } else {
        assert!(!c_bf16, "{op}: a bf16 output from f32 activations");
        Some((Storage::F32, weight.ptr, None))
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
    if let Some(bias) = &bias {
        need("matmul_forward", "bias", bias.len, oc);
    }
    let acts = [("inp", inp.is_bf16()), ("out", out.is_bf16())];
    let Some((st, w, _scratch)) = operands(g, "matmul_forward", &acts, out.is_bf16(), &weight) else {
        return;
    };
    let gemm = forward_gemm(&out, &inp, w, n, ic, oc);
    if let Some(bias) = &bias {
        if ic > 0 && g.gemm_fused(gemm, Epilogue::Bias(bias.ptr), st) {
            return;
        }
    }
    if let (Some(bias), Storage::Bf16 { c_bf16: true }) = (&bias, st) {
        // The product to f32 scratch, then bias + rounding in one kernel: the bias is added
        // before the rounding, as in the fused epilogue (a value near zero keeps its sign).
        let Some(prod) = g.scratch_f32(n * oc) else { return };
        if ic == 0 {
            g.zero_bytes(prod.ptr(), n * oc * 4);
        }
        g.gemm(Gemm { c: prod.ptr(), ..gemm }, Storage::Bf16 { c_bf16: false });
        let args = [pm(&out), KArg::Ptr(prod.ptr()), p(bias), i(n), i(oc)];
        g.launch_n("bias_forward_bf16", n * oc, &args);
        return;
    }
    g.gemm(gemm, st);
    if ic == 0 && n * oc > 0 {
        g.zero_bytes(out.ptr, n * oc * out.dtype.size() as usize);
    }
    if let Some(bias) = bias {
        g.launch_n("bias_forward", n * oc, &[pm(&out), p(&bias), i(n), i(oc)]);
    }
}

/// out (n,oc) = inp (n,ic) · weightᵀ, the weight read at `w`.
fn forward_gemm(out: &GViewMut<'_>, inp: &GView<'_>, w: DevPtr, n: usize, ic: usize, oc: usize) -> Gemm {
    Gemm {
        trans_a: false,
        trans_b: true,
        m: n,
        n: oc,
        k: ic,
        alpha: 1.0,
        a: inp.ptr,
        lda: ic,
        b: w,
        ldb: ic,
        beta: 0.0,
        c: out.ptr,
        ldc: oc,
    }
}

/// See [`Backend::matmul_act_forward`](crate::backend::Backend::matmul_act_forward): ReLU with a
/// bias runs as one product with the `RELU_BIAS` epilogue (`pre` unwritten: ReLU's backward reads
/// only `out`); anything else as the product, then the activation kernel.
#[allow(clippy::too_many_arguments)]
pub(super) fn act_forward<D: Device>(
    g: &Gpu<D>,
    pre: GViewMut<'_>,
    out: GViewMut<'_>,
    inp: GView<'_>,
    weight: GView<'_>,
    bias: Option<GView<'_>>,
    n: usize,
    ic: usize,
    oc: usize,
    act: Activation,
) {
    need("matmul_act_forward", "out", out.len, n * oc);
    need("matmul_act_forward", "pre", pre.len, n * oc);
    need("matmul_act_forward", "inp", inp.len, n * ic);
    need("matmul_act_forward", "weight", weight.len, oc * ic);
    let mut pre = pre;
    if let (Activation::Relu, Some(bias)) = (act, &bias) {
        need("matmul_act_forward", "bias", bias.len, oc);
        if ic > 0 {
            let acts = [("inp", inp.is_bf16()), ("out", out.is_bf16()), ("pre", pre.is_bf16())];
            let Some((st, w, _scratch)) = operands(g, "matmul_act_forward", &acts, out.is_bf16(), &weight)
            else {
                return;
            };
            let gemm = forward_gemm(&out, &inp, w, n, ic, oc);
            // With the mask kept in `pre` for the backward's DRELU epilogue, when it fits there.
            let aux = Epilogue::ReluAuxBias { bias: bias.ptr, aux: pre.ptr, aux_ld: relu_aux_ld(oc) };
            if relu_aux_bytes(n, oc) <= pre.bytes() && g.gemm_fused(gemm, aux, st) {
                g.set_relu_mask(pre.ptr, Some((n, oc)));
                return;
            }
            g.set_relu_mask(pre.ptr, None);
            if g.gemm_fused(gemm, Epilogue::ReluBias(bias.ptr), st) {
                return;
            }
        }
    }
    g.set_relu_mask(pre.ptr, None);
    forward(g, pre.reborrow(), inp, weight, bias, n, ic, oc);
    super::activation::forward(g, out, pre.as_view(), act);
}

/// See [`Backend::matmul_backward_act`](crate::backend::Backend::matmul_backward_act): after a
/// forward that kept ReLU's mask in `pre`, the product dout·weight applies it in its `DRELU`
/// epilogue and writes `dinp` directly; otherwise the product into `dact`, then the activation's
/// backward kernel.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_act<D: Device>(
    g: &Gpu<D>,
    dinp: GViewMut<'_>,
    dact: GViewMut<'_>,
    dweight: GViewMut<'_>,
    dbias: Option<GViewMut<'_>>,
    dout: GView<'_>,
    act_out: GView<'_>,
    pre: GView<'_>,
    weight: GView<'_>,
    n: usize,
    ic: usize,
    oc: usize,
    act: Activation,
) {
    need("matmul_backward_act", "dinp", dinp.len, n * ic);
    need("matmul_backward_act", "dout", dout.len, n * oc);
    need("matmul_backward_act", "weight", weight.len, oc * ic);
    if act == Activation::Relu && oc > 0 && g.relu_mask(pre.ptr) == Some((n, ic)) {
        let acts = [("dinp", dinp.is_bf16()), ("dout", dout.is_bf16())];
        let Some((st, w, _scratch)) = operands(g, "matmul_backward_act", &acts, dinp.is_bf16(), &weight)
        else {
            return;
        };
        // dinp (n,ic) = [mask] ⊙ (dout (n,oc) · weight (oc,ic))
        let gemm = Gemm {
            trans_a: false,
            trans_b: false,
            m: n,
            n: ic,
            k: oc,
            alpha: 1.0,
            a: dout.ptr,
            lda: oc,
            b: w,
            ldb: ic,
            beta: 0.0,
            c: dinp.ptr,
            ldc: ic,
        };
        if g.gemm_fused(gemm, Epilogue::DRelu { aux: pre.ptr, aux_ld: relu_aux_ld(ic) }, st) {
            backward(g, None, false, dweight, dbias, dout, act_out, weight, n, ic, oc);
            return;
        }
    }
    need("matmul_backward_act", "dact", dact.len, n * ic);
    let mut dact = dact;
    backward(g, Some(dact.reborrow()), false, dweight, dbias, dout, act_out, weight, n, ic, oc);
    super::activation::backward(g, dinp, dact.as_view(), pre, act_out, act);
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
    assert!(!dweight.is_bf16(), "matmul_backward: dweight must be f32");
    let bf16 = bf16_acts(
        "matmul_backward",
        &[
            ("dout", dout.is_bf16()),
            ("inp", inp.is_bf16()),
            ("dinp", dinp.as_ref().map_or(dout.is_bf16(), |d| d.is_bf16())),
        ],
    );
    if let Some(dinp) = dinp {
        need("matmul_backward", "dinp", dinp.len, n * ic);
        if oc == 0 && !accumulate_dinp {
            g.zero_bytes(dinp.ptr, n * ic * dinp.dtype.size() as usize);
        }
        let acts = [("dout", dout.is_bf16())];
        let Some((st, w, _scratch)) = operands(g, "matmul_backward", &acts, bf16, &weight) else { return };
        // dinp (n,ic) = dout (n,oc) · weight (oc,ic)
        g.gemm(
            Gemm {
                trans_a: false,
                trans_b: false,
                m: n,
                n: ic,
                k: oc,
                alpha: 1.0,
                a: dout.ptr,
                lda: oc,
                b: w,
                ldb: ic,
                beta: if accumulate_dinp { 1.0 } else { 0.0 },
                c: dinp.ptr,
                ldc: ic,
            },
            st,
        );
    }
    // dweight (oc,ic) += doutᵀ (oc,n) · inp (n,ic), f32 whatever the activations' storage
    let st = if bf16 { Storage::Bf16 { c_bf16: false } } else { Storage::F32 };
    if n > 0 {
        let gw = Gemm {
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
        };
        if let Some(dbias) = &dbias {
            need("matmul_backward", "dbias", dbias.len, oc);
            // The product's epilogue reduces doutᵀ over the tokens into scratch (it overwrites
            // its vector), which is then added to dbias (gradients accumulate).
            if ic > 0 {
                match g.alloc_uninit::<f32>(oc) {
                    Ok(sums) => {
                        if g.gemm_fused(gw, Epilogue::BiasGradA(sums.ptr), st) {
                            g.add_vector(dbias.ptr, sums.ptr, oc);
                            return;
                        }
                    }
                    Err(e) => return g.record(Err(e)),
                }
            }
        }
        g.gemm(gw, st);
    }
    if let Some(dbias) = dbias {
        need("matmul_backward", "dbias", dbias.len, oc);
        g.column_sums(dbias.ptr, dout.ptr, bf16, n, oc);
    }
}
