//! The `Device` trait: what the GPU backend [`Gpu`](super::Gpu) needs from a machine that runs
//! our CUDA kernels. Two implementations share every line of launch code above this trait:
//! [`Cuda`](super::cuda::Cuda) (a real GPU through cudarc, NVRTC and cuBLAS) and
//! [`Emu`](super::emu::Emu) (the CUDA execution model on the CPU: the same kernel sources compiled
//! as C++ by build.rs, each CUDA thread a fiber, randomised schedule; GEMMs by the CPU path).
//!
//! Memory is addressed by raw 64-bit device addresses ([`DevPtr`]): a `CUdeviceptr` on CUDA, a
//! host address on the emulator. Kernel arguments are passed as a list of [`KArg`] values, which
//! both devices hand to the kernel the way `cuLaunchKernel` does (an array of pointers to the
//! argument values), after checking them against the kernel's signature parsed by build.rs
//! ([`kernel_signature`]).

use crate::error::{Error, Result};

/// A device address (`CUdeviceptr` on CUDA, a host address on the emulator).
pub type DevPtr = u64;

/// The type of one kernel parameter, as parsed from the kernel's signature by build.rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// Any pointer (`float*`, `const int*`, `unsigned short*`, …).
    Ptr,
    /// `int`.
    I32,
    /// `unsigned int`.
    U32,
    /// `long long`.
    I64,
    /// `unsigned long long`.
    U64,
    /// `float`.
    F32,
    /// `double`.
    F64,
}

/// One kernel argument value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KArg {
    /// A device address.
    Ptr(DevPtr),
    /// `int`.
    I32(i32),
    /// `unsigned int`.
    U32(u32),
    /// `long long`.
    I64(i64),
    /// `unsigned long long`.
    U64(u64),
    /// `float`.
    F32(f32),
    /// `double`.
    F64(f64),
}

impl KArg {
    /// The parameter kind this value fits.
    pub fn kind(&self) -> ArgKind {
        match self {
            KArg::Ptr(_) => ArgKind::Ptr,
            KArg::I32(_) => ArgKind::I32,
            KArg::U32(_) => ArgKind::U32,
            KArg::I64(_) => ArgKind::I64,
            KArg::U64(_) => ArgKind::U64,
            KArg::F32(_) => ArgKind::F32,
            KArg::F64(_) => ArgKind::F64,
        }
    }

    /// The value as the 8 little-endian bytes a kernel parameter slot holds (4-byte types in
    /// the low half). Devices pass a pointer to this slot per argument.
    pub fn to_slot(&self) -> [u8; 8] {
        let mut s = [0u8; 8];
        match *self {
            KArg::Ptr(v) | KArg::U64(v) => s.copy_from_slice(&v.to_le_bytes()),
            KArg::I64(v) => s.copy_from_slice(&v.to_le_bytes()),
            KArg::F64(v) => s.copy_from_slice(&v.to_le_bytes()),
            KArg::I32(v) => s[..4].copy_from_slice(&v.to_le_bytes()),
            KArg::U32(v) => s[..4].copy_from_slice(&v.to_le_bytes()),
            KArg::F32(v) => s[..4].copy_from_slice(&v.to_le_bytes()),
        }
        s
    }
}

/// Grid and block shape of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory per block.
    pub shared_bytes: u32,
}

impl LaunchCfg {
    /// A 1-D grid of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32, shared_bytes: u32) -> Self {
        LaunchCfg { grid: [blocks, 1, 1], block: [threads, 1, 1], shared_bytes }
    }
}

/// One single-precision matrix product in **row-major** terms:
/// `C (m,n) = alpha · op(A) (m,k) · op(B) (k,n) + beta · C`, where `op(X)` is `X` or `Xᵀ`
/// (`trans_a`, `trans_b`) and `lda`, `ldb`, `ldc` are row strides (elements) of the stored
/// matrices. CUDA maps it onto column-major cuBLAS by computing `Cᵀ = op(B)ᵀ · op(A)ᵀ`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    /// Use `Aᵀ` (A stored as (k, m)).
    pub trans_a: bool,
    /// Use `Bᵀ` (B stored as (n, k)).
    pub trans_b: bool,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// A's address.
    pub a: DevPtr,
    /// A's row stride.
    pub lda: usize,
    /// B's address.
    pub b: DevPtr,
    /// B's row stride.
    pub ldb: usize,
    /// Scale of the old C (0 overwrites: C is not read, NaNs in it do not propagate).
    pub beta: f32,
    /// C's address.
    pub c: DevPtr,
    /// C's row stride.
    pub ldc: usize,
}

