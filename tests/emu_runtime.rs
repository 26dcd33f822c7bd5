//! The CUDA emulator's own tests: the test kernels in kernels/emu/tests/*.cu launched through
//! `Emu`, against values computed here. They show that the emulator implements the CUDA execution
//! model our kernels rely on, and that it catches what it must: a missing `__syncthreads` gives a
//! wrong result under the randomised schedule, a deadlock is an error rather than a hang.

mod common;

use nli_bert::backend::gpu::device::{DevPtr, Device, Gemm, KArg, LaunchCfg};
use nli_bert::backend::gpu::emu::Emu;
use nli_bert::backend::gpu::EMU_AVAILABLE;

/// An emulator starting at `seed`, or None (with a notice) when the crate was built without it.
fn emu(seed: u64) -> Option<Emu> {
    if !common::have_emu("emu_runtime") {
        return None;
    }
    Some(Emu::with_seed(seed).expect("emulator"))
}

fn upload<T: bytemuck::Pod>(e: &Emu, data: &[T]) -> DevPtr {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let p = e.alloc(bytes.len()).expect("alloc");
    // SAFETY: `p` is a fresh allocation of exactly this many bytes.
    unsafe { e.copy_htod(p, bytes).expect("copy_htod") };
    p
}

fn zeros<T: bytemuck::Pod>(e: &Emu, n: usize) -> DevPtr {
    e.alloc(n * std::mem::size_of::<T>()).expect("alloc")
}

fn download<T: bytemuck::Pod>(e: &Emu, p: DevPtr, n: usize) -> Vec<T> {
    let mut out = vec![T::zeroed(); n];
    // SAFETY: the tests only read allocations of at least `n` elements.
    unsafe { e.copy_dtoh(p, bytemuck::cast_slice_mut(&mut out)).expect("copy_dtoh") };
    out
}

fn launch(
    e: &Emu,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    args: &[KArg],
) -> Result<(), String> {
    let cfg = LaunchCfg { grid, block, shared_bytes: shared };
    // SAFETY: every pointer argument is an allocation sized for the launch by the test.
    unsafe { e.launch(name, &cfg, args) }.map_err(|err| err.to_string())
}

fn lin(blocks: u32, threads: u32) -> ([u32; 3], [u32; 3]) {
    ([blocks, 1, 1], [threads, 1, 1])
}

/// Runs one of the block-sum kernels on `n` small integers (sums are exact in any order) and
/// returns (got, want) per block.
fn block_sums(e: &Emu, kernel: &str, n: usize, threads: u32) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect();
    let blocks = n.div_ceil(threads as usize);
    let (xp, out) = (upload(e, &x), zeros::<f32>(e, blocks));
    let mut args = vec![KArg::Ptr(xp), KArg::Ptr(out), KArg::I32(n as i32)];
    if kernel == "emu_test_warp_block_sum" {
        args.push(KArg::I32(0));
    }
    let (g, b) = lin(blocks as u32, threads);
    launch(e, kernel, g, b, 0, &args).expect("launch");
    let want = x.chunks(threads as usize).map(|c| c.iter().sum()).collect();
    (download(e, out, blocks), want)
}

#[test]
fn emu_block_sum_with_barriers_is_exact_for_many_seeds() {
    let Some(e) = emu(1) else { return };
    for _ in 0..24 {
        let (got, want) = block_sums(&e, "emu_test_block_sum", 1000, 256);
        assert_eq!(got, want, "seed {}", e.next_seed() - 1);
    }
}

#[test]
fn emu_catches_a_missing_syncthreads() {
    for kernel in ["emu_test_block_sum_racy", "emu_test_block_sum_racy_loop"] {
        let mut wrong = 0;
        for seed in 0..6 {
            let Some(e) = emu(seed) else { return };
            let (good, want) = block_sums(&e, "emu_test_block_sum", 1000, 256);
            assert_eq!(good, want, "the correct kernel, seed {seed}");
            let (got, want) = block_sums(&e, kernel, 1000, 256);
            if got.iter().zip(&want).any(|(g, w)| g.to_bits() != w.to_bits()) {
                wrong += 1;
            }
        }
        assert!(wrong > 0, "{kernel}: a missing __syncthreads went unnoticed under 6 schedules");
        eprintln!("{kernel}: wrong under {wrong} of 6 schedules");
    }
}

