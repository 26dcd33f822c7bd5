//! Every kernel family of the GPU backend (embedding, matmul + bias, activations, `<cls>`,
//! dropout, LayerNorm, cross-entropy, Adam, bf16 conversion) run through `Gpu<Emu>` — the real kernels and launch
//! code on the CPU emulator — against the float64 CPU reference `Cpu<f64>`, at two or more
//! shapes each (sizes that are not multiples of the block size, sequences of length 1, 3 and
//! max_len, random lengths). Attention has its own file (tests/gpu_attention.rs).
//!
//! Tolerances are f32-vs-f64: `|a − b| <= atol + rtol·|ref|`.

mod common;

use common::{cpu, down, randn, up, Dev};

use nli_bert::backend::{Activation, AdamStep, Backend, DeviceBatch};
use nli_bert::rng::{Dropout, HostRng};

fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| {
            let close = (*g - *w).abs() <= atol + rtol * w.abs();
            let both_nan = g.is_nan() && w.is_nan();
            !close && !both_nan
        })
        .take(5)
        .map(|(i, (g, w))| format!("[{i}] got {g} want {w}"))
        .collect();
    assert!(bad.is_empty(), "{what}: mismatches (atol {atol}, rtol {rtol}): {}", bad.join(", "));
}

fn batch<B: Backend>(be: &B, lens: &[usize], v: usize, seed: u64) -> DeviceBatch<B> {
    common::device_batch(be, lens, v, &mut HostRng::new(seed, 0), common::Labels::AfterAll)
}

/// A test shape: sequence lengths, hidden size C, FFN size F, vocabulary V, positions P.
struct Shape {
    lens: Vec<usize>,
    c: usize,
    f: usize,
    v: usize,
    p: usize,
}

fn shapes() -> Vec<Shape> {
    let mut rng = HostRng::new(77, 3);
    let random: Vec<usize> = (0..9).map(|_| 1 + rng.below(20) as usize).collect();
    vec![
        Shape { lens: vec![3, 1, 8, 5], c: 8, f: 12, v: 11, p: 8 },
        Shape { lens: random, c: 40, f: 70, v: 37, p: 21 },
        Shape { lens: vec![33, 3, 33], c: 36, f: 300, v: 5, p: 33 },
        // 600 rows: the column sums run in several chunks (reduce.cu)
        Shape { lens: vec![30; 20], c: 33, f: 50, v: 50, p: 30 },
    ]
}

/// Runs `body` with `be` bound to `Cpu<f64>` and then to the GPU backend `dev`, and compares
/// the named outputs.
macro_rules! on_both {
    ($dev:expr, $atol:expr, $rtol:expr, |$be:ident| $body:block) => {{
        let run_cpu = {
            let $be = cpu();
            $body
        };
        let run_emu = match $dev {
            Dev::Emu => {
                let $be = common::emu();
                let r = $body;
                $be.check().expect("no device error");
                r
            }
            Dev::Cuda => {
                let $be = common::cuda();
                let r = $body;
                $be.check().expect("no device error");
                r
            }
        };
        assert_eq!(run_cpu.len(), run_emu.len());
        for ((name, want), (_, got)) in run_cpu.iter().zip(&run_emu) {
            assert_close(&format!("{:?} vs cpu f64: {name}", $dev), got, want, $atol, $rtol);
        }
    }};
}

fn embedding_matches_cpu_f64(dev: Dev) {
    for (si, s) in shapes().iter().enumerate() {
        let mut rng = HostRng::new(si as u64, 1);
        let t: usize = s.lens.iter().sum();
        let (wte, wse, wpe, dout) = (
            randn(&mut rng, s.v * s.c),
            randn(&mut rng, 2 * s.c),
            randn(&mut rng, s.p * s.c),
            randn(&mut rng, t * s.c),
        );
        let base = randn(&mut rng, s.v.max(s.p) * s.c);
        on_both!(dev, 1e-5, 1e-5, |be| {
            let bt = batch(&be, &s.lens, s.v, 9 + si as u64);
            let (wte, wse, wpe, dout) = (up(&be, &wte), up(&be, &wse), up(&be, &wpe), up(&be, &dout));
            let mut out = be.alloc(t * s.c).unwrap();
            be.embedding_forward(
                be.view_mut(&mut out),
                &bt,
                be.view(&wte),
                be.view(&wse),
                be.view(&wpe),
                s.c,
            );
            // gradients accumulate onto existing values
            let mut dwte = up(&be, &base[..s.v * s.c]);
            let mut dwse = up(&be, &base[..2 * s.c]);
            let mut dwpe = up(&be, &base[..s.p * s.c]);
            be.embedding_backward(
                be.view_mut(&mut dwte),
                be.view_mut(&mut dwse),
                Some(be.view_mut(&mut dwpe)),
                be.view(&dout),
                &bt,
                s.c,
            );
            vec![
                (format!("shape {si} embedding_forward"), down(&be, &out)),
                (format!("shape {si} embedding_backward dwte"), down(&be, &dwte)),
                (format!("shape {si} embedding_backward dwse"), down(&be, &dwse)),
                (format!("shape {si} embedding_backward dwpe"), down(&be, &dwpe)),
            ]
        });
    }
}