/// The arithmetic of one matrix product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmMath {
    /// f32 operands, exact fp32 products and accumulation (no TF32).
    F32,
    /// f32 operands rounded to bf16 inside the product (tensor cores), fp32 accumulation
    /// (`CUBLAS_COMPUTE_32F_FAST_16BF`).
    Bf16Fast,
    /// A and B stored as bf16 (bf16 activations and the weights' bf16 copies), fp32 accumulation
    /// (`CUBLAS_COMPUTE_32F`); C stored as bf16 (rounded once, after the epilogue) when `c_bf16`,
    /// else f32. The epilogue's vectors stay f32.
    Bf16 {
        /// C stored as bf16.
        c_bf16: bool,
    },
}

/// What a fused product computes after `alpha·op(A)·op(B) + beta·C`, in the row-major terms of
/// [`Gemm`] (cuBLASLt's epilogues, mapped through the transposition [`Gemm`] describes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Nothing: the plain product.
    None,
    /// `C[i, j] += bias[j]` (bias: n f32), added to the product before C is written
    /// (`CUBLASLT_EPILOGUE_BIAS`; requires `beta == 0`).
    Bias(DevPtr),
    /// `C[i, j] = max(product + bias[j], 0)` (`CUBLASLT_EPILOGUE_RELU_BIAS`; `beta == 0`).
    ReluBias(DevPtr),
    /// Also writes `out[i] = Σ_k op(A)[i, k]` (m f32, overwritten), the bias gradient of a Linear
    /// layer when `op(A)` is `doutᵀ` (`CUBLASLT_EPILOGUE_BGRADB` of the column-major product).
    BiasGradA(DevPtr),
    /// [`Epilogue::ReluBias`] that also writes the ReLU bit mask to `aux`
    /// (`CUBLASLT_EPILOGUE_RELU_AUX_BIAS`): cuBLASLt's layout, in the column-major terms of the
    /// product (`Cᵀ`, n × m): bit `j` of column `i` (C[i, j] > 0) at bit `i·aux_ld + j`,
    /// `aux_ld` a multiple of 128 not below n ([`relu_aux_ld`]).
    ReluAuxBias {
        /// Bias (n f32).
        bias: DevPtr,
        /// The bit mask (m · aux_ld bits).
        aux: DevPtr,
        /// Bits per mask column.
        aux_ld: usize,
    },
    /// `C = product ⊙ [mask]` with the mask an earlier [`Epilogue::ReluAuxBias`] wrote for a C of
    /// the same shape (`CUBLASLT_EPILOGUE_DRELU`: ReLU's backward fused into the product that
    /// propagates the gradient; `beta == 0`).
    DRelu {
        /// The bit mask.
        aux: DevPtr,
        /// Bits per mask column.
        aux_ld: usize,
    },
}

/// cuBLASLt's leading dimension, in bits, of the ReLU bit mask of a C with `n` columns (the
/// column-major product's rows): a multiple of 128.
pub fn relu_aux_ld(n: usize) -> usize {
    n.div_ceil(128) * 128
}

/// Bytes of the ReLU bit mask of an (m, n) C.
pub fn relu_aux_bytes(m: usize, n: usize) -> usize {
    m * relu_aux_ld(n) / 8
}

impl Epilogue {
    /// A short name for messages and the algorithm cache.
    pub fn kind(&self) -> &'static str {
        match self {
            Epilogue::None => "none",
            Epilogue::Bias(_) => "bias",
            Epilogue::ReluBias(_) => "relu_bias",
            Epilogue::BiasGradA(_) => "bgrad_a",
            Epilogue::ReluAuxBias { .. } => "relu_aux_bias",
            Epilogue::DRelu { .. } => "drelu",
        }
    }
}