#[test]
fn emu_same_seed_replays_the_same_schedule() {
    let Some(a) = emu(42) else { return };
    let Some(b) = emu(42) else { return };
    assert_eq!(a.next_seed(), 42);
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for _ in 0..3 {
        let (ga, _) = block_sums(&a, "emu_test_block_sum_racy_loop", 700, 128);
        let (gb, _) = block_sums(&b, "emu_test_block_sum_racy_loop", 700, 128);
        assert_eq!(bits(ga), bits(gb));
    }
    assert_eq!(a.next_seed(), 45);
}

#[test]
fn emu_block_of_1024_threads() {
    let Some(e) = emu(3) else { return };
    for kernel in ["emu_test_block_sum", "emu_test_warp_block_sum"] {
        let (got, want) = block_sums(&e, kernel, 3000, 1024);
        assert_eq!(got, want, "{kernel}");
    }
}

#[test]
fn emu_partial_warps_block_sizes_not_a_multiple_of_32() {
    let Some(e) = emu(4) else { return };
    for threads in [1u32, 7, 32, 33, 100, 257, 1000] {
        let (got, want) = block_sums(&e, "emu_test_warp_block_sum", 2 * threads as usize + 5, threads);
        assert_eq!(got, want, "block of {threads}");
    }
    // Adding what a full-mask shuffle fetched from lanes that do not exist: undefined on a GPU,
    // NaN here.
    let x = vec![1f32; 100];
    let (xp, out) = (upload(&e, &x), zeros::<f32>(&e, 1));
    let (g, b) = lin(1, 100);
    launch(
        &e,
        "emu_test_warp_block_sum",
        g,
        b,
        0,
        &[KArg::Ptr(xp), KArg::Ptr(out), KArg::I32(100), KArg::I32(1)],
    )
    .expect("launch");
    assert!(download::<f32>(&e, out, 1)[0].is_nan());
}

fn shuffle_source(op: usize, lane: usize, delta: usize) -> usize {
    let seg = |w: usize| (lane & !(w - 1), (lane & !(w - 1)) + w - 1);
    match op {
        0 => lane ^ delta,
        1 => {
            if lane + delta <= 31 {
                lane + delta
            } else {
                lane
            }
        }
        2 => {
            if lane >= delta {
                lane - delta
            } else {
                lane
            }
        }
        3 => (lane * 7 + delta) & 31,
        4 => {
            if lane + delta <= seg(8).1 {
                lane + delta
            } else {
                lane
            }
        }
        _ => {
            let s = lane ^ delta;
            if s >= seg(16).0 && s <= seg(16).1 {
                s
            } else {
                lane
            }
        }
    }
}

#[test]
fn emu_shuffle_xor_down_up_idx_and_votes_match_host() {
    let Some(e) = emu(5) else { return };
    let n = 64usize;
    let x: Vec<f32> = (0..n).map(|t| ((t * 37) % 19) as f32 - 9.0).collect();
    for delta in [1usize, 2, 5, 16, 31] {
        let (xp, out, flags) = (upload(&e, &x), zeros::<f32>(&e, 6 * n), zeros::<u32>(&e, 3 * n));
        let (g, b) = lin(1, n as u32);
        launch(
            &e,
            "emu_test_shuffles",
            g,
            b,
            0,
            &[KArg::Ptr(xp), KArg::Ptr(out), KArg::Ptr(flags), KArg::I32(delta as i32)],
        )
        .expect("launch");
        let got = download::<f32>(&e, out, 6 * n);
        let fl = download::<u32>(&e, flags, 3 * n);
        for t in 0..n {
            let (base, lane) = (t & !31, t & 31);
            for op in 0..6 {
                let want = x[base + shuffle_source(op, lane, delta)];
                assert_eq!(got[op * n + t], want, "op {op} delta {delta} thread {t}");
            }
            let ballot = (0..32).filter(|&l| x[base + l] > 0.0).fold(0u32, |m, l| m | (1 << l));
            assert_eq!(fl[t], ballot, "ballot, thread {t}");
            assert_eq!(fl[n + t], 0, "any");
            assert_eq!(fl[2 * n + t], 1, "all");
        }
    }
}

