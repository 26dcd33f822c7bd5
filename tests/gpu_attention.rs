//! The attention kernels (kernels/attention.cu) and their launchers through `Gpu<Emu>` — the real
//! kernels and launch code on the CPU emulator, randomised schedule — against the float64 CPU
//! reference `Cpu<f64>`: out, att and dqkv, dropout off and on (the same Philox units on both).
//!
//! Shapes: lengths 1, 3, max_len and random ones, an empty sequence, C and hs that are not
//! multiples of 32, nh = 1 and 4, hs > 128 (two column passes), block sizes 32..256, and both
//! shared-memory paths (shared row buffers / rows of att; dS whole in shared memory / recomputed
//! columns), the fallbacks forced by a small shared-memory budget and reached naturally by a
//! 300-token sequence.
//!
//! Tolerances are f32-vs-f64: `|a − b| <= atol + rtol·|ref|`.

mod common;

use common::{cpu, down, emu, randn, up};

use nli_bert::backend::gpu::attention::{backward_with, forward_with, AttentionLaunch, SHARED_LIMIT};
use nli_bert::backend::gpu::device::Device;
use nli_bert::backend::gpu::Gpu;
use nli_bert::backend::{Backend, DeviceBatch};
use nli_bert::rng::{Dropout, HostRng};

const ATOL: f64 = 2e-5;
const RTOL: f64 = 1e-4;

/// `|got − want| <= atol + rtol·|want|` (false for a NaN on either side).
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= ATOL + RTOL * want.abs()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| !close(**g, **w))
        .take(5)
        .map(|(i, (g, w))| format!("[{i}] got {g} want {w}"))
        .collect();
    assert!(bad.is_empty(), "{what}: mismatches (atol {ATOL}, rtol {RTOL}): {}", bad.join(", "));
}

/// Attention reads only the layout of a batch; tokens are 0, labels 0.
fn batch<B: Backend>(be: &B, lens: &[usize]) -> DeviceBatch<B> {
    let zeros = vec![0; lens.len()];
    common::device_batch(be, lens, 1, &mut HostRng::new(0, 0), common::Labels::Given(&zeros))
}

/// One attention problem: lengths, heads, hidden size, random qkv and dout.
struct Case {
    lens: Vec<usize>,
    nh: usize,
    c: usize,
    qkv: Vec<f64>,
    dout: Vec<f64>,
}

impl Case {
    fn new(lens: Vec<usize>, nh: usize, c: usize, seed: u64) -> Case {
        let t: usize = lens.iter().sum();
        let mut rng = HostRng::new(seed, 11);
        // Scale Q and K up a little so that the softmax is far from uniform.
        let qkv = randn(&mut rng, t * 3 * c).into_iter().map(|x| 1.5 * x).collect();
        let dout = randn(&mut rng, t * c);
        Case { lens, nh, c, qkv, dout }
    }

    fn name(&self, dropout: &Dropout) -> String {
        format!("lens {:?}, nh {}, C {}, p {}", self.lens, self.nh, self.c, dropout.p)
    }
}

/// (out, att, dqkv) of forward then backward on the CPU reference.
fn run_cpu(k: &Case, dropout: Dropout) -> [Vec<f64>; 3] {
    let be = cpu();
    let b = batch(&be, &k.lens);
    let t = b.layout.t();
    let (qkv, dout) = (up(&be, &k.qkv), up(&be, &k.dout));
    let (mut out, mut att, mut dqkv) = (
        be.alloc(t * k.c).unwrap(),
        be.alloc(b.layout.att_len(k.nh)).unwrap(),
        be.alloc(t * 3 * k.c).unwrap(),
    );
    be.attention_forward(be.view_mut(&mut out), be.view_mut(&mut att), be.view(&qkv), &b, k.nh, k.c, dropout);
    be.attention_backward(
        be.view_mut(&mut dqkv),
        be.view(&dout),
        be.view(&out),
        be.view(&att),
        be.view(&qkv),
        &b,
        k.nh,
        k.c,
        dropout,
    );
    [down(&be, &out), down(&be, &att), down(&be, &dqkv)]
}

/// (out, att, dqkv) of forward then backward through `Gpu<Emu>` with launch configuration `cfg`
/// (`None`: the Backend trait's default launch). Buffers start as NaN so that an element the
/// kernels fail to write shows up.
fn run_emu(k: &Case, dropout: Dropout, cfg: Option<AttentionLaunch>) -> [Vec<f64>; 3] {
    run_gpu(&emu(), k, dropout, cfg)
}

