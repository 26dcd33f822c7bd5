//! The [`Cuda`] device on a real GPU: initialisation and name, memory round trips, kernel
//! launches (argument passing, grid shapes, >48 KiB dynamic shared memory) and cuBLAS `sgemm`
//! against a host loop for all four transpose combinations. Without a CUDA device every test
//! prints a notice and passes, unless `NLI_BERT_REQUIRE_CUDA=1` (set by `scripts/gpu_run.sh run`
//! on the GPU machine), which makes a missing device a failure. Per-op parity of `Gpu<Cuda>`
//! against the CPU lives in the shared backend harness.

mod common;

use nli_bert::backend::gpu::cuda::{self, Cuda};
use nli_bert::backend::gpu::device::{DevPtr, Device, Gemm, KArg, LaunchCfg};

/// Device 0, or `None` (with a notice) when there is none and it is not required.
fn cuda_or_skip(test: &str) -> Option<Cuda> {
    if !common::have_cuda(test) {
        return None;
    }
    Some(
        Cuda::new(0, &nli_bert::data::hub::cache_dir())
            .unwrap_or_else(|e| panic!("{test}: Cuda::new(0): {e}")),
    )
}

/// Where there is no GPU, asking for one is an error that names CUDA, never a panic; where there
/// is one (decided without the code under test: `NLI_BERT_REQUIRE_CUDA=1` or the driver's device
/// file), a device is found.
#[test]
fn no_gpu_is_an_error_not_a_panic() {
    let found = Cuda::device_count();
    if common::gpu_expected() {
        let n = found.unwrap_or_else(|e| panic!("a GPU is expected here, but: {e}"));
        assert!(n > 0 && cuda::cuda_available() && cuda::device_count() == n, "{n} devices");
    } else {
        assert!(!cuda::cuda_available() && cuda::device_count() == 0);
        match found {
            Ok(n) => assert_eq!(n, 0, "no GPU is expected here, yet the driver reports {n}"),
            Err(e) => assert!(e.to_string().contains("CUDA"), "{e}"),
        }
        let e = Cuda::new(0, &nli_bert::data::hub::cache_dir())
            .err()
            .expect("Cuda::new(0) without a GPU must be an error");
        assert!(e.to_string().contains("CUDA"), "{e}");
    }
}

/// A device allocation freed on drop.
struct Buf<'a> {
    dev: &'a Cuda,
    ptr: DevPtr,
    bytes: usize,
}

impl<'a> Buf<'a> {
    fn zeroed(dev: &'a Cuda, bytes: usize) -> Self {
        let ptr = dev.alloc(bytes).unwrap_or_else(|e| panic!("{e}"));
        Buf { dev, ptr, bytes }
    }
    fn from_f32(dev: &'a Cuda, v: &[f32]) -> Self {
        let b = Buf::zeroed(dev, v.len() * 4);
        // SAFETY: the allocation holds exactly these bytes.
        unsafe { dev.copy_htod(b.ptr, bytemuck::cast_slice(v)) }.unwrap_or_else(|e| panic!("{e}"));
        b
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.bytes];
        // SAFETY: reads exactly the allocation.
        unsafe { self.dev.copy_dtoh(self.ptr, &mut out) }.unwrap_or_else(|e| panic!("{e}"));
        out
    }
    fn f32s(&self) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.bytes())
    }
}

impl Drop for Buf<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by `zeroed`, not used after this.
        unsafe { self.dev.free(self.ptr) }
    }
}

/// Deterministic values in [-1, 1).
fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn cuda_device_init_and_name() {
    let Some(dev) = cuda_or_skip("cuda_device_init_and_name") else { return };
    let name = dev.name();
    let cc = dev.compute_capability();
    println!(
        "{name}: compute capability {}.{}, driver CUDA {:?}, kernels: {}",
        cc.0,
        cc.1,
        cuda::driver_version(),
        dev.kernel_origin()
    );
    assert!(name.starts_with("cuda:0 (") && name.ends_with(')') && name.len() > 10, "{name}");
    assert!(cc >= (7, 0), "compute capability {cc:?}");
    dev.synchronize().unwrap_or_else(|e| panic!("{e}"));
    let n = Cuda::device_count().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cuda::device_count(), n);
    let e = Cuda::new(n, &nli_bert::data::hub::cache_dir())
        .err()
        .unwrap_or_else(|| panic!("cuda:{n} opened on a machine with {n} devices"));
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn cuda_alloc_copy_roundtrip() {
    let Some(dev) = cuda_or_skip("cuda_alloc_copy_roundtrip") else { return };
    for (i, bytes) in [1usize, 1000, (1 << 20) + 3].into_iter().enumerate() {
        let a = Buf::zeroed(&dev, bytes);
        assert_eq!(a.ptr % 256, 0, "allocation of {bytes} bytes not 256-aligned");
        assert!(a.bytes().iter().all(|&b| b == 0), "alloc({bytes}) is not zero-filled");
        let data: Vec<u8> = (0..bytes).map(|j| (j * 31 + i * 7 + 1) as u8).collect();
        // SAFETY: `a` holds `bytes` bytes.
        unsafe { dev.copy_htod(a.ptr, &data) }.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.bytes(), data, "host -> device -> host, {bytes} bytes");
        let (lo, hi) = (bytes / 3, bytes - bytes / 3);
        // SAFETY: `lo..hi` lies inside `a`.
        unsafe { dev.memset_zero(a.ptr + lo as u64, hi - lo) }.unwrap_or_else(|e| panic!("{e}"));
        let mut want = data.clone();
        want[lo..hi].fill(0);
        assert_eq!(a.bytes(), want, "memset_zero of bytes {lo}..{hi} of {bytes}");
    }
    dev.synchronize().unwrap_or_else(|e| panic!("{e}"));
}