#[test]
fn emu_shuffle_int_unsigned_double_long_long() {
    let Some(e) = emu(6) else { return };
    let (oi, ou, od, ol) =
        (zeros::<i32>(&e, 32), zeros::<u32>(&e, 32), zeros::<f64>(&e, 32), zeros::<i64>(&e, 32));
    let (g, b) = lin(1, 32);
    launch(
        &e,
        "emu_test_shuffle_types",
        g,
        b,
        0,
        &[KArg::Ptr(oi), KArg::Ptr(ou), KArg::Ptr(od), KArg::Ptr(ol)],
    )
    .expect("launch");
    let (gi, gu) = (download::<i32>(&e, oi, 32), download::<u32>(&e, ou, 32));
    let (gd, gl) = (download::<f64>(&e, od, 32), download::<i64>(&e, ol, 32));
    for t in 0..32usize {
        assert_eq!(gi[t], (t ^ 1) as i32 * -3);
        assert_eq!(gu[t], 0x8000_0000 + if t < 31 { t as u32 + 1 } else { 31 });
        assert_eq!(gd[t], if t > 0 { t - 1 } else { 0 } as f64 * 0.5 + 1e10);
        assert_eq!(gl[t], ((31 - t) as i64) << 40);
    }
}

#[test]
fn emu_atomics_int_float_u64_double_max_min_cas() {
    let Some(e) = emu(7) else { return };
    let n = 600usize;
    let count = upload(&e, &[0i32]);
    let fsum = upload(&e, &[0f32]);
    let usum = upload(&e, &[0u64]);
    let dsum = upload(&e, &[0f64]);
    let imax = upload(&e, &[i32::MIN]);
    let imin = upload(&e, &[i32::MAX]);
    let slots = zeros::<u32>(&e, 16);
    let (g, b) = lin(5, 128);
    let args = [count, fsum, usum, dsum, imax, imin, slots].map(KArg::Ptr);
    launch(&e, "emu_test_atomics", g, b, 0, &[&args[..], &[KArg::I32(n as i32)]].concat()).expect("launch");
    assert_eq!(download::<i32>(&e, count, 1)[0], n as i32);
    assert_eq!(download::<f32>(&e, fsum, 1)[0], n as f32 * 0.5);
    assert_eq!(download::<u64>(&e, usum, 1)[0], (n * (n - 1) / 2) as u64);
    assert_eq!(download::<f64>(&e, dsum, 1)[0], (n * (n - 1) / 2) as f64 * 0.25);
    assert_eq!(download::<i32>(&e, imax, 1)[0], (0..n).map(|i| (i * 7 % 1000) as i32).max().unwrap_or(0));
    assert_eq!(download::<i32>(&e, imin, 1)[0], 1000 - (n as i32 - 1));
    for (s, v) in download::<u32>(&e, slots, 16).into_iter().enumerate() {
        assert!(v >= 1 && (v as usize - 1) % 16 == s, "slot {s} holds {v}");
    }
}

#[test]
fn emu_dynamic_shared_memory_reverses_and_starts_poisoned() {
    let Some(e) = emu(8) else { return };
    let (threads, blocks) = (96usize, 3usize);
    let x: Vec<f32> = (0..threads * blocks).map(|i| i as f32).collect();
    let (xp, out, unw) = (upload(&e, &x), zeros::<f32>(&e, x.len()), zeros::<f32>(&e, x.len()));
    let (g, b) = lin(blocks as u32, threads as u32);
    launch(
        &e,
        "emu_test_dynamic_shared",
        g,
        b,
        (threads * 4) as u32,
        &[KArg::Ptr(xp), KArg::Ptr(out), KArg::Ptr(unw)],
    )
    .expect("launch");
    let got = download::<f32>(&e, out, x.len());
    for (i, v) in got.iter().enumerate() {
        let (blk, t) = (i / threads, i % threads);
        assert_eq!(*v, x[blk * threads + threads - 1 - t]);
    }
    assert!(download::<f32>(&e, unw, x.len()).iter().all(|v| v.to_bits() == u32::MAX));
}

#[test]
fn emu_static_shared_memory_is_poisoned_in_every_block() {
    let Some(e) = emu(9) else { return };
    let out = zeros::<u32>(&e, 4 * 64);
    let (g, b) = lin(4, 64);
    launch(&e, "emu_test_static_shared", g, b, 0, &[KArg::Ptr(out)]).expect("launch");
    assert!(download::<u32>(&e, out, 4 * 64).iter().all(|&v| v == u32::MAX));
}