fn matmul_matches_cpu_f64(dev: Dev) {
    for (si, s) in shapes().iter().enumerate() {
        let mut rng = HostRng::new(si as u64, 2);
        let (n, ic, oc) = (s.lens.iter().sum::<usize>(), s.c, s.f);
        let (x, w, b, dy) =
            (randn(&mut rng, n * ic), randn(&mut rng, oc * ic), randn(&mut rng, oc), randn(&mut rng, n * oc));
        let (dx0, dw0, db0) = (randn(&mut rng, n * ic), randn(&mut rng, oc * ic), randn(&mut rng, oc));
        for accumulate in [false, true] {
            // sums of up to 600 f32 products: ~1e-5 relative rounding
            on_both!(dev, 1e-4, 1e-4, |be| {
                let (x, w, b, dy) = (up(&be, &x), up(&be, &w), up(&be, &b), up(&be, &dy));
                let mut y = up(&be, &vec![f64::NAN; n * oc]); // beta = 0 must not read C
                be.matmul_forward(
                    be.view_mut(&mut y),
                    be.view(&x),
                    be.view(&w),
                    Some(be.view(&b)),
                    n,
                    ic,
                    oc,
                );
                let mut y2 = be.alloc(n * oc).unwrap();
                be.matmul_forward(be.view_mut(&mut y2), be.view(&x), be.view(&w), None, n, ic, oc);
                let (mut dx, mut dw, mut db) = (up(&be, &dx0), up(&be, &dw0), up(&be, &db0));
                be.matmul_backward(
                    Some(be.view_mut(&mut dx)),
                    accumulate,
                    be.view_mut(&mut dw),
                    Some(be.view_mut(&mut db)),
                    be.view(&dy),
                    be.view(&x),
                    be.view(&w),
                    n,
                    ic,
                    oc,
                );
                vec![
                    (format!("shape {si} matmul_forward"), down(&be, &y)),
                    (format!("shape {si} matmul_forward no bias"), down(&be, &y2)),
                    (format!("shape {si} acc {accumulate} matmul_backward dinp"), down(&be, &dx)),
                    (format!("shape {si} matmul_backward dweight"), down(&be, &dw)),
                    (format!("shape {si} matmul_backward dbias"), down(&be, &db)),
                ]
            });
        }
    }
}

fn activation_matches_cpu_f64(dev: Dev) {
    for n in [7usize, 256, 1000, 4099] {
        let mut rng = HostRng::new(n as u64, 3);
        let x: Vec<f64> = randn(&mut rng, n).iter().map(|v| 3.0 * v).collect();
        let dy = randn(&mut rng, n);
        for act in [Activation::Relu, Activation::Gelu, Activation::GeluTanh, Activation::Tanh] {
            on_both!(dev, 1e-6, 1e-5, |be| {
                let (xb, dyb) = (up(&be, &x), up(&be, &dy));
                let mut y = be.alloc(n).unwrap();
                be.activation_forward(be.view_mut(&mut y), be.view(&xb), act);
                let mut dx = be.alloc(n).unwrap();
                be.activation_backward(be.view_mut(&mut dx), be.view(&dyb), be.view(&xb), be.view(&y), act);
                vec![
                    (format!("n {n} activation_forward {act:?}"), down(&be, &y)),
                    (format!("activation_backward {act:?}"), down(&be, &dx)),
                ]
            });
        }
    }
}