/// Row-major reference: C = alpha·op(A)·op(B) + beta·C, in f64.
#[allow(clippy::too_many_arguments)]
fn host_gemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &[f32],
    ldc: usize,
) -> Vec<f64> {
    let mut out: Vec<f64> = c.iter().map(|&x| x as f64).collect();
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = if ta { a[p * lda + i] } else { a[i * lda + p] };
                let bv = if tb { b[j * ldb + p] } else { b[p * ldb + j] };
                s += av as f64 * bv as f64;
            }
            let old = if beta == 0.0 { 0.0 } else { beta as f64 * c[i * ldc + j] as f64 };
            out[i * ldc + j] = alpha as f64 * s + old;
        }
    }
    out
}

#[test]
fn cuda_sgemm_matches_host_all_transposes() {
    let Some(dev) = cuda_or_skip("cuda_sgemm_matches_host_all_transposes") else { return };
    let mut seed = 1;
    for (m, n, k) in [(1, 1, 1), (17, 33, 9), (64, 48, 130), (3, 200, 1)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.75, 0.5)] {
                // Stored shapes (row-major) and padded row strides.
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (ac + 3, bc + 1, n + 2);
                seed += 1;
                let a = lcg(seed, ar * lda);
                let b = lcg(seed + 100, br * ldb);
                // beta = 0 must not read C: fill it with NaN.
                let c0 = if beta == 0.0 { vec![f32::NAN; m * ldc] } else { lcg(seed + 200, m * ldc) };
                let (da, db, dc) =
                    (Buf::from_f32(&dev, &a), Buf::from_f32(&dev, &b), Buf::from_f32(&dev, &c0));
                let g = Gemm {
                    trans_a: ta,
                    trans_b: tb,
                    m,
                    n,
                    k,
                    alpha,
                    a: da.ptr,
                    lda,
                    b: db.ptr,
                    ldb,
                    beta,
                    c: dc.ptr,
                    ldc,
                };
                // SAFETY: the three buffers hold the matrices `g` describes.
                unsafe { dev.sgemm(&g) }.unwrap_or_else(|e| panic!("{e}"));
                let got = dc.f32s();
                let want = host_gemm(ta, tb, m, n, k, alpha, &a, lda, &b, ldb, beta, &c0, ldc);
                for i in 0..m {
                    for j in 0..ldc {
                        let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                        if j >= n {
                            // Padding between rows is left alone (NaN stays NaN).
                            assert!(g.to_bits() == c0[i * ldc + j].to_bits(), "padding changed at ({i},{j})");
                            continue;
                        }
                        let tol = 1e-5 + 1e-5 * (k as f64);
                        assert!(
                            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                            "sgemm m={m} n={n} k={k} ta={ta} tb={tb} alpha={alpha} beta={beta}: C[{i},{j}] = {g}, \
                             host {w}"
                        );
                    }
                }
            }
        }
    }
}

