//! cuBLASLt: the matrix products with fused epilogues (bias, bias + ReLU, the bias gradient), and
//! the plain products in bf16 mode, on tensor cores. A plan (operation descriptor, matrix
//! layouts, the heuristic's algorithm) is made once per shape, strides, math, epilogue and
//! pointer alignments and cached; one workspace is allocated with the handle, so no call
//! allocates (which CUDA graph capture also requires). A shape whose heuristic finds no
//! algorithm is remembered as such and the caller runs the plain product and our kernels.
//!
//! Row-major to column-major as for cuBLAS ([`super::sgemm_colmajor`]): the row-major
//! `C (m, n) = op(A)·op(B)` is the column-major `Cᵀ (n, m) = op(B)ᵀ·op(A)ᵀ`, so cuBLASLt's
//! first operand is our B and its second our A. Our per-column bias (length n) is cuBLASLt's
//! per-row bias of `Cᵀ` (`EPILOGUE_BIAS`), and our `Σ_k op(A)[i, k]` (length m) is its
//! reduction of the second operand over k (`EPILOGUE_BGRADB`). d2l's FFN stores the ReLU bit
//! mask of its first product (`RELU_AUX_BIAS`) and its backward applies it in the product that
//! propagates the gradient (`DRELU`): the mask has the shape of the column-major `Cᵀ` in both.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::result as drv;
use cudarc::driver::sys;

use super::super::device::{DevPtr, Epilogue, Gemm, GemmMath};
use super::cublas::sgemm_colmajor;
use crate::error::{Error, Result};

/// Bytes of the one workspace handed to every cuBLASLt call (what cuBLASLt recommends on Hopper).
pub(super) const WORKSPACE_BYTES: usize = 32 << 20;

/// Everything that selects a plan. Pointers enter only through their alignments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    trans_first: bool,
    trans_second: bool,
    m: i32,
    n: i32,
    k: i32,
    ld_first: i32,
    ld_second: i32,
    ldc: i32,
    math: GemmMath,
    epilogue: &'static str,
    accumulate: bool,
    /// Alignments of the first and second operands, C, and the epilogue's vector and mask (the
    /// heuristic reads them off the pointers; a plan made for one alignment may fail for a lower one).
    align: [u32; 5],
}

struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    layouts: [lt_sys::cublasLtMatrixLayout_t; 3],
    algo: lt_sys::cublasLtMatmulAlgo_t,
    workspace: usize,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by `Lt::plan`, destroyed once here.
        unsafe {
            for l in self.layouts.into_iter().filter(|l| !l.is_null()) {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle on the device's stream, its workspace and the plans made so far.
pub(super) struct Lt {
    handle: lt_sys::cublasLtHandle_t,
    workspace: DevPtr,
    /// `None`: the heuristic offered no algorithm for this key.
    plans: HashMap<Key, Option<Plan>>,
    /// Products run fused and declined, per epilogue (launched ones, not graph replays).
    counts: HashMap<&'static str, (u64, u64)>,
}

// SAFETY: the handle and descriptors are used only under the device's Mutex around `Lt`.
unsafe impl Send for Lt {}

/// The largest power of two up to 256 that divides `ptr` (cuBLASLt's alignment preferences).
fn alignment(ptr: DevPtr) -> u32 {
    if ptr == 0 {
        256
    } else {
        (1u64 << ptr.trailing_zeros().min(8)) as u32
    }
}

fn lt_err(what: impl std::fmt::Display) -> impl FnOnce(lt::CublasError) -> Error {
    move |e| Error::msg(format!("cuBLASLt: {what}: {e}"))
}

impl Lt {
    /// A handle and workspace in the current context, or `None` (with the reason) when the
    /// library is missing or `NLI_BERT_CUBLASLT=0` turns it off.
    pub(super) fn new() -> std::result::Result<Lt, String> {
        if std::env::var("NLI_BERT_CUBLASLT").is_ok_and(|v| v == "0") {
            return Err("NLI_BERT_CUBLASLT=0".into());
        }
        // SAFETY: only tries to dlopen the library by its usual names.
        if !unsafe { lt_sys::is_culib_present() } {
            return Err("libcublasLt not found".into());
        }
        let handle = lt::create_handle().map_err(|e| format!("cublasLtCreate: {e}"))?;
        // SAFETY: a plain allocation in the current context, freed in Drop.
        let workspace = match unsafe { drv::malloc_sync(WORKSPACE_BYTES) } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: created above, not used elsewhere.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(format!("allocating the cuBLASLt workspace: {e:?}"));
            }
        };
        Ok(Lt { handle, workspace, plans: HashMap::new(), counts: HashMap::new() })
    }

    /// Whether [`Lt::run`] would run `g` (a plan with an algorithm exists or can be made), without
    /// running anything: a step graph records only the products that will run.
    ///
    /// # Safety
    /// As for [`Lt::run`].
    pub(super) unsafe fn available(&mut self, g: &Gemm, math: GemmMath, ep: Epilogue) -> Result<bool> {
        // SAFETY: forwarded; a null stream is never used when `dry` is set.
        unsafe { self.go(g, math, ep, std::ptr::null_mut(), true) }
    }

    /// Runs `g` with `math` and `ep` on `stream`; `Ok(false)` when cuBLASLt has no algorithm for
    /// it (nothing was written).
    ///
    /// # Safety
    /// The matrices of `g` and the epilogue's vector lie in live allocations of the context this
    /// handle was made in, which is current.
    pub(super) unsafe fn run(
        &mut self,
        g: &Gemm,
        math: GemmMath,
        ep: Epilogue,
        stream: sys::CUstream,
    ) -> Result<bool> {
        // SAFETY: forwarded.
        unsafe { self.go(g, math, ep, stream, false) }
    }

    /// [`Lt::run`], or with `dry` only the decision.
    ///
    /// # Safety
    /// The matrices of `g` and the epilogue's vector lie in live allocations of the context this
    /// handle was made in, which is current.
    unsafe fn go(
        &mut self,
        g: &Gemm,
        math: GemmMath,
        ep: Epilogue,
        stream: sys::CUstream,
        dry: bool,
    ) -> Result<bool> {
        let (t1, t2, m, n, k, first, ld1, second, ld2) = sgemm_colmajor(g)?;
        if m == 0 || n == 0 {
            if let Epilogue::BiasGradA(_) = ep {
                // No product to fuse the reduction into: the caller reduces.
                return Ok(false);
            }
            return Ok(true);
        }
        if k == 0 || (k == 1 && matches!(ep, Epilogue::DRelu { .. })) {
            // Degenerate (cuBLASLt rejects k = 0, and k = 1 with the ReLU-gradient epilogue): the
            // caller's plain path handles it.
            return Ok(false);
        }
        let ldc =
            i32::try_from(g.ldc).map_err(|_| Error::msg(format!("cuBLASLt: ldc = {} exceeds i32", g.ldc)))?;
        let vector = match ep {
            Epilogue::None | Epilogue::DRelu { .. } => None,
            Epilogue::Bias(p)
            | Epilogue::ReluBias(p)
            | Epilogue::BiasGradA(p)
            | Epilogue::ReluAuxBias { bias: p, .. } => Some(p),
        };
        let aux = match ep {
            Epilogue::ReluAuxBias { aux, aux_ld, .. } | Epilogue::DRelu { aux, aux_ld } => {
                Some((aux, aux_ld))
            }
            _ => None,
        };
        if !matches!(ep, Epilogue::None | Epilogue::BiasGradA(_)) && g.beta != 0.0 {
            return Err(Error::msg(format!("cuBLASLt: the {} epilogue needs beta = 0", ep.kind())));
        }
        // The epilogue's vectors: cuBLASLt wants them 16-byte aligned (the mask's leading
        // dimension a multiple of 128 bits); otherwise our kernels do the work.
        if vector.is_some_and(|p| p % 16 != 0) || aux.is_some_and(|(p, ld)| p % 16 != 0 || ld % 128 != 0) {
            return Ok(false);
        }
        let key = Key {
            trans_first: t1,
            trans_second: t2,
            m,
            n,
            k,
            ld_first: ld1,
            ld_second: ld2,
            ldc,
            math,
            epilogue: ep.kind(),
            accumulate: g.beta != 0.0,
            align: [
                alignment(first),
                alignment(second),
                alignment(g.c),
                vector.map_or(256, alignment),
                aux.map_or(256, |(p, _)| alignment(p)),
            ],
        };
        if !self.plans.contains_key(&key) {
            // SAFETY: the handle is live; the key describes valid layouts (checked above).
            let plan = unsafe { self.plan(&key, ep)? };
            self.plans.insert(key, plan);
        }
        let fused = matches!(self.plans.get(&key), Some(Some(_)));
        if !dry {
            let c = self.counts.entry(ep.kind()).or_default();
            if fused {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        let Some(Some(plan)) = self.plans.get(&key) else { return Ok(false) };
        if dry {
            return Ok(true);
        }
        if let Some(p) = vector {
            // SAFETY: `plan.desc` is live; the attribute is a device pointer, passed by address.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    (&p as *const DevPtr).cast::<c_void>(),
                    std::mem::size_of::<DevPtr>(),
                )
            }
            .map_err(lt_err("setting the epilogue's vector"))?;
        }
        if let Some((p, ld)) = aux {
            let ld = ld as i64;
            // SAFETY: `plan.desc` is live; a device pointer and an int64, passed by address.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                    (&p as *const DevPtr).cast::<c_void>(),
                    std::mem::size_of::<DevPtr>(),
                )
                .and_then(|()| {
                    lt::set_matmul_desc_attribute(
                        plan.desc,
                        lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                        (&ld as *const i64).cast::<c_void>(),
                        std::mem::size_of::<i64>(),
                    )
                })
            }
            .map_err(lt_err("setting the ReLU mask"))?;
        }
        // SAFETY: the plan was made for these layouts and alignments; the caller guarantees the
        // memory; alpha and beta are host f32 (the default pointer mode, scale type 32F);
        // C is read (beta != 0) and written in place as D.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&g.alpha as *const f32).cast::<c_void>(),
                (&g.beta as *const f32).cast::<c_void>(),
                first as *const c_void,
                plan.layouts[0],
                second as *const c_void,
                plan.layouts[1],
                g.c as *const c_void,
                plan.layouts[2],
                g.c as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                self.workspace as *mut c_void,
                plan.workspace,
                stream as lt_sys::cudaStream_t,
            )
        }
        .map_err(|e| {
            Error::msg(format!(
                "cuBLASLt matmul (row-major m={} n={} k={}, trans_a={}, trans_b={}, {:?}, epilogue {}): {e}",
                g.m,
                g.n,
                g.k,
                g.trans_a,
                g.trans_b,
                math,
                ep.kind()
            ))
        })?;
        Ok(true)
    }

    /// `bias 120/120, drelu 24/24, …`: per epilogue, the products run fused out of those asked.
    pub(super) fn report(&self) -> String {
        let mut v: Vec<_> = self.counts.iter().collect();
        v.sort();
        v.iter().map(|(k, (f, d))| format!("{k} {f}/{}", f + d)).collect::<Vec<_>>().join(", ")
    }

    /// A plan for `key`, or `None` when the heuristic offers no algorithm.
    ///
    /// # Safety
    /// The handle is live.
    unsafe fn plan(&self, key: &Key, ep: Epilogue) -> Result<Option<Plan>> {
        use lt_sys::cublasLtMatmulDescAttributes_t as D;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as P;
        let compute = match key.math {
            GemmMath::F32 | GemmMath::Bf16 { .. } => lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            GemmMath::Bf16Fast => lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
        };
        let f32t = lt_sys::cudaDataType::CUDA_R_32F;
        let bf16t = lt_sys::cudaDataType::CUDA_R_16BF;
        // Storage types of A/B and of C/D (the scale type stays f32).
        let (abt, ct) = match key.math {
            GemmMath::F32 | GemmMath::Bf16Fast => (f32t, f32t),
            GemmMath::Bf16 { c_bf16 } => (bf16t, if c_bf16 { bf16t } else { f32t }),
        };
        let desc = lt::create_matmul_desc(compute, f32t).map_err(lt_err("cublasLtMatmulDescCreate"))?;
        // From here on `plan` owns what was created, so an early return frees it.
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            algo: lt_sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            workspace: 0,
        };
        // cublasOperation_t as the attribute's int32: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let op = |t: bool| -> i32 { i32::from(t) };
        let epilogue = match ep {
            Epilogue::None => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias(_) => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::ReluBias(_) => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
            Epilogue::BiasGradA(_) => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADB,
            Epilogue::ReluAuxBias { .. } => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_AUX_BIAS,
            Epilogue::DRelu { .. } => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DRELU,
        };
        let (ta, tb) = (op(key.trans_first), op(key.trans_second));
        // SAFETY: `desc` is live; each value is passed by address with its exact size.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                D::CUBLASLT_MATMUL_DESC_TRANSA,
                (&ta as *const i32).cast(),
                std::mem::size_of_val(&ta),
            )
            .map_err(lt_err("TRANSA"))?;
            lt::set_matmul_desc_attribute(
                desc,
                D::CUBLASLT_MATMUL_DESC_TRANSB,
                (&tb as *const i32).cast(),
                std::mem::size_of_val(&tb),
            )
            .map_err(lt_err("TRANSB"))?;
            lt::set_matmul_desc_attribute(
                desc,
                D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                (&epilogue as *const lt_sys::cublasLtEpilogue_t).cast(),
                std::mem::size_of_val(&epilogue),
            )
            .map_err(lt_err("EPILOGUE"))?;
        }
        // The epilogue's pointers and the mask's leading dimension before the heuristic, which may
        // depend on them (as PyTorch and llm.c do); the pointers are set again at every call.
        let vector = match ep {
            Epilogue::Bias(p)
            | Epilogue::ReluBias(p)
            | Epilogue::BiasGradA(p)
            | Epilogue::ReluAuxBias { bias: p, .. } => Some(p),
            Epilogue::None | Epilogue::DRelu { .. } => None,
        };
        // SAFETY: `desc` is live; each value is passed by address with its exact size.
        unsafe {
            if let (Some(_), GemmMath::Bf16 { .. }) = (vector, key.math) {
                // The bias (and bias gradient) vectors are f32 whatever D is (the default would be
                // D's type).
                lt::set_matmul_desc_attribute(
                    desc,
                    D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                    (&f32t as *const lt_sys::cudaDataType).cast(),
                    std::mem::size_of_val(&f32t),
                )
                .map_err(lt_err("BIAS_DATA_TYPE"))?;
            }
            if let Some(p) = vector {
                lt::set_matmul_desc_attribute(
                    desc,
                    D::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    (&p as *const DevPtr).cast(),
                    std::mem::size_of::<DevPtr>(),
                )
                .map_err(lt_err("BIAS_POINTER"))?;
            }
            if let Epilogue::ReluAuxBias { aux, aux_ld, .. } | Epilogue::DRelu { aux, aux_ld } = ep {
                let ld = aux_ld as i64;
                lt::set_matmul_desc_attribute(
                    desc,
                    D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                    (&aux as *const DevPtr).cast(),
                    std::mem::size_of::<DevPtr>(),
                )
                .map_err(lt_err("EPILOGUE_AUX_POINTER"))?;
                lt::set_matmul_desc_attribute(
                    desc,
                    D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                    (&ld as *const i64).cast(),
                    std::mem::size_of::<i64>(),
                )
                .map_err(lt_err("EPILOGUE_AUX_LD"))?;
            }
        }
        // Stored (column-major) shapes: the first operand is m×k (k×m transposed), the second
        // k×n (n×k transposed), C is m×n.
        let (r1, c1) = if key.trans_first { (key.k, key.m) } else { (key.m, key.k) };
        let (r2, c2) = if key.trans_second { (key.n, key.k) } else { (key.k, key.n) };
        let shapes = [(r1, c1, key.ld_first), (r2, c2, key.ld_second), (key.m, key.n, key.ldc)];
        for ((slot, (r, c, ld)), ty) in plan.layouts.iter_mut().zip(shapes).zip([abt, abt, ct]) {
            *slot = lt::create_matrix_layout(ty, r as u64, c as u64, ld as i64)
                .map_err(lt_err("cublasLtMatrixLayoutCreate"))?;
        }
        let pref = lt::create_matmul_pref().map_err(lt_err("cublasLtMatmulPreferenceCreate"))?;
        let ws = WORKSPACE_BYTES as u64;
        let [a1, a2, ac, _, _] = key.align;
        // SAFETY: `pref` is live; values by address with their sizes; destroyed below.
        let found = unsafe {
            let set =
                |attr: P, v: *const c_void, size: usize| lt::set_matmul_pref_attribute(pref, attr, v, size);
            let mut r = set(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, (&ws as *const u64).cast(), 8);
            for (attr, v) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a1),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &a2),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac),
            ] {
                r = r.and_then(|_| set(attr, (v as *const u32).cast(), 4));
            }
            let found = r.map_err(lt_err("setting the preferences")).map(|_| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            found?
        };
        match found {
            Ok(h) => {
                plan.algo = h.algo;
                plan.workspace = h.workspaceSize.min(WORKSPACE_BYTES);
                Ok(Some(plan))
            }
            // No algorithm for it: remembered, the caller falls back.
            Err(e) if e.0 == lt_sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => Ok(None),
            // Anything else means a descriptor this code got wrong: said once per plan, on stderr
            // (a GPU run's log shows it), and the caller falls back all the same.
            Err(e) => {
                eprintln!(
                    "warning: cuBLASLt rejected a {} product (m={} n={} k={}, {:?}): {e}; using cuBLAS and separate kernels for it",
                    ep.kind(),
                    key.m,
                    key.n,
                    key.k,
                    key.math
                );
                Ok(None)
            }
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `new`, destroyed once; the owner synchronized the stream first.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
            let _ = drv::free_sync(self.workspace);
        }
    }
}