fn classifier_cls_and_dropout_match_cpu_f64(dev: Dev) {
    for (si, s) in shapes().iter().enumerate() {
        let mut rng = HostRng::new(si as u64, 4);
        let (t, nb) = (s.lens.iter().sum::<usize>(), s.lens.len());
        let (x, dy) = (randn(&mut rng, t * s.c), randn(&mut rng, nb * s.c));
        for p in [0.0, 0.1, 0.5] {
            let drop = Dropout::new(p, 1234 + si as u64, 7, 5);
            on_both!(dev, 0.0, 1e-6, |be| {
                let bt = batch(&be, &s.lens, s.v, 3);
                let (xb, dyb) = (up(&be, &x), up(&be, &dy));
                let mut cls = be.alloc(nb * s.c).unwrap();
                be.cls_forward(be.view_mut(&mut cls), be.view(&xb), &bt, s.c);
                let mut dx = up(&be, &x); // overwritten
                be.cls_backward(be.view_mut(&mut dx), be.view(&dyb), &bt, s.c);
                let mut d = be.alloc(t * s.c).unwrap();
                be.dropout_forward(be.view_mut(&mut d), be.view(&xb), drop);
                let mut dd = be.alloc(t * s.c).unwrap();
                be.dropout_backward(be.view_mut(&mut dd), be.view(&xb), drop);
                vec![
                    (format!("shape {si} cls_forward"), down(&be, &cls)),
                    (format!("shape {si} cls_backward"), down(&be, &dx)),
                    (format!("shape {si} p {p} dropout_forward"), down(&be, &d)),
                    (format!("shape {si} p {p} dropout_backward"), down(&be, &dd)),
                ]
            });
        }
    }
}

fn layernorm_matches_cpu_f64(dev: Dev) {
    for (si, s) in shapes().iter().enumerate() {
        let mut rng = HostRng::new(si as u64, 5);
        let (t, c) = (s.lens.iter().sum::<usize>(), s.c);
        let (res, sub, dy) = (randn(&mut rng, t * c), randn(&mut rng, t * c), randn(&mut rng, t * c));
        let w: Vec<f64> = randn(&mut rng, c).iter().map(|x| 1.0 + 0.3 * x).collect();
        let b = randn(&mut rng, c);
        let (dw0, db0) = (randn(&mut rng, c), randn(&mut rng, c));
        for (with_sub, p) in [(true, 0.0), (true, 0.2), (false, 0.0)] {
            let drop = Dropout::new(p, 5, 3, 1);
            on_both!(dev, 1e-5, 1e-4, |be| {
                let (rb, sb, dyb, wb, bb) =
                    (up(&be, &res), up(&be, &sub), up(&be, &dy), up(&be, &w), up(&be, &b));
                let (mut out, mut sum, mut mean, mut rstd) = (
                    be.alloc(t * c).unwrap(),
                    be.alloc(t * c).unwrap(),
                    be.alloc(t).unwrap(),
                    be.alloc(t).unwrap(),
                );
                be.layernorm_forward(
                    be.view_mut(&mut out),
                    be.view_mut(&mut sum),
                    be.view_mut(&mut mean),
                    be.view_mut(&mut rstd),
                    be.view(&rb),
                    with_sub.then(|| be.view(&sb)),
                    be.view(&wb),
                    be.view(&bb),
                    1e-5,
                    drop,
                    t,
                    c,
                );
                let (mut dres, mut dsub, mut dw, mut db) =
                    (be.alloc(t * c).unwrap(), be.alloc(t * c).unwrap(), up(&be, &dw0), up(&be, &db0));
                be.layernorm_backward(
                    be.view_mut(&mut dres),
                    if with_sub { Some(be.view_mut(&mut dsub)) } else { None },
                    be.view_mut(&mut dw),
                    be.view_mut(&mut db),
                    be.view(&dyb),
                    be.view(&sum),
                    be.view(&mean),
                    be.view(&rstd),
                    be.view(&wb),
                    drop,
                    t,
                    c,
                );
                let tag = format!("shape {si} sub {with_sub} p {p}");
                vec![
                    (format!("{tag} layernorm_forward out"), down(&be, &out)),
                    (format!("{tag} layernorm_forward sum"), down(&be, &sum)),
                    (format!("{tag} layernorm_forward mean"), down(&be, &mean)),
                    (format!("{tag} layernorm_forward rstd"), down(&be, &rstd)),
                    (format!("{tag} layernorm_backward dres"), down(&be, &dres)),
                    (format!("{tag} layernorm_backward dsub"), down(&be, &dsub)),
                    (format!("{tag} layernorm_backward dweight"), down(&be, &dw)),
                    (format!("{tag} layernorm_backward dbias"), down(&be, &db)),
                ]
            });
        }
    }
}