/// [`run_emu`] on any device.
fn run_gpu<D: Device>(
    be: &Gpu<D>,
    k: &Case,
    dropout: Dropout,
    cfg: Option<AttentionLaunch>,
) -> [Vec<f64>; 3] {
    let b = batch(be, &k.lens);
    let t = b.layout.t();
    let (qkv, dout) = (up(be, &k.qkv), up(be, &k.dout));
    let nan = |n: usize| up(be, &vec![f64::NAN; n]);
    let (mut out, mut att, mut dqkv) = (nan(t * k.c), nan(b.layout.att_len(k.nh)), nan(t * 3 * k.c));
    let (o, a, d) = (be.view_mut(&mut out), be.view_mut(&mut att), be.view_mut(&mut dqkv));
    match cfg {
        None => be.attention_forward(o, a, be.view(&qkv), &b, k.nh, k.c, dropout),
        Some(cfg) => forward_with(be, &cfg, o, a, be.view(&qkv), &b, k.nh, k.c, dropout),
    }
    let (att_v, qkv_v, dout_v) = (be.view(&att), be.view(&qkv), be.view(&dout));
    match cfg {
        None => be.attention_backward(d, dout_v, be.view(&out), att_v, qkv_v, &b, k.nh, k.c, dropout),
        Some(cfg) => backward_with(be, &cfg, d, dout_v, att_v, qkv_v, &b, k.nh, k.c, dropout),
    }
    be.check().expect("no device error");
    [down(be, &out), down(be, &att), down(be, &dqkv)]
}

fn compare(k: &Case, dropout: Dropout, cfg: Option<AttentionLaunch>) {
    let want = run_cpu(k, dropout);
    let got = run_emu(k, dropout, cfg);
    let name = k.name(&dropout);
    for (what, (g, w)) in ["out", "att", "dqkv"].iter().zip(got.iter().zip(&want)) {
        assert_close(&format!("emu vs cpu f64, {what} ({name}, {cfg:?})"), g, w);
    }
}

fn dropouts() -> [Dropout; 3] {
    [Dropout::OFF, Dropout::new(0.1, 0x5eed_0001_0002, 3, 6), Dropout::new(0.5, 42, 1 << 33, 0)]
}

/// The standard shapes: lengths 3 and max_len with 1 and random lengths; C and hs not multiples
/// of 32; nh 1 and 4; an empty sequence; hs > 128.
fn cases() -> Vec<Case> {
    let mut rng = HostRng::new(5, 7);
    let random: Vec<usize> = (0..7).map(|_| 1 + rng.below(40) as usize).collect();
    vec![
        Case::new(vec![3, 1, 37, 5], 1, 20, 1),
        Case::new(random, 4, 36, 2),
        Case::new(vec![3, 0, 33, 1, 2], 4, 12, 3),
        Case::new(vec![3, 34], 1, 130, 4),
    ]
}

#[test]
fn attention_cuda_matches_cpu_f64() {
    if !common::have_cuda("attention_cuda_matches_cpu_f64") {
        return;
    }
    let be = common::cuda();
    let mut all = cases();
    all.push(Case::new(vec![300, 7, 128], 4, 64, 11)); // dS recomputed (the 96 KiB budget)
    for k in &all {
        for d in dropouts() {
            let want = run_cpu(k, d);
            let got = run_gpu(&be, k, d, None);
            for (what, (g, w)) in ["out", "att", "dqkv"].iter().zip(got.iter().zip(&want)) {
                assert_close(&format!("cuda vs cpu f64, {what} ({})", k.name(&d)), g, w);
            }
        }
    }
}

#[test]
fn attention_emu_matches_cpu_f64() {
    for k in &cases() {
        for d in dropouts() {
            compare(k, d, None);
        }
    }
}

#[test]
fn attention_emu_block_sizes_and_shared_paths_match_cpu_f64() {
    let k = Case::new(vec![3, 45, 1, 17], 4, 44, 9);
    let d = dropouts()[1];
    for threads in [32, 64, 96, 256] {
        for shared_limit in [64, SHARED_LIMIT] {
            compare(&k, d, Some(AttentionLaunch { threads, shared_limit }));
        }
    }
}

#[test]
fn attention_emu_is_deterministic_across_runs_block_sizes_and_paths() {
    let k = Case::new(vec![40, 3, 29], 2, 18, 10);
    let d = dropouts()[2];
    let first = run_emu(&k, d, None);
    for cfg in [
        None,
        Some(AttentionLaunch { threads: 32, shared_limit: 64 }),
        Some(AttentionLaunch { threads: 160, shared_limit: 1 << 20 }),
    ] {
        let again = run_emu(&k, d, cfg);
        for (what, (a, b)) in ["out", "att", "dqkv"].iter().zip(first.iter().zip(&again)) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{what} differs bit-wise between the default launch and {cfg:?}");
        }
    }
}