/// A machine that runs our kernels. All calls are issued in order on one stream; errors of
/// asynchronous work may surface at a later call (as in CUDA).
pub trait Device: Send + Sync + 'static {
    /// Human-readable name, e.g. `cuda:0 (NVIDIA H100 80GB HBM3)` or `emu`.
    fn name(&self) -> String;
    /// Allocates `bytes` bytes, zero-filled, aligned to at least 256 bytes.
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// Frees an allocation returned by [`Device::alloc`].
    ///
    /// # Safety
    /// `ptr` came from `alloc` on this device and is not used afterwards.
    unsafe fn free(&self, ptr: DevPtr);
    /// Copies host bytes to `dst`.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` lies inside one live allocation.
    unsafe fn copy_htod(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// Copies device bytes to the host (waits for earlier work).
    ///
    /// # Safety
    /// `src .. src + dst.len()` lies inside one live allocation.
    unsafe fn copy_dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    /// Sets `bytes` bytes at `dst` to zero.
    ///
    /// # Safety
    /// `dst .. dst + bytes` lies inside one live allocation.
    unsafe fn memset_zero(&self, dst: DevPtr, bytes: usize) -> Result<()>;
    /// Marks `bytes` bytes at `dst` as holding nothing valid: memory handed out without zeroing,
    /// which a kernel must overwrite before anything reads it. A real GPU does nothing; the
    /// emulator fills it with 0xFF bytes (NaN as f32 and as bf16), so a kernel that reads such
    /// memory before writing it shows up as NaN in the parity tests.
    ///
    /// # Safety
    /// `dst .. dst + bytes` lies inside one live allocation.
    unsafe fn mark_uninit(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        let _ = (dst, bytes);
        Ok(())
    }
    /// Launches kernel `name` (one of [`KERNELS`](super::KERNELS)). The caller has checked the
    /// arguments against the signature ([`check_args`]).
    ///
    /// # Safety
    /// Every pointer argument addresses memory the kernel may read/write for this launch shape.
    unsafe fn launch(&self, name: &str, cfg: &LaunchCfg, args: &[KArg]) -> Result<()>;
    /// A row-major f32 matrix product (see [`Gemm`]).
    ///
    /// # Safety
    /// The matrices described by `g` lie inside live allocations.
    unsafe fn sgemm(&self, g: &Gemm) -> Result<()>;
    /// The same product with A and B stored as bf16 (`u16`), C as bf16 when `c_bf16` (rounded
    /// once) else f32, fp32 accumulation (cuBLAS `GemmEx` with `CUBLAS_COMPUTE_32F` on tensor
    /// cores).
    ///
    /// # Safety
    /// The matrices described by `g` lie inside live allocations (A, B: 2 bytes per element).
    unsafe fn gemm_bf16(&self, g: &Gemm, c_bf16: bool) -> Result<()>;
    /// The product of f32 matrices on bf16 tensor cores without separate copies: the library
    /// rounds A and B to bf16 inside the GEMM (cuBLAS `GemmEx`, f32 A/B/C,
    /// `CUBLAS_COMPUTE_32F_FAST_16BF`), fp32 accumulation.
    ///
    /// # Safety
    /// The matrices described by `g` lie inside live allocations.
    unsafe fn gemm_fast_bf16(&self, g: &Gemm) -> Result<()>;
    /// The product with `math` and a fused epilogue, through cuBLASLt (the algorithm chosen once
    /// per shape and cached, one workspace). `Ok(false)`: this device has no such fused product
    /// for this shape (no cuBLASLt, no algorithm, an epilogue it lacks); nothing was written and
    /// the caller runs the plain product and separate kernels instead.
    ///
    /// # Safety
    /// The matrices described by `g` and the epilogue's vector lie inside live allocations.
    unsafe fn gemm_lt(&self, g: &Gemm, math: GemmMath, ep: Epilogue) -> Result<bool>;
    /// Sums `n` elements (bf16 when `bf16`, else f32) at `ptr` in place over the ranks of the
    /// communicator `comm` (an NCCL communicator of this device's kind), on the stream.
    /// `Ok(false)`: this device has no such communicator.
    ///
    /// # Safety
    /// `ptr .. ptr + n` elements lie in a live allocation.
    unsafe fn all_reduce_nccl(
        &self,
        comm: &dyn std::any::Any,
        ptr: DevPtr,
        n: usize,
        bf16: bool,
    ) -> Result<bool> {
        let _ = (comm, ptr, n, bf16);
        Ok(false)
    }
    /// Makes later work wait for the collectives [`Device::all_reduce_nccl`] issued (they may run
    /// beside the stream's work).
    fn collectives_wait(&self) -> Result<()> {
        Ok(())
    }
    /// Whether [`Device::gemm_lt`] can run fused products at all (cuBLASLt loaded).
    fn has_fused_gemms(&self) -> bool;
    /// Per epilogue, how many products ran fused out of those asked (`bias 120/120, …`), where
    /// the device keeps count.
    fn fused_report(&self) -> Option<String> {
        None
    }
    // ---- step graphs (see super::graph) -----------------------------------------------
    /// Starts capturing: until [`Device::end_capture`] every op is recorded into a new graph and
    /// not run; uploads are staged in host memory the graph reads at each replay; reading device
    /// memory back, synchronizing and timing marks are errors meanwhile.
    fn begin_capture(&self) -> Result<()>;
    /// Ends the capture and returns the new graph's id.
    fn end_capture(&self) -> Result<u64>;
    /// Abandons a capture after an error (nothing is kept).
    fn abort_capture(&self);
    /// Starts re-issuing graph `id`'s ops: each op is matched against the recorded one and
    /// changed kernel arguments and uploaded bytes are written into the graph; nothing runs.
    /// Waits for the graph's own last replay first (it may still read the staging buffers).
    fn begin_update(&self, id: u64) -> Result<()>;
    /// Ends an update: whether every op matched.
    fn end_update(&self) -> Result<super::graph::UpdateOutcome>;
    /// Runs graph `id` on the stream.
    ///
    /// # Safety
    /// The memory the graph's ops address is still allocated.
    unsafe fn replay(&self, id: u64) -> Result<()>;
    /// Frees graph `id` (and its staging memory).
    fn drop_graph(&self, id: u64);
    /// Waits until all issued work is done and reports any asynchronous error.
    fn synchronize(&self) -> Result<()>;
    /// A point in the stream's work (CUDA: an event; the emulator, whose launches finish before
    /// they return: the host clock) whose time [`Device::elapsed_ms`] reads once it is done.
    type Mark: Send;
    /// Records a mark after all work issued so far.
    fn mark(&self) -> Result<Self::Mark>;
    /// Milliseconds from mark `a` to the later mark `b`; both must be done (call after
    /// [`Device::synchronize`]).
    fn elapsed_ms(&self, a: &Self::Mark, b: &Self::Mark) -> Result<f64>;
}