const PROBE: &str = r#"
extern "C" __global__ void probe_args(double* out, int a, unsigned int b, long long c, unsigned long long d,
                                      float e, double f, const float* p) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        out[0] = a; out[1] = b; out[2] = (double)c; out[3] = (double)d; out[4] = e; out[5] = f; out[6] = p[1];
    }
}
extern "C" __global__ void probe_grid(int* out) {
    int bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int nt = blockDim.x * blockDim.y * blockDim.z;
    out[bx * nt + tx] = bx * 1000 + tx;
}
extern "C" __global__ void probe_big_shared(float* out, int n) {
    extern __shared__ float s[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = (float)i;
    __syncthreads();
    if (threadIdx.x == 0) {
        float acc = 0.f;
        for (int i = 0; i < n; i++) acc += s[n - 1 - i];
        out[0] = acc;
    }
}
"#;

#[test]
fn cuda_launch_passes_arguments_grids_and_big_shared_memory() {
    let Some(dev) = cuda_or_skip("cuda_launch_passes_arguments_grids_and_big_shared_memory") else { return };
    let m = dev.load_source(PROBE).unwrap_or_else(|e| panic!("{e}"));

    let out = Buf::zeroed(&dev, 7 * 8);
    let p = Buf::from_f32(&dev, &[0.0, 2.5]);
    let args = [
        KArg::Ptr(out.ptr),
        KArg::I32(-7),
        KArg::U32(4_000_000_000),
        KArg::I64(-(1i64 << 40)),
        KArg::U64(1u64 << 50),
        KArg::F32(0.25),
        KArg::F64(-1e300),
        KArg::Ptr(p.ptr),
    ];
    // SAFETY: the arguments match probe_args' parameters; `out` holds 7 doubles, `p` 2 floats.
    unsafe { dev.launch_in(&m, "probe_args", &LaunchCfg::linear(1, 32, 0), &args) }
        .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<f64> = bytemuck::pod_collect_to_vec(&out.bytes());
    assert_eq!(got, vec![-7.0, 4e9, -((1u64 << 40) as f64), (1u64 << 50) as f64, 0.25, -1e300, 2.5]);

    let cfg = LaunchCfg { grid: [3, 2, 2], block: [4, 3, 2], shared_bytes: 0 };
    let (nb, nt) = (12usize, 24usize);
    let grid_out = Buf::zeroed(&dev, nb * nt * 4);
    // SAFETY: `grid_out` holds one int per thread of the launch.
    unsafe { dev.launch_in(&m, "probe_grid", &cfg, &[KArg::Ptr(grid_out.ptr)]) }
        .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<i32> = bytemuck::pod_collect_to_vec(&grid_out.bytes());
    let want: Vec<i32> = (0..nb).flat_map(|b| (0..nt).map(move |t| (b * 1000 + t) as i32)).collect();
    assert_eq!(ids, want);

    // 64 KiB of dynamic shared memory needs the opt-in attribute (above 48 KiB).
    let n: usize = 16 * 1024;
    let sum_out = Buf::zeroed(&dev, 4);
    let cfg = LaunchCfg::linear(1, 256, (n * 4) as u32);
    // SAFETY: `sum_out` holds one float; the kernel uses n floats of dynamic shared memory.
    unsafe { dev.launch_in(&m, "probe_big_shared", &cfg, &[KArg::Ptr(sum_out.ptr), KArg::I32(n as i32)]) }
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sum_out.f32s()[0], (0..n).rev().fold(0f32, |acc, i| acc + i as f32));
    dev.synchronize().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cuda_launch_rejects_unknown_kernels() {
    let Some(dev) = cuda_or_skip("cuda_launch_rejects_unknown_kernels") else { return };
    // SAFETY: rejected before anything is launched.
    let e = unsafe { dev.launch("no_such_kernel", &LaunchCfg::linear(1, 1, 0), &[]) }
        .err()
        .unwrap_or_else(|| panic!("launching an unknown kernel succeeded"));
    assert!(e.to_string().contains("no_such_kernel"), "{e}");
    dev.synchronize().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cuda_nccl_one_rank_all_reduces() {
    // NCCL loads (from NLI_BERT_CUDA_LIB_DIR or the nvidia-nccl wheel beside python3) and a
    // one-rank communicator sums in place: f32 and bf16 views keep their values.
    let Some(dev) = cuda_or_skip("cuda_nccl_one_rank_all_reduces") else { return };
    use nli_bert::backend::Backend;
    let comms =
        cuda::nccl::init_all(&[dev.ordinal()]).expect("NCCL loads and a one-rank communicator starts");
    assert_eq!((comms[0].rank, comms[0].world), (0, 1));
    let be = nli_bert::backend::gpu::Gpu::new_bf16(dev);
    let x = [1.0f32, -2.5, 3.0, 0.125];
    let mut f = be.upload(&x).unwrap();
    assert!(be.device_all_reduce(be.view_mut(&mut f), &comms[0]).unwrap(), "NCCL ran");
    assert_eq!(be.download(be.view(&f)).unwrap(), x);
    let mut h = be.upload_act(&x).unwrap();
    assert!(be.view(&h).is_bf16());
    assert!(be.device_all_reduce(be.view_mut(&mut h), &comms[0]).unwrap());
    assert_eq!(be.download(be.view(&h)).unwrap(), x, "bf16 values exact in bf16 stay");
    // The engine's path: a unique id, then ncclCommInitRank from the rank's thread.
    let id = cuda::nccl::unique_id().expect("a unique id");
    assert_eq!(id.len(), 128);
    let c = be.device().nccl_init_rank(1, 0, &id).expect("ncclCommInitRank");
    let mut f = be.upload(&x).unwrap();
    assert!(be.device_all_reduce(be.view_mut(&mut f), &c).unwrap());
    be.collectives_wait().unwrap();
    assert_eq!(be.download(be.view(&f)).unwrap(), x);
    // an aborted communicator refuses further sums with an error, not a hang
    c.abort_handle().abort();
    let mut f = be.upload(&x).unwrap();
    assert!(be.device_all_reduce(be.view_mut(&mut f), &c).is_err());
}