#[test]
fn emu_2d_and_3d_grid_and_block_indices() {
    let Some(e) = emu(10) else { return };
    for (grid, block) in [([3u32, 2, 2], [4u32, 3, 2]), ([2, 3, 1], [8, 8, 1]), ([1, 1, 5], [1, 2, 64])] {
        let total = (grid.iter().product::<u32>() * block.iter().product::<u32>()) as usize;
        let out = zeros::<u32>(&e, 12 * total);
        launch(&e, "emu_test_indices", grid, block, 0, &[KArg::Ptr(out)]).expect("launch");
        let got = download::<u32>(&e, out, 12 * total);
        let mut i = 0;
        for bz in 0..grid[2] {
            for by in 0..grid[1] {
                for bx in 0..grid[0] {
                    for tz in 0..block[2] {
                        for ty in 0..block[1] {
                            for tx in 0..block[0] {
                                let want = [
                                    tx, ty, tz, bx, by, bz, block[0], block[1], block[2], grid[0], grid[1],
                                    grid[2],
                                ];
                                assert_eq!(
                                    got[12 * i..12 * i + 12],
                                    want,
                                    "grid {grid:?} block {block:?} thread {i}"
                                );
                                i += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn emu_syncthreads_count_and_or() {
    let Some(e) = emu(11) else { return };
    let n = 100usize;
    let out = zeros::<i32>(&e, 3 * n);
    let (g, b) = lin(1, n as u32);
    launch(&e, "emu_test_sync_count", g, b, 0, &[KArg::Ptr(out)]).expect("launch");
    let got = download::<i32>(&e, out, 3 * n);
    let count = (0..n).filter(|t| t % 3 == 0).count() as i32;
    assert!(got[..n].iter().all(|&v| v == count));
    assert!(got[n..].iter().all(|&v| v == 1));
}

#[test]
fn emu_every_argument_kind_reaches_the_kernel() {
    let Some(e) = emu(12) else { return };
    let out = zeros::<f64>(&e, 6);
    let args = [
        KArg::Ptr(out),
        KArg::I32(-7),
        KArg::U32(4_000_000_000),
        KArg::I64(-(1 << 40)),
        KArg::U64(1 << 50),
        KArg::F32(1.25),
        KArg::F64(-2.5e-300),
    ];
    launch(&e, "emu_test_arg_kinds", [1, 1, 1], [1, 1, 1], 0, &args).expect("launch");
    assert_eq!(download::<f64>(&e, out, 6), [-7.0, 4e9, -(2f64.powi(40)), 2f64.powi(50), 1.25, -2.5e-300]);
}

#[test]
fn emu_deadlock_is_an_error_not_a_hang() {
    let Some(e) = emu(13) else { return };
    let out = zeros::<f32>(&e, 64);
    let (g, b) = lin(2, 64);
    let err = launch(&e, "emu_test_deadlock", g, b, 0, &[KArg::Ptr(out)]).expect_err("a deadlock");
    assert!(
        err.contains("deadlock") && err.contains("__syncthreads") && err.contains("__shfl_xor_sync"),
        "{err}"
    );
    assert!(err.contains("emu_tests.cu:"), "names the source line: {err}");
    assert!(e.synchronize().is_err(), "the fault is sticky");
}

#[test]
fn emu_divergent_barrier_mismatched_shuffle_and_trap_are_errors() {
    let Some(e) = emu(14) else { return };
    let out = zeros::<f32>(&e, 64);
    let (g, b) = lin(1, 64);
    let err = launch(&e, "emu_test_divergent_barrier", g, b, 0, &[KArg::Ptr(out)]).expect_err("divergent");
    assert!(err.contains("divergent barriers"), "{err}");
    let err = launch(&e, "emu_test_mismatched_shuffle", lin(1, 32).0, lin(1, 32).1, 0, &[KArg::Ptr(out)])
        .expect_err("mismatch");
    assert!(err.contains("mismatched warp collective"), "{err}");
    let err = launch(&e, "emu_test_trap", g, b, 0, &[KArg::Ptr(out), KArg::I32(17)]).expect_err("trap");
    assert!(err.contains("__trap()") && err.contains("thread (17,0,0)"), "{err}");
    // The emulator keeps working after a faulting launch.
    launch(&e, "emu_test_trap", g, b, 0, &[KArg::Ptr(out), KArg::I32(-1)]).expect("no trap");
    assert!(download::<f32>(&e, out, 64).iter().all(|&v| v == 1.0));
}

#[test]
fn emu_unknown_kernel_wrong_arguments_and_bad_pointers_are_errors() {
    let Some(e) = emu(15) else { return };
    let out = zeros::<f32>(&e, 64);
    let (g, b) = lin(1, 64);
    let err = launch(&e, "no_such_kernel", g, b, 0, &[]).expect_err("unknown");
    assert!(err.contains("no kernel named `no_such_kernel`"), "{err}");
    let err = launch(&e, "emu_test_trap", g, b, 0, &[KArg::Ptr(out)]).expect_err("count");
    assert!(err.contains("takes 2 arguments"), "{err}");
    let err = launch(&e, "emu_test_trap", g, b, 0, &[KArg::Ptr(out), KArg::F32(1.0)]).expect_err("kind");
    assert!(err.contains("argument 1: expected I32"), "{err}");
    let err =
        launch(&e, "emu_test_trap", g, [2048, 1, 1], 0, &[KArg::Ptr(out), KArg::I32(-1)]).expect_err("shape");
    assert!(err.contains("bad launch shape"), "{err}");
    let err =
        launch(&e, "emu_test_trap", g, b, 0, &[KArg::Ptr(out + (1 << 40)), KArg::I32(-1)]).expect_err("ptr");
    assert!(err.contains("not inside a live allocation"), "{err}");
    // Host-side refusals are not sticky.
    assert!(e.synchronize().is_ok());
    // Memory: zeroed and aligned allocations; copies outside them are errors.
    let p = e.alloc(1000).expect("alloc");
    assert_eq!(p % 256, 0);
    assert!(download::<u8>(&e, p, 1000).iter().all(|&v| v == 0));
    let mut buf = [0u8; 8];
    // SAFETY: these ranges are deliberately outside the allocation; the device must refuse.
    unsafe {
        assert!(e.copy_dtoh(p + 996, &mut buf).is_err());
        assert!(e.copy_htod(p + 1000, &buf).is_err());
        assert!(e.memset_zero(p, 1001).is_err());
        assert!(e.mark_uninit(p + 1, 1000).is_err());
        // memory handed out unzeroed reads as 0xFF bytes (NaN as f32) until a kernel writes it
        assert!(e.mark_uninit(p + 8, 16).is_ok());
        let mut marked = [0u8; 32];
        assert!(e.copy_dtoh(p, &mut marked).is_ok());
        assert!(marked[..8].iter().all(|&b| b == 0) && marked[8..24].iter().all(|&b| b == 0xFF));
        assert!(marked[24..].iter().all(|&b| b == 0));
        assert!(f32::from_le_bytes([marked[8], marked[9], marked[10], marked[11]]).is_nan());
        e.free(p);
        assert!(e.copy_dtoh(p, &mut buf).is_err());
        e.free(p);
    }
    assert!(e.synchronize().is_err_and(|err| err.to_string().contains("not a live allocation")));
}

#[test]
fn emu_sgemm_matches_a_naive_loop_for_all_transposes_and_strides() {
    let Some(e) = emu(16) else { return };
    let (m, n, k) = (5usize, 7usize, 4usize);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (ac + 3, bc + 1, n + 2);
        let a: Vec<f32> = (0..ar * lda).map(|i| ((i * 31) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..br * ldb).map(|i| ((i * 17) % 11) as f32 - 5.0).collect();
        let c0: Vec<f32> = (0..m * ldc).map(|i| (i % 9) as f32).collect();
        let opa = |i: usize, p: usize| if ta { a[p * lda + i] } else { a[i * lda + p] };
        let opb = |p: usize, j: usize| if tb { b[j * ldb + p] } else { b[p * ldb + j] };
        for (alpha, beta) in [(1.5f32, 0.5f32), (1.0, 0.0)] {
            let (ap, bp) = (upload(&e, &a), upload(&e, &b));
            let c_init: Vec<f32> = if beta == 0.0 { vec![f32::NAN; c0.len()] } else { c0.clone() };
            let cp = upload(&e, &c_init);
            let g =
                Gemm { trans_a: ta, trans_b: tb, m, n, k, alpha, a: ap, lda, b: bp, ldb, beta, c: cp, ldc };
            // SAFETY: A, B and C are allocations of exactly the spans `g` describes (or more).
            unsafe { e.sgemm(&g).expect("sgemm") };
            let got = download::<f32>(&e, cp, c0.len());
            for i in 0..m {
                for j in 0..ldc {
                    let idx = i * ldc + j;
                    if j >= n {
                        assert_eq!(got[idx].to_bits(), c_init[idx].to_bits(), "padding of C untouched");
                        continue;
                    }
                    let dot: f32 = (0..k).map(|p| opa(i, p) * opb(p, j)).sum();
                    let want = alpha * dot + if beta == 0.0 { 0.0 } else { beta * c0[idx] };
                    assert_eq!(got[idx], want, "ta {ta} tb {tb} alpha {alpha} beta {beta} ({i},{j})");
                }
            }
        }
    }
    // A stride smaller than the row is refused.
    let p = e.alloc(4096).expect("alloc");
    let g = Gemm {
        trans_a: false,
        trans_b: false,
        m: 4,
        n: 4,
        k: 4,
        alpha: 1.0,
        a: p,
        lda: 3,
        b: p,
        ldb: 4,
        beta: 0.0,
        c: p,
        ldc: 4,
    };
    // SAFETY: the call must be refused before touching memory.
    assert!(unsafe { e.sgemm(&g) }.is_err());
}

#[test]
fn emu_new_says_clearly_when_the_emulator_was_not_built() {
    let available = std::hint::black_box(EMU_AVAILABLE);
    match Emu::with_seed(0) {
        Ok(e) => {
            assert!(available);
            assert_eq!(e.name(), "emu");
            assert!(e.synchronize().is_ok());
        }
        Err(err) => {
            assert!(!available);
            assert!(err.to_string().contains("no C++ compiler found at build time (install g++)"), "{err}");
        }
    }
}

#[test]
fn emu_exited_threads_count_as_arrived_at_barriers() {
    let Some(e) = emu(17) else { return };
    for live in [1i32, 31, 33, 200, 256] {
        let out = zeros::<i32>(&e, 3);
        let (g, b) = lin(3, 256);
        launch(&e, "emu_test_early_exit", g, b, 0, &[KArg::Ptr(out), KArg::I32(live)]).expect("launch");
        assert_eq!(download::<i32>(&e, out, 3), vec![live * (live - 1) / 2; 3], "live {live}");
    }
}

#[test]
fn emu_many_blocks_and_concurrent_launches_from_host_threads() {
    let Some(e) = emu(18) else { return };
    let start = std::time::Instant::now();
    let (got, want) = block_sums(&e, "emu_test_block_sum", 4096 * 64, 64);
    assert_eq!(got, want);
    eprintln!("4096 blocks of 64 threads: {:?}", start.elapsed());
    // One device used from several threads (serialised like one stream), and several devices.
    let others: Vec<Emu> = (0..3).filter_map(|s| emu(100 + s)).collect();
    std::thread::scope(|s| {
        for dev in std::iter::repeat_n(&e, 3).chain(&others) {
            s.spawn(move || {
                for _ in 0..5 {
                    let (got, want) = block_sums(dev, "emu_test_warp_block_sum", 3000, 96);
                    assert_eq!(got, want);
                }
            });
        }
    });
}

#[test]
fn emu_math_intrinsics_resolve_for_float_double_and_int() {
    let Some(e) = emu(19) else { return };
    let (of, od, ou) = (zeros::<f32>(&e, 15), zeros::<f64>(&e, 6), zeros::<u32>(&e, 10));
    let (x, y) = (1.7f32, 0.3f64);
    let args = [KArg::Ptr(of), KArg::Ptr(od), KArg::Ptr(ou), KArg::F32(x), KArg::F64(y)];
    launch(&e, "emu_test_math", [1, 1, 1], [1, 1, 1], 0, &args).expect("launch");
    let f = download::<f32>(&e, of, 15);
    let want_f = [
        x.exp(),
        x.ln(),
        x.tanh(),
        libm::erff(x),
        x.sqrt(),
        x,
        2.0,
        1.0 / x.sqrt(),
        x.exp(),
        x / 3.0,
        x.mul_add(2.0, 1.0),
        x,
        x.exp(),
        x.tanh(),
        x.ln(),
    ];
    for (i, (g, w)) in f.iter().zip(want_f).enumerate() {
        assert!((g - w).abs() <= 1e-6 * w.abs(), "float {i}: {g} vs {w}");
    }
    let d = download::<f64>(&e, od, 6);
    let want_d = [y.exp(), y.tanh(), y.sqrt(), libm::erf(y), 2.0, y.mul_add(y, y)];
    for (i, (g, w)) in d.iter().zip(want_d).enumerate() {
        assert!((g - w).abs() <= 1e-15 * w.abs(), "double {i}: {g} vs {w} (a float overload?)");
    }
    let u = download::<u32>(&e, ou, 10);
    assert_eq!(u, [4, 5, 8, 31, 4, 3, x.to_bits(), 0x8000_0000, 2, i32::MIN as u32]);
}

/// bf16 bits of small values (multiples of 1/4 in [-4, 4)): every product and sum below is exact.
fn small_bf16(i: usize, salt: usize) -> (u16, f32) {
    let v = (((i * 7919 + salt * 104_729) % 32) as f32 - 16.0) / 4.0;
    ((v.to_bits() >> 16) as u16, v)
}

#[test]
fn emu_mma_bf16_m16n8k16_matches_a_plain_matmul_with_the_ptx_fragment_layout() {
    let Some(e) = emu(21) else { return };
    // 3 blocks of 2 warps: six independent products, each accumulated twice onto C.
    let sets = 6;
    let (mut a_bits, mut a) = (Vec::new(), Vec::new());
    let (mut b_bits, mut b) = (Vec::new(), Vec::new());
    for i in 0..sets * 256 {
        let (h, v) = small_bf16(i, 1);
        a_bits.push(h);
        a.push(v);
    }
    for i in 0..sets * 128 {
        let (h, v) = small_bf16(i, 2);
        b_bits.push(h);
        b.push(v);
    }
    let c: Vec<f32> = (0..sets * 128).map(|i| (i % 13) as f32 - 6.5).collect();
    let (ap, bp, cp, dp) =
        (upload(&e, &a_bits), upload(&e, &b_bits), upload(&e, &c), zeros::<f32>(&e, sets * 128));
    let reps = 2;
    let args = [KArg::Ptr(dp), KArg::Ptr(ap), KArg::Ptr(bp), KArg::Ptr(cp), KArg::I32(reps)];
    launch(&e, "emu_test_mma_bf16", [3, 1, 1], [64, 1, 1], 0, &args).expect("launch");
    let got = download::<f32>(&e, dp, sets * 128);
    for s in 0..sets {
        for r in 0..16 {
            for n in 0..8 {
                let dot: f32 = (0..16).map(|k| a[s * 256 + r * 16 + k] * b[s * 128 + k * 8 + n]).sum();
                let want = c[s * 128 + r * 8 + n] + reps as f32 * dot;
                assert_eq!(got[s * 128 + r * 8 + n], want, "set {s}, D[{r}][{n}]");
            }
        }
    }
    // A transposed A operand (what a kernel assuming the wrong layout would feed) gives other numbers.
    let at: Vec<u16> =
        (0..sets * 256).map(|i| a_bits[(i / 256) * 256 + (i % 16) * 16 + (i % 256) / 16]).collect();
    let atp = upload(&e, &at);
    let args = [KArg::Ptr(dp), KArg::Ptr(atp), KArg::Ptr(bp), KArg::Ptr(cp), KArg::I32(1)];
    launch(&e, "emu_test_mma_bf16", [3, 1, 1], [64, 1, 1], 0, &args).expect("launch");
    let wrong = download::<f32>(&e, dp, sets * 128);
    let differs = (0..sets * 128).filter(|&i| {
        let (s, r, n) = (i / 128, (i % 128) / 8, i % 8);
        let dot: f32 = (0..16).map(|k| a[s * 256 + r * 16 + k] * b[s * 128 + k * 8 + n]).sum();
        wrong[i] != c[i] + dot
    });
    assert!(differs.count() > sets * 100, "the layout must matter");
}

#[test]
fn emu_mma_needs_the_whole_warp() {
    let Some(e) = emu(22) else { return };
    let (ap, bp, cp, dp) =
        (zeros::<u16>(&e, 256), zeros::<u16>(&e, 128), zeros::<f32>(&e, 128), zeros::<f32>(&e, 128));
    let args = [KArg::Ptr(dp), KArg::Ptr(ap), KArg::Ptr(bp), KArg::Ptr(cp), KArg::I32(1)];
    let err = launch(&e, "emu_test_mma_bf16", [1, 1, 1], [16, 1, 1], 0, &args).expect_err("16 lanes");
    assert!(err.contains("all 32 lanes"), "{err}");
}