/// The parameter kinds of kernel `name`, from the signatures build.rs parsed out of kernels/*.cu.
pub fn kernel_signature(name: &str) -> Option<&'static [ArgKind]> {
    super::KERNELS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Checks a launch against kernel `name`'s signature and the CUDA launch limits, so that a
/// programming error is an error here rather than garbage on the device.
pub fn check_args(name: &str, cfg: &LaunchCfg, args: &[KArg]) -> Result<()> {
    let sig = kernel_signature(name)
        .ok_or_else(|| Error::msg(format!("no kernel named `{name}` in kernels/*.cu")))?;
    if sig.len() != args.len() {
        return Err(Error::msg(format!(
            "kernel `{name}` takes {} arguments, launch passed {}",
            sig.len(),
            args.len()
        )));
    }
    for (i, (k, a)) in sig.iter().zip(args).enumerate() {
        if *k != a.kind() {
            return Err(Error::msg(format!(
                "kernel `{name}` argument {i}: expected {k:?}, launch passed {:?}",
                a.kind()
            )));
        }
    }
    let threads = cfg.block.iter().map(|&x| x as u64).product::<u64>();
    if threads == 0 || threads > 1024 || cfg.grid.contains(&0) {
        return Err(Error::msg(format!(
            "kernel `{name}`: bad launch shape grid {:?} block {:?} (1..=1024 threads per block, no empty \
             dimension)",
            cfg.grid, cfg.block
        )));
    }
    if cfg.grid[1] > 65_535 || cfg.grid[2] > 65_535 {
        return Err(Error::msg(format!("kernel `{name}`: grid {:?} exceeds 65535 in y or z", cfg.grid)));
    }
    if cfg.shared_bytes > 227 * 1024 {
        return Err(Error::msg(format!(
            "kernel `{name}`: {} bytes of dynamic shared memory exceeds the 227 KiB limit",
            cfg.shared_bytes
        )));
    }
    Ok(())
}
