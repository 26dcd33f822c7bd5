//! The fused matrix products (cuBLASLt epilogues: bias, bias + ReLU, the bias gradient) through
//! the GPU launch code, against `Cpu<f64>`: on the emulator with the fused products (`Gpu<Emu>`,
//! whose `gemm_lt` computes each epilogue as documented for cuBLASLt) and without them (the
//! fallback a GPU without cuBLASLt or without an algorithm for a shape takes), in f32 and bf16,
//! and on a real GPU when there is one. Also: the fused path really replaces the separate
//! kernels (the op families the breakdown timer sees), and ReLU fused into the product leaves
//! the pre-activation buffer unread.

mod common;

use common::{cpu, down, randn, up};
use nli_bert::backend::gpu::emu::Emu;
use nli_bert::backend::gpu::Gpu;
use nli_bert::backend::{Activation, Backend};
use nli_bert::rng::HostRng;

const ACTS: [Activation; 4] = [Activation::Relu, Activation::Gelu, Activation::GeluTanh, Activation::Tanh];

/// (n, ic, oc): a row count that is not a multiple of any tile, an odd inner size, k = 1.
const SHAPES: [(usize, usize, usize); 4] = [(37, 24, 40), (5, 7, 3), (130, 64, 96), (9, 1, 17)];