#[test]
fn attention_emu_long_sequence_takes_the_fallback_and_matches_cpu_f64() {
    // 300 tokens: dS (300·301 floats) exceeds the 96 KiB budget, so backward recomputes columns.
    compare(&Case::new(vec![300, 3], 1, 8, 12), dropouts()[1], None);
    // 512 tokens (BERT's longest) with a 4 KiB budget: forward also takes the rows of att.
    let cfg = AttentionLaunch { threads: 128, shared_limit: 4096 };
    compare(&Case::new(vec![1, 512], 1, 5, 13), dropouts()[2], Some(cfg));
}

#[test]
fn attention_emu_reports_too_much_shared_memory() {
    // 512 threads: the fallback needs 17 floats per token, 102 KB for 1500 tokens.
    let be = emu();
    let (t, nh, c) = (1500, 1, 4);
    let b = batch(&be, &[t]);
    let qkv = be.alloc(t * 3 * c).unwrap();
    let att = be.alloc(b.layout.att_len(nh)).unwrap();
    let (dout, mut dqkv) = (be.alloc(t * c).unwrap(), be.alloc(t * 3 * c).unwrap());
    let cfg = AttentionLaunch { threads: 512, ..AttentionLaunch::default() };
    let (dv, av, qv) = (be.view(&dout), be.view(&att), be.view(&qkv));
    backward_with(&be, &cfg, be.view_mut(&mut dqkv), dv, av, qv, &b, nh, c, Dropout::OFF);
    let err = be.check().expect_err("the launch must be refused").to_string();
    assert!(err.contains("shared memory"), "{err}");
}

#[test]
#[should_panic(expected = "not a multiple of the 3 heads")]
fn attention_emu_rejects_c_not_a_multiple_of_nh() {
    let be = emu();
    let b = batch(&be, &[2]);
    let (mut out, mut att, qkv) = (be.alloc(8).unwrap(), be.alloc(12).unwrap(), be.alloc(24).unwrap());
    be.attention_forward(be.view_mut(&mut out), be.view_mut(&mut att), be.view(&qkv), &b, 3, 4, Dropout::OFF);
}

#[test]
#[should_panic(expected = "att has 9 elements")]
fn attention_emu_rejects_a_short_att_buffer() {
    let be = emu();
    let b = batch(&be, &[2, 1]);
    let (mut out, mut att, qkv) = (be.alloc(12).unwrap(), be.alloc(9).unwrap(), be.alloc(36).unwrap());
    be.attention_forward(be.view_mut(&mut out), be.view_mut(&mut att), be.view(&qkv), &b, 2, 4, Dropout::OFF);
}

// ---- flash attention (bf16 tensor cores) -----------------------------------------------------

/// x rounded to bf16 (nearest even), as the flash kernels round Q, K, V and dO on loading.
fn bf16(x: f64) -> f64 {
    f32::from_bits((nli_bert::backend::cpu::convert::f32_to_bf16(x as f32) as u32) << 16) as f64
}