fn classifier_crossentropy_matches_cpu_f64(dev: Dev) {
    for (nb, k) in [(1usize, 3usize), (37, 3), (300, 5)] {
        let mut rng = HostRng::new(nb as u64, 6);
        let logits: Vec<f64> = randn(&mut rng, nb * k).iter().map(|x| 4.0 * x).collect();
        on_both!(dev, 1e-6, 1e-5, |be| {
            let lens = vec![2usize; nb];
            let mut bt = batch(&be, &lens, 7, 11);
            if k == 5 {
                // labels up to 4 and one out of range (NaN loss, no one-hot term)
                let mut labels: Vec<i32> = (0..nb as i32).map(|i| i % 5).collect();
                labels[3] = 9;
                bt.labels = be.upload_i32(&labels).unwrap();
            }
            let lb = up(&be, &logits);
            let (mut losses, mut probs, mut dl) =
                (be.alloc(nb).unwrap(), be.alloc(nb * k).unwrap(), be.alloc(nb * k).unwrap());
            be.crossentropy_forward(be.view_mut(&mut losses), be.view_mut(&mut probs), be.view(&lb), &bt, k);
            be.crossentropy_backward(be.view_mut(&mut dl), be.view(&probs), &bt, k, 1.0 / nb as f64);
            vec![
                (format!("B {nb} K {k} crossentropy_forward losses"), down(&be, &losses)),
                (format!("B {nb} K {k} crossentropy_forward probs"), down(&be, &probs)),
                (format!("B {nb} K {k} crossentropy_backward"), down(&be, &dl)),
            ]
        });
    }
}

fn adam_matches_cpu_f64(dev: Dev) {
    for n in [5usize, 1000, 3001] {
        let mut rng = HostRng::new(n as u64, 7);
        let (p0, g) = (randn(&mut rng, n), randn(&mut rng, n));
        let row_len = 7;
        let nrows = n / row_len;
        let rows: Vec<u32> = (0..nrows as u32).filter(|r| r % 3 != 1).collect();
        on_both!(dev, 1e-6, 1e-5, |be| {
            let gb = up(&be, &g);
            let (mut p, mut m, mut v) = (up(&be, &p0), be.alloc(n).unwrap(), be.alloc(n).unwrap());
            for (t, (wd, decoupled, beta1)) in
                [(0.0, false, 0.9), (0.01, false, 0.9), (0.05, true, 0.3)].into_iter().enumerate()
            {
                let s = AdamStep {
                    lr: 1e-2,
                    beta1,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: wd,
                    decoupled,
                    t: t as u64 + 1,
                };
                be.adam_update(
                    be.view_mut(&mut p),
                    be.view(&gb),
                    be.view_mut(&mut m),
                    be.view_mut(&mut v),
                    &s,
                );
            }
            let rl = nrows * row_len;
            let (mut pr, mut mr, mut vr) = (up(&be, &p0[..rl]), be.alloc(rl).unwrap(), be.alloc(rl).unwrap());
            let s = AdamStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                decoupled: false,
                t: 2,
            };
            be.adam_update_rows(
                be.view_mut(&mut pr),
                be.slice(&gb, 0..rl),
                be.view_mut(&mut mr),
                be.view_mut(&mut vr),
                &rows,
                row_len,
                &s,
            );
            let mut z = up(&be, &g[..rl]);
            be.zero_rows(be.view_mut(&mut z), &rows, row_len);
            vec![
                (format!("n {n} adam_update params"), down(&be, &p)),
                (format!("n {n} adam_update m"), down(&be, &m)),
                (format!("n {n} adam_update v"), down(&be, &v)),
                (format!("n {n} adam_update_rows params"), down(&be, &pr)),
                (format!("n {n} adam_update_rows v"), down(&be, &vr)),
                (format!("n {n} zero_rows"), down(&be, &z)),
            ]
        });
    }
}

#[test]
fn embedding_emu_matches_cpu_f64() {
    embedding_matches_cpu_f64(Dev::Emu);
}

#[test]
fn embedding_cuda_matches_cpu_f64() {
    if common::have_cuda("embedding_cuda_matches_cpu_f64") {
        embedding_matches_cpu_f64(Dev::Cuda);
    }
}