/// Every fused op's outputs, named: forward with and without bias, Linear + activation for each
/// activation, backward with accumulated gradients (bias gradient onto existing values).
fn outputs<B: Backend>(be: &B, seed: u64, n: usize, ic: usize, oc: usize) -> Vec<(String, Vec<f64>)> {
    let mut rng = HostRng::new(seed, 11);
    let (x, w, b, dy) =
        (randn(&mut rng, n * ic), randn(&mut rng, oc * ic), randn(&mut rng, oc), randn(&mut rng, n * oc));
    let (dx0, dw0, db0) = (randn(&mut rng, n * ic), randn(&mut rng, oc * ic), randn(&mut rng, oc));
    let (x, w, b, dy) = (up(be, &x), up(be, &w), up(be, &b), up(be, &dy));
    let mut res = Vec::new();
    let mut y = up(be, &vec![f64::NAN; n * oc]); // beta = 0 must not read C
    be.matmul_forward(be.view_mut(&mut y), be.view(&x), be.view(&w), Some(be.view(&b)), n, ic, oc);
    res.push(("matmul_forward + bias".to_string(), down(be, &y)));
    let mut y2 = up(be, &vec![f64::NAN; n * oc]);
    be.matmul_forward(be.view_mut(&mut y2), be.view(&x), be.view(&w), None, n, ic, oc);
    res.push(("matmul_forward".to_string(), down(be, &y2)));
    for act in ACTS {
        let mut pre = be.alloc(n * oc).unwrap();
        let mut out = up(be, &vec![f64::NAN; n * oc]);
        be.matmul_act_forward(
            be.view_mut(&mut pre),
            be.view_mut(&mut out),
            be.view(&x),
            be.view(&w),
            Some(be.view(&b)),
            n,
            ic,
            oc,
            act,
        );
        let mut dpre = be.alloc(n * oc).unwrap();
        be.activation_backward(be.view_mut(&mut dpre), be.view(&dy), be.view(&pre), be.view(&out), act);
        let (outh, dpreh) = (down(be, &out), down(be, &dpre));
        if act == Activation::Relu {
            // ReLU's backward through the forward's own mask, bit for bit (in bf16 a value near
            // 0 may fall on the other side than in f64, so this is checked on the backend's
            // own output; the f32 comparison with the reference below covers the rest).
            let dyh = down(be, &dy);
            for i in 0..n * oc {
                let want = if outh[i] > 0.0 { dyh[i] } else { 0.0 };
                assert_eq!(dpreh[i], want, "ReLU backward [{i}] after matmul_act_forward ({})", be.name());
            }
        }
        res.push((format!("matmul_act_forward {act:?}"), outh.clone()));
        res.push((format!("activation_backward after it, {act:?}"), dpreh));
        // The next Linear (oc → K2) and its backward through the activation: with ReLU after
        // the fused forward the mask kept in `pre` is applied inside the product (DRELU).
        const K2: usize = 5;
        let mut rng2 = HostRng::new(seed, 12);
        let (w2, dy2, dw20, db20) = (
            randn(&mut rng2, K2 * oc),
            randn(&mut rng2, n * K2),
            randn(&mut rng2, K2 * oc),
            randn(&mut rng2, K2),
        );
        let (w2, dy2) = (up(be, &w2), up(be, &dy2));
        let (mut dw2, mut db2) = (up(be, &dw20), up(be, &db20));
        let mut dpre2 = up(be, &vec![f64::NAN; n * oc]);
        let mut dact = be.alloc(n * oc).unwrap();
        be.matmul_backward_act(
            be.view_mut(&mut dpre2),
            be.view_mut(&mut dact),
            be.view_mut(&mut dw2),
            Some(be.view_mut(&mut db2)),
            be.view(&dy2),
            be.view(&out),
            be.view(&pre),
            be.view(&w2),
            n,
            oc,
            K2,
            act,
        );
        let dpre2h = down(be, &dpre2);
        if act == Activation::Relu {
            // zero exactly where the forward's output is not positive (the mask it kept)
            for i in 0..n * oc {
                assert!(
                    outh[i] > 0.0 || dpre2h[i] == 0.0,
                    "DRELU [{i}]: {} where out = {}",
                    dpre2h[i],
                    outh[i]
                );
            }
        }
        res.push((format!("matmul_backward_act {act:?} dinp"), dpre2h));
        res.push((format!("matmul_backward_act {act:?} dweight"), down(be, &dw2)));
        res.push((format!("matmul_backward_act {act:?} dbias"), down(be, &db2)));
    }
    let (mut dx, mut dw, mut db) = (up(be, &dx0), up(be, &dw0), up(be, &db0));
    be.matmul_backward(
        Some(be.view_mut(&mut dx)),
        true,
        be.view_mut(&mut dw),
        Some(be.view_mut(&mut db)),
        be.view(&dy),
        be.view(&x),
        be.view(&w),
        n,
        ic,
        oc,
    );
    res.push(("matmul_backward dinp (accumulated)".to_string(), down(be, &dx)));
    res.push(("matmul_backward dweight".to_string(), down(be, &dw)));
    res.push(("matmul_backward dbias".to_string(), down(be, &db)));
    res
}

fn compare(what: &str, got: &[(String, Vec<f64>)], want: &[(String, Vec<f64>)], bf16: bool) {
    assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what} {name}: lengths");
        if bf16
            && (name.starts_with("activation_backward after it, Relu")
                || name == "matmul_backward_act Relu dinp")
        {
            continue; // mask flips near 0: checked against the backend's own forward instead
        }
        if bf16 {
            // bf16 operands: ~0.4% per rounding (tanh's 1 − y² doubles it); a relative norm per output.
            let num: f64 = g.iter().zip(w).map(|(a, b)| (a - b) * (a - b)).sum();
            let den: f64 = w.iter().map(|b| b * b).sum();
            let e = (num / den.max(1e-300)).sqrt();
            assert!(e < 2e-2, "{what} {name}: relative error {e:e}");
        } else {
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{what} {name}[{i}]: {a} vs cpu f64 {b}");
            }
        }
    }
}

fn gpu_on_emu(fused: bool, bf16: bool) -> Gpu<Emu> {
    let emu = Emu::new().expect("the CUDA emulator is built with the crate").with_fused_gemms(fused);
    if bf16 {
        Gpu::new_bf16(emu)
    } else {
        Gpu::new(emu)
    }
}