/// Row log-sum-exps of the scaled scores, (nh, T), in f64 from qkv.
fn lse_f64(k: &Case, qkv: &[f64]) -> Vec<f64> {
    let (c, nh) = (k.c, k.nh);
    let hs = c / nh;
    let t: usize = k.lens.iter().sum();
    let mut out = vec![0.0; nh * t];
    let mut r0 = 0;
    for &len in &k.lens {
        for h in 0..nh {
            for i in r0..r0 + len {
                let s: Vec<f64> = (r0..r0 + len)
                    .map(|j| {
                        (0..hs)
                            .map(|d| qkv[i * 3 * c + h * hs + d] * qkv[j * 3 * c + c + h * hs + d])
                            .sum::<f64>()
                            / (hs as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                out[h * t + i] = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            }
        }
        r0 += len;
    }
    out
}

/// `max |got − want| / max |want|` over a tensor: the error relative to the tensor's scale.
fn rel_max_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(g, w)| if g.is_nan() { f64::INFINITY } else { (g - w).abs() })
        .fold(0.0, f64::max)
        / scale
}

/// The flash kernels through `Gpu<Emu>` in bf16 mode against `Cpu<f64>` on the same inputs
/// rounded to bf16 (so what is left is the kernels' own rounding: P and dS rounded to bf16
/// before their second product, 2^-9 relative each, summed over many terms), with dropout.
/// Bound: 1% of each tensor's largest magnitude (5 bf16 half-ulps, about 2.3x the largest error seen
/// over these cases: out 1.6e-3, dqkv 4.4e-3); the f32 classic
/// kernels meet 1e-4 (above). Also checks that every element is written and lse.
fn compare_flash(k: &Case, dropout: Dropout) -> [f64; 3] {
    let be = Gpu::new_bf16(nli_bert::backend::gpu::emu::Emu::new().expect("emulator"));
    compare_flash_on(&be, k, dropout, false)
}

/// [`compare_flash`] on any device, with qkv, out, dout and dqkv stored as f32 or (`bf16_acts`)
/// as the bf16 activations of bf16 storage ([`Backend::upload_act`]: the `_bf16` kernels).
fn compare_flash_on<D: Device>(be: &Gpu<D>, k: &Case, dropout: Dropout, bf16_acts: bool) -> [f64; 3] {
    assert!(
        be.uses_flash_attention(k.nh, k.c),
        "{}: the flash kernels must take this shape",
        k.name(&dropout)
    );
    let rounded = Case {
        lens: k.lens.clone(),
        nh: k.nh,
        c: k.c,
        qkv: k.qkv.iter().map(|&x| bf16(x)).collect(),
        dout: k.dout.iter().map(|&x| bf16(x)).collect(),
    };
    let b = batch(be, &k.lens);
    let t = b.layout.t();
    assert_eq!(be.attention_saved_len(&b.layout, k.nh, k.c), k.nh * t, "flash saves nh·T log-sum-exps");
    let act = |x: &[f64]| {
        if bf16_acts {
            let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let b = be.upload_act(&v).expect("upload_act");
            assert!(be.view(&b).is_bf16(), "bf16 storage must store activations as bf16");
            b
        } else {
            up(be, x)
        }
    };
    let (qkv, dout) = (act(&rounded.qkv), act(&rounded.dout));
    let nan = |n: usize| vec![f64::NAN; n];
    let (mut out, mut lse, mut dqkv) = (act(&nan(t * k.c)), up(be, &nan(k.nh * t)), act(&nan(t * 3 * k.c)));
    be.attention_forward(be.view_mut(&mut out), be.view_mut(&mut lse), be.view(&qkv), &b, k.nh, k.c, dropout);
    be.attention_backward(
        be.view_mut(&mut dqkv),
        be.view(&dout),
        be.view(&out),
        be.view(&lse),
        be.view(&qkv),
        &b,
        k.nh,
        k.c,
        dropout,
    );
    be.check().expect("no device error");
    let want = run_cpu(&rounded, dropout);
    let name = k.name(&dropout);
    let errs = [
        rel_max_err(&down(be, &out), &want[0]),
        rel_max_err(&down(be, &lse), &lse_f64(&rounded, &rounded.qkv)),
        rel_max_err(&down(be, &dqkv), &want[2]),
    ];
    let name = if bf16_acts { format!("{name}, bf16 activations") } else { name };
    println!(
        "flash vs cpu f64 ({name}): max error / max |ref|: out {:.2e}, lse {:.2e}, dqkv {:.2e}",
        errs[0], errs[1], errs[2]
    );
    for (what, e) in ["out", "lse", "dqkv"].iter().zip(errs) {
        assert!(
            e <= 1.5e-2,
            "flash {what} ({name}): max error {e:.3e} of the largest magnitude, bound 1.5e-2"
        );
    }
    errs
}

#[test]
fn attention_flash_emu_matches_cpu_f64_at_bert_lengths_with_dropout() {
    // Lengths 1..512 packed into one batch, hs = 64 (bert.small / bert.base heads).
    let k = Case::new(vec![1, 7, 16, 17, 64, 128, 300, 512], 2, 128, 21);
    for d in [dropouts()[1], Dropout::OFF] {
        compare_flash(&k, d);
    }
}

#[test]
fn attention_flash_emu_matches_cpu_f64_for_narrow_heads_and_odd_packings() {
    let mut rng = HostRng::new(8, 9);
    let random: Vec<usize> = (0..40).map(|_| 1 + rng.below(30) as usize).collect();
    for (k, d) in [
        (Case::new(random, 4, 128, 22), dropouts()[2]), // hs 32, SNLI-like short sequences
        (Case::new(vec![3, 0, 33, 1, 70, 2], 3, 72, 23), dropouts()[1]), // hs 24 padded to 32, empty seq
        (Case::new(vec![5, 1, 2, 66], 3, 36, 24), dropouts()[1]), // hs 12 padded to 16
        (Case::new(vec![1], 1, 64, 25), Dropout::OFF),  // one token
        (Case::new(vec![9, 20, 3], 2, 26, 27), dropouts()[1]), // hs 13: the scalar loads
    ] {
        compare_flash(&k, d);
    }
}

#[test]
fn attention_flash_emu_with_bf16_activations_matches_cpu_f64() {
    // The `_bf16` kernels (bf16 qkv / dout in, bf16 out / dqkv): the same bound, output rounding
    // included. Lengths up to 512 at hs 64, and the scalar loads (hs 13), padded heads, an empty
    // sequence.
    let be = Gpu::new_bf16(nli_bert::backend::gpu::emu::Emu::new().expect("emulator"));
    assert!(be.uses_bf16_storage());
    for (k, d) in [
        (Case::new(vec![1, 7, 16, 17, 64, 128, 300, 512], 2, 128, 21), dropouts()[1]),
        (Case::new(vec![3, 0, 33, 1, 70, 2], 3, 72, 23), dropouts()[1]),
        (Case::new(vec![9, 20, 3], 2, 26, 27), dropouts()[1]),
        (Case::new(vec![5, 1, 2, 66], 3, 36, 24), Dropout::OFF),
    ] {
        compare_flash_on(&be, &k, d, true);
    }
}

#[test]
fn attention_flash_emu_is_deterministic_and_a_real_error_is_caught() {
    let k = Case::new(vec![40, 3, 29, 90], 2, 64, 26);
    let d = dropouts()[1];
    let run = || {
        let be = Gpu::new_bf16(nli_bert::backend::gpu::emu::Emu::new().expect("emulator"));
        let b = batch(&be, &k.lens);
        let t = b.layout.t();
        let (qkv, dout) = (up(&be, &k.qkv), up(&be, &k.dout));
        let (mut out, mut lse, mut dqkv) =
            (be.alloc(t * k.c).unwrap(), be.alloc(k.nh * t).unwrap(), be.alloc(t * 3 * k.c).unwrap());
        be.attention_forward(be.view_mut(&mut out), be.view_mut(&mut lse), be.view(&qkv), &b, k.nh, k.c, d);
        let (o, l) = (be.view(&out), be.view(&lse));
        be.attention_backward(be.view_mut(&mut dqkv), be.view(&dout), o, l, be.view(&qkv), &b, k.nh, k.c, d);
        be.check().expect("no device error");
        (down(&be, &out), down(&be, &dqkv))
    };
    let (a, b) = (run(), run());
    assert!(a.0.iter().zip(&b.0).all(|(x, y)| x.to_bits() == y.to_bits()), "out differs between runs");
    assert!(a.1.iter().zip(&b.1).all(|(x, y)| x.to_bits() == y.to_bits()), "dqkv differs between runs");
    // The bound of compare_flash is tight enough to catch a real mistake: the same outputs
    // checked against a reference with the dropout mask of another step fail it.
    let want = run_cpu(&k, Dropout { step: d.step + 1, ..d });
    assert!(rel_max_err(&a.0, &want[0]) > 5e-2, "another dropout mask must not pass the bound");
}

#[test]
fn attention_flash_cuda_matches_cpu_f64() {
    // The flash kernels on a real GPU's tensor cores, with the emulator tests' bound and cases.
    if !common::have_cuda("attention_flash_cuda_matches_cpu_f64") {
        return;
    }
    let dev =
        nli_bert::backend::gpu::cuda::Cuda::new(0, &nli_bert::data::hub::cache_dir()).expect("Cuda::new(0)");
    let be = Gpu::new_bf16(dev);
    let mut rng = HostRng::new(8, 9);
    let random: Vec<usize> = (0..40).map(|_| 1 + rng.below(30) as usize).collect();
    for (k, d) in [
        (Case::new(vec![1, 7, 16, 17, 64, 128, 300, 512], 2, 128, 21), dropouts()[1]),
        (Case::new(random, 4, 128, 22), dropouts()[2]),
        (Case::new(vec![3, 0, 33, 1, 70, 2], 3, 72, 23), dropouts()[1]),
        (Case::new(vec![9, 20, 3], 2, 26, 27), Dropout::OFF),
        (Case::new(vec![200, 5, 77], 12, 768, 28), dropouts()[1]), // bert.base heads
    ] {
        compare_flash_on(&be, &k, d, false);
        compare_flash_on(&be, &k, d, true);
    }
}