#[test]
fn matmul_emu_matches_cpu_f64() {
    matmul_matches_cpu_f64(Dev::Emu);
}

#[test]
fn matmul_cuda_matches_cpu_f64() {
    if common::have_cuda("matmul_cuda_matches_cpu_f64") {
        matmul_matches_cpu_f64(Dev::Cuda);
    }
}

#[test]
fn activation_emu_matches_cpu_f64() {
    activation_matches_cpu_f64(Dev::Emu);
}

#[test]
fn activation_cuda_matches_cpu_f64() {
    if common::have_cuda("activation_cuda_matches_cpu_f64") {
        activation_matches_cpu_f64(Dev::Cuda);
    }
}

#[test]
fn classifier_cls_and_dropout_emu_match_cpu_f64() {
    classifier_cls_and_dropout_match_cpu_f64(Dev::Emu);
}

#[test]
fn classifier_cls_and_dropout_cuda_match_cpu_f64() {
    if common::have_cuda("classifier_cls_and_dropout_cuda_match_cpu_f64") {
        classifier_cls_and_dropout_match_cpu_f64(Dev::Cuda);
    }
}

#[test]
fn layernorm_emu_matches_cpu_f64() {
    layernorm_matches_cpu_f64(Dev::Emu);
}

#[test]
fn layernorm_cuda_matches_cpu_f64() {
    if common::have_cuda("layernorm_cuda_matches_cpu_f64") {
        layernorm_matches_cpu_f64(Dev::Cuda);
    }
}

#[test]
fn classifier_crossentropy_emu_matches_cpu_f64() {
    classifier_crossentropy_matches_cpu_f64(Dev::Emu);
}

#[test]
fn classifier_crossentropy_cuda_matches_cpu_f64() {
    if common::have_cuda("classifier_crossentropy_cuda_matches_cpu_f64") {
        classifier_crossentropy_matches_cpu_f64(Dev::Cuda);
    }
}

#[test]
fn adam_emu_matches_cpu_f64() {
    adam_matches_cpu_f64(Dev::Emu);
}

#[test]
fn adam_cuda_matches_cpu_f64() {
    if common::have_cuda("adam_cuda_matches_cpu_f64") {
        adam_matches_cpu_f64(Dev::Cuda);
    }
}

/// kernels/convert.cu against its CPU twin, bit for bit: random values over many binades, ties
/// (which round to even), subnormals, ±0, ±inf and NaNs; n not a multiple of the block.
#[test]
fn convert_emu_matches_cpu_twin() {
    use nli_bert::backend::cpu::convert::f32_to_bf16;
    use nli_bert::backend::gpu::device::{Device, KArg, LaunchCfg};
    use nli_bert::backend::gpu::emu::Emu;
    if !common::have_emu("convert_emu_matches_cpu_twin") {
        return;
    }
    let mut rng = HostRng::new(11, 0);
    let mut x: Vec<f32> =
        (0..1000).map(|_| (rng.normal() * 2f64.powi((rng.uniform() * 60.0) as i32 - 30)) as f32).collect();
    x.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MIN_POSITIVE / 3.0]);
    x.extend([
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        -(1.0 + 2f32.powi(-8)),
        f32::MAX,
        f32::from_bits(0x7f80_0001),
    ]);
    let n = x.len();
    let e = Emu::with_seed(3).expect("emulator");
    let inp = e.alloc(n * 4).expect("alloc");
    let out = e.alloc(n * 2).expect("alloc");
    // SAFETY: `inp` holds n f32s, `out` n u16s; the kernel writes out[0..n] only.
    unsafe {
        e.copy_htod(inp, bytemuck::cast_slice(&x)).expect("copy_htod");
        let cfg = LaunchCfg::linear(n.div_ceil(256) as u32, 256, 0);
        e.launch("convert_f32_to_bf16", &cfg, &[KArg::Ptr(out), KArg::Ptr(inp), KArg::I64(n as i64)])
            .expect("launch");
    }
    let mut got = vec![0u16; n];
    // SAFETY: `out` holds n u16s.
    unsafe { e.copy_dtoh(out, bytemuck::cast_slice_mut(&mut got)).expect("copy_dtoh") };
    for (i, (&v, &g)) in x.iter().zip(&got).enumerate() {
        assert_eq!(g, f32_to_bf16(v), "element {i}: {v:e} ({:#010x})", v.to_bits());
    }
}