#[test]
fn fused_products_emu_match_cpu_f64() {
    for (si, &(n, ic, oc)) in SHAPES.iter().enumerate() {
        let want = outputs(&cpu(), si as u64, n, ic, oc);
        for bf16 in [false, true] {
            for fused in [true, false] {
                let be = gpu_on_emu(fused, bf16);
                let got = outputs(&be, si as u64, n, ic, oc);
                be.check().expect("no device error");
                compare(
                    &format!("shape {si} (n {n} ic {ic} oc {oc}) fused {fused} bf16 {bf16}"),
                    &got,
                    &want,
                    bf16,
                );
            }
        }
    }
}

#[test]
fn fused_products_cuda_match_cpu_f64() {
    if !common::have_cuda("fused_products_cuda_match_cpu_f64") {
        return;
    }
    for (si, &(n, ic, oc)) in SHAPES.iter().enumerate() {
        let want = outputs(&cpu(), si as u64, n, ic, oc);
        for bf16 in [false, true] {
            for fused in [true, false] {
                let dev = nli_bert::backend::gpu::cuda::Cuda::new(0, &nli_bert::data::hub::cache_dir())
                    .expect("Cuda::new(0)");
                let be = if bf16 { Gpu::new_bf16(dev) } else { Gpu::new(dev) }.with_fused_gemms(fused);
                let got = outputs(&be, si as u64, n, ic, oc);
                be.check().expect("no device error");
                compare(&format!("cuda shape {si} fused {fused} bf16 {bf16}"), &got, &want, bf16);
                if fused {
                    // Which epilogues cuBLASLt took on this card (the rest ran as cuBLAS + our
                    // kernels, checked above all the same); at least the plain bias must have.
                    let report = be.fused_report().unwrap_or_default();
                    println!("shape {si} (n {n} ic {ic} oc {oc}) bf16 {bf16}: fused {report}");
                    let bias = report.split(", ").find_map(|x| x.strip_prefix("bias ")).unwrap_or("0/0");
                    assert!(!bias.starts_with("0/"), "cuBLASLt fused no bias product: {report}");
                }
            }
        }
    }
}

/// The op families one call issues, as the breakdown timer records them.
fn families(be: &Gpu<Emu>, f: impl FnOnce()) -> Vec<String> {
    assert!(be.breakdown_start().unwrap());
    f();
    be.breakdown_take().unwrap().into_iter().map(|(fam, _)| fam).collect()
}

#[test]
fn fused_products_replace_the_separate_kernels() {
    let (n, ic, oc) = (37, 24, 40);
    let mut rng = HostRng::new(3, 12);
    for fused in [true, false] {
        let be = gpu_on_emu(fused, false);
        let (x, w, b) = (
            up(&be, &randn(&mut rng, n * ic)),
            up(&be, &randn(&mut rng, oc * ic)),
            up(&be, &randn(&mut rng, oc)),
        );
        let mut y = be.alloc(n * oc).unwrap();
        let mut pre = be.alloc(n * oc).unwrap();
        let fwd = families(&be, || {
            be.matmul_forward(be.view_mut(&mut y), be.view(&x), be.view(&w), Some(be.view(&b)), n, ic, oc)
        });
        let mut act_forward = |act: Activation| {
            families(&be, || {
                be.matmul_act_forward(
                    be.view_mut(&mut pre),
                    be.view_mut(&mut y),
                    be.view(&x),
                    be.view(&w),
                    Some(be.view(&b)),
                    n,
                    ic,
                    oc,
                    act,
                )
            })
        };
        let relu = act_forward(Activation::Relu);
        let gelu = act_forward(Activation::Gelu);
        // the next Linear's backward through the ReLU whose mask the fused forward kept
        let relu_again = act_forward(Activation::Relu);
        assert_eq!(relu_again, relu);
        let (w2, dy2) = (up(&be, &randn(&mut rng, 7 * oc)), up(&be, &randn(&mut rng, n * 7)));
        let (mut dpre, mut dact) = (be.alloc(n * oc).unwrap(), be.alloc(n * oc).unwrap());
        let (mut dw2, mut db2) = (be.alloc(7 * oc).unwrap(), be.alloc(7).unwrap());
        let bwd_act = families(&be, || {
            be.matmul_backward_act(
                be.view_mut(&mut dpre),
                be.view_mut(&mut dact),
                be.view_mut(&mut dw2),
                Some(be.view_mut(&mut db2)),
                be.view(&dy2),
                be.view(&y),
                be.view(&pre),
                be.view(&w2),
                n,
                oc,
                7,
                Activation::Relu,
            )
        });
        let (mut dw, mut db) = (be.alloc(oc * ic).unwrap(), be.alloc(oc).unwrap());
        let bwd = families(&be, || {
            be.matmul_backward(
                None,
                false,
                be.view_mut(&mut dw),
                Some(be.view_mut(&mut db)),
                be.view(&y),
                be.view(&x),
                be.view(&w),
                n,
                ic,
                oc,
            )
        });
        be.check().unwrap();
        if fused {
            // bias and ReLU inside the product; GELU is not cuBLASLt's (its epilogue is the tanh
            // form), so it keeps the activation kernel; the bias gradient comes with the weight
            // gradient and is only added to dbias (one small pass, reduce.cu).
            assert_eq!(fwd, ["matmul"], "fused forward + bias");
            assert_eq!(relu, ["matmul"], "fused forward + bias + ReLU");
            assert_eq!(gelu, ["matmul", "activation"], "forward + bias, then GELU");
            assert_eq!(bwd, ["matmul", "reduce"], "weight and bias gradients");
            assert_eq!(bwd_act, ["matmul", "reduce"], "ReLU's backward inside the product (DRELU)");
        } else {
            assert_eq!(bwd_act, ["matmul", "reduce", "activation"], "product, sums, then ReLU's backward");
            assert_eq!(fwd, ["matmul", "activation"], "product, then bias_forward");
            assert_eq!(relu, ["matmul", "activation"], "product, bias_forward, ReLU");
            assert_eq!(bwd, ["matmul", "reduce"], "weight gradient, then column sums");
        }
    }
}

/// The bias-gradient epilogue overwrites its vector; dbias must still accumulate, and only the
/// reduction may differ from the column-sum kernels (rounding of one f32 sum per element).
#[test]
fn fused_bias_gradient_accumulates() {
    let (n, ic, oc) = (600, 8, 33);
    let mut rng = HostRng::new(4, 13);
    let (x, dy, db0) = (randn(&mut rng, n * ic), randn(&mut rng, n * oc), randn(&mut rng, oc));
    let run = |fused: bool| {
        let be = gpu_on_emu(fused, false);
        let (x, dy, w) = (up(&be, &x), up(&be, &dy), be.alloc(oc * ic).unwrap());
        let (mut dw, mut db) = (be.alloc(oc * ic).unwrap(), up(&be, &db0));
        for _ in 0..2 {
            be.matmul_backward(
                None,
                false,
                be.view_mut(&mut dw),
                Some(be.view_mut(&mut db)),
                be.view(&dy),
                be.view(&x),
                be.view(&w),
                n,
                ic,
                oc,
            );
        }
        be.check().unwrap();
        down(&be, &db)
    };
    let (fused, plain) = (run(true), run(false));
    for j in 0..oc {
        let col: f64 = (0..n).map(|i| dy_at(&dy, i, j, oc)).sum();
        let want = db0[j] + 2.0 * col;
        for (what, got) in [("fused", fused[j]), ("plain", plain[j])] {
            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{what} dbias[{j}] {got} vs {want}");
        }
    }
}

fn dy_at(dy: &[f64], i: usize, j: usize, oc: usize) -> f64 {
    (dy[i * oc + j] as f32) as f64
}
