//! bf16 storage (`--precision bf16` on a GPU): every op that reads or writes activations, run on
//! bf16 buffers ([`Backend::upload_act`] / [`Backend::alloc_act`], so the `_bf16` kernels and the
//! products on bf16 operands) through `Gpu<Emu>` — the real kernels and launch code on the CPU
//! emulator — against `Cpu<f64>` on the same inputs rounded to bf16 (activations, and the weights
//! the products read as their bf16 copies). What is left is the GPU's own rounding: each stored
//! activation rounded once to bf16 (2^-9 relative), f32 arithmetic inside.
//!
//! Bounds: element-wise ops `|got − want| <= 2^-8·|want| + 1e-6·max|want|` (one rounding, with
//! room for the f32 arithmetic before it); reductions and products, whose outputs may cancel,
//! `max |got − want| <= rel · max |want|` per tensor (rel printed and stated per op).

mod common;

use common::{cpu, down, randn, up, Dev};

use nli_bert::backend::gpu::Gpu;
use nli_bert::backend::{Activation, Backend, DeviceBatch};
use nli_bert::float::Float;
use nli_bert::rng::{Dropout, HostRng};

/// x rounded to bf16 (nearest even).
fn bf(x: f64) -> f64 {
    f32::from_bits((nli_bert::backend::cpu::convert::f32_to_bf16(x as f32) as u32) << 16) as f64
}

fn rb(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| bf(v)).collect()
}

/// An activation buffer holding `x` (bf16 on the GPU with bf16 storage).
fn act<B: Backend>(be: &B, x: &[f64]) -> B::Buf {
    let v: Vec<B::F> = x.iter().map(|&x| <B::F as Float>::from_f64(x)).collect();
    be.upload_act(&v).expect("upload_act")
}

/// How an output is compared.
#[derive(Clone, Copy)]
enum Bound {
    /// One bf16 rounding per element.
    Elementwise,
    /// `max |got − want| <= rel · max |want|`.
    Tensor(f64),
}

fn check(what: &str, got: &[f64], want: &[f64], bound: Bound) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    match bound {
        Bound::Elementwise => {
            let bad: Vec<String> = got
                .iter()
                .zip(want)
                .enumerate()
                .filter(|(_, (g, w))| {
                    let err = (*g - *w).abs();
                    err.is_nan() || err > 2f64.powi(-8) * w.abs() + 1e-6 * scale
                })
                .take(5)
                .map(|(i, (g, w))| format!("[{i}] got {g} want {w}"))
                .collect();
            assert!(bad.is_empty(), "{what}: mismatches beyond one bf16 rounding: {}", bad.join(", "));
        }
        Bound::Tensor(rel) => {
            let err = got
                .iter()
                .zip(want)
                .map(|(g, w)| if g.is_nan() { f64::INFINITY } else { (g - w).abs() })
                .fold(0.0, f64::max)
                / scale;
            println!("{what}: max error / max |ref| = {err:.2e} (bound {rel:.0e})");
            assert!(err <= rel, "{what}: max error {err:.3e} of the largest magnitude, bound {rel:e}");
        }
    }
}

/// Whether every element of an activation buffer is a bf16 value (the storage really is bf16).
fn all_bf16<B: Backend>(be: &B, b: &B::Buf) -> bool {
    down(be, b).iter().all(|&x| x.is_nan() || bf(x) == x)
}

/// A GPU backend with bf16 storage on device `dev`, fused products on or off.
macro_rules! with_gpu {
    ($dev:expr, $fused:expr, |$be:ident| $body:block) => {{
        match $dev {
            Dev::Emu => {
                let emu = nli_bert::backend::gpu::emu::Emu::new().expect("emulator").with_fused_gemms($fused);
                let $be = Gpu::new_bf16(emu).with_bf16_storage(true);
                let r = $body;
                $be.check().expect("no device error");
                r
            }
            Dev::Cuda => {
                let dev = nli_bert::backend::gpu::cuda::Cuda::new(0, &nli_bert::data::hub::cache_dir())
                    .expect("Cuda::new(0)");
                let $be = Gpu::new_bf16(dev).with_bf16_storage(true).with_fused_gemms($fused);
                let r = $body;
                $be.check().expect("no device error");
                r
            }
        }
    }};
}

/// Runs an op body on `Cpu<f64>` and on the bf16-storage GPU and compares the outputs, each with
/// its bound.
macro_rules! compare {
    ($dev:expr, $fused:expr, |$be:ident| $body:block) => {{
        let want = {
            let $be = cpu();
            $body
        };
        let got = with_gpu!($dev, $fused, |$be| { $body });
        assert_eq!(want.len(), got.len());
        for ((name, w, bound), (_, g, _)) in want.iter().zip(&got) {
            check(&format!("{:?} bf16 storage vs cpu f64: {name}", $dev), g, w, *bound);
        }
    }};
}

fn batch<B: Backend>(be: &B, lens: &[usize], v: usize, seed: u64) -> DeviceBatch<B> {
    common::device_batch(be, lens, v, &mut HostRng::new(seed, 0), common::Labels::AfterAll)
}

/// Lengths (1, a max-length sequence, odd sizes), C, F, V, P.
fn shapes() -> Vec<(Vec<usize>, usize, usize, usize, usize)> {
    let mut rng = HostRng::new(41, 3);
    let random: Vec<usize> = (0..9).map(|_| 1 + rng.below(20) as usize).collect();
    vec![(vec![3, 1, 8, 5], 8, 12, 11, 8), (random, 40, 70, 37, 21), (vec![30; 20], 33, 50, 50, 30)]
}

fn embedding(dev: Dev) {
    for (si, (lens, c, _, v, p)) in shapes().into_iter().enumerate() {
        let mut rng = HostRng::new(si as u64, 11);
        let t: usize = lens.iter().sum();
        let (wte, wse, wpe) = (randn(&mut rng, v * c), randn(&mut rng, 2 * c), randn(&mut rng, p * c));
        let (dout, base) = (rb(&randn(&mut rng, t * c)), randn(&mut rng, v.max(p) * c));
        compare!(dev, true, |be| {
            let bt = batch(&be, &lens, v, 9 + si as u64);
            let (wte_b, wse_b, wpe_b, dout_b) =
                (up(&be, &wte), up(&be, &wse), up(&be, &wpe), act(&be, &dout));
            let mut out = be.alloc_act(t * c).unwrap();
            be.embedding_forward(
                be.view_mut(&mut out),
                &bt,
                be.view(&wte_b),
                be.view(&wse_b),
                be.view(&wpe_b),
                c,
            );
            let (mut dwte, mut dwse, mut dwpe) =
                (up(&be, &base[..v * c]), up(&be, &base[..2 * c]), up(&be, &base[..p * c]));
            let (a, b, d) = (be.view_mut(&mut dwte), be.view_mut(&mut dwse), Some(be.view_mut(&mut dwpe)));
            be.embedding_backward(a, b, d, be.view(&dout_b), &bt, c);
            vec![
                (format!("shape {si} embedding_forward"), down(&be, &out), Bound::Elementwise),
                (format!("shape {si} embedding dwte"), down(&be, &dwte), Bound::Tensor(1e-6)),
                (format!("shape {si} embedding dwse"), down(&be, &dwse), Bound::Tensor(1e-6)),
                (format!("shape {si} embedding dwpe"), down(&be, &dwpe), Bound::Tensor(1e-6)),
            ]
        });
    }
}

#[test]
fn embedding_emu_bf16_storage_matches_cpu_f64() {
    embedding(Dev::Emu);
}

/// The Linear ops on bf16 activations: products with bias (fused epilogue or the plain product +
/// `bias_forward_bf16`), the weight's bf16 copy kept by [`Backend::keep_bf16_copy`] or converted
/// per product, the backward with bias gradient (BGRADB or `colsum_partial_bf16`), dinp
/// overwritten and accumulated, and the FFN pair (ReLU fused with its mask / GELU separate).
fn matmul(dev: Dev, fused: bool) {
    for (si, (lens, c, f, _, _)) in shapes().into_iter().enumerate() {
        let mut rng = HostRng::new(si as u64, 12);
        let n: usize = lens.iter().sum();
        let (ic, oc) = (c, f);
        let x = rb(&randn(&mut rng, n * ic));
        let w = rb(&randn(&mut rng, oc * ic));
        let b = randn(&mut rng, oc);
        let dy = rb(&randn(&mut rng, n * oc));
        let dx0 = rb(&randn(&mut rng, n * ic));
        let (dw0, db0) = (randn(&mut rng, oc * ic), randn(&mut rng, oc));
        let w2 = rb(&randn(&mut rng, ic * oc)); // the FFN's second Linear, (ic, oc)
        let dz = rb(&randn(&mut rng, n * ic));
        for (copy, accumulate) in [(true, false), (false, true)] {
            for ffn_act in [Activation::Relu, Activation::Gelu] {
                compare!(dev, fused, |be| {
                    let (xb, bb, dyb) = (act(&be, &x), up(&be, &b), act(&be, &dy));
                    let (mut wb, mut w2b) = (up(&be, &w), up(&be, &w2));
                    if copy {
                        be.keep_bf16_copy(&mut wb).unwrap();
                        be.keep_bf16_copy(&mut w2b).unwrap();
                    }
                    let mut y = act(&be, &vec![f64::NAN; n * oc]); // beta = 0 must not read C
                    be.matmul_forward(
                        be.view_mut(&mut y),
                        be.view(&xb),
                        be.view(&wb),
                        Some(be.view(&bb)),
                        n,
                        ic,
                        oc,
                    );
                    let (mut dx, mut dw, mut db) = (act(&be, &dx0), up(&be, &dw0), up(&be, &db0));
                    be.matmul_backward(
                        Some(be.view_mut(&mut dx)),
                        accumulate,
                        be.view_mut(&mut dw),
                        Some(be.view_mut(&mut db)),
                        be.view(&dyb),
                        be.view(&xb),
                        be.view(&wb),
                        n,
                        ic,
                        oc,
                    );
                    // FFN: h = act(x·Wᵀ + b), z = h·W2ᵀ; backward from dz through W2 and act.
                    let (mut pre, mut h) = (be.alloc_act(n * oc).unwrap(), be.alloc_act(n * oc).unwrap());
                    be.matmul_act_forward(
                        be.view_mut(&mut pre),
                        be.view_mut(&mut h),
                        be.view(&xb),
                        be.view(&wb),
                        Some(be.view(&bb)),
                        n,
                        ic,
                        oc,
                        ffn_act,
                    );
                    let dzb = act(&be, &dz);
                    let (mut dpre, mut dact) = (be.alloc_act(n * oc).unwrap(), be.alloc_act(n * oc).unwrap());
                    let (mut dw2, mut db2) = (up(&be, &vec![0.0; ic * oc]), up(&be, &vec![0.0; ic]));
                    be.matmul_backward_act(
                        be.view_mut(&mut dpre),
                        be.view_mut(&mut dact),
                        be.view_mut(&mut dw2),
                        Some(be.view_mut(&mut db2)),
                        be.view(&dzb),
                        be.view(&h),
                        be.view(&pre),
                        be.view(&w2b),
                        n,
                        oc,
                        ic,
                        ffn_act,
                    );
                    let tag = format!("shape {si} copy {copy} acc {accumulate} {ffn_act:?} fused {fused}");
                    vec![
                        (format!("{tag} matmul_forward"), down(&be, &y), Bound::Tensor(8e-3)),
                        (format!("{tag} matmul_backward dinp"), down(&be, &dx), Bound::Tensor(8e-3)),
                        (format!("{tag} matmul_backward dweight"), down(&be, &dw), Bound::Tensor(1e-5)),
                        (format!("{tag} matmul_backward dbias"), down(&be, &db), Bound::Tensor(1e-5)),
                        (format!("{tag} matmul_act_forward out"), down(&be, &h), Bound::Tensor(8e-3)),
                        (format!("{tag} matmul_backward_act dinp"), down(&be, &dpre), Bound::Tensor(1.5e-2)),
                        (format!("{tag} matmul_backward_act dweight"), down(&be, &dw2), Bound::Tensor(8e-3)),
                        (format!("{tag} matmul_backward_act dbias"), down(&be, &db2), Bound::Tensor(1e-5)),
                    ]
                });
            }
        }
    }
}

#[test]
fn matmul_emu_bf16_storage_matches_cpu_f64() {
    matmul(Dev::Emu, true);
}

#[test]
fn matmul_emu_bf16_storage_without_fused_products_matches_cpu_f64() {
    matmul(Dev::Emu, false);
}

fn elementwise(dev: Dev) {
    for (si, (lens, c, _, v, _)) in shapes().into_iter().enumerate() {
        let mut rng = HostRng::new(si as u64, 13);
        let (t, nb) = (lens.iter().sum::<usize>(), lens.len());
        let x: Vec<f64> = rb(&randn(&mut rng, t * c).iter().map(|v| 3.0 * v).collect::<Vec<_>>());
        let dy = rb(&randn(&mut rng, t * c));
        let dcls = randn(&mut rng, nb * c);
        for act_fn in [Activation::Relu, Activation::Gelu, Activation::GeluTanh, Activation::Tanh] {
            let drop = Dropout::new(0.1, 77 + si as u64, 3, 2);
            compare!(dev, true, |be| {
                let (xb, dyb) = (act(&be, &x), act(&be, &dy));
                let mut y = be.alloc_act(t * c).unwrap();
                be.activation_forward(be.view_mut(&mut y), be.view(&xb), act_fn);
                // the backward from the CPU's own y would differ by y's rounding: feed both the
                // same, rounded y
                let yr = act(&be, &rb(&down(&be, &y)));
                let mut dx = be.alloc_act(t * c).unwrap();
                be.activation_backward(
                    be.view_mut(&mut dx),
                    be.view(&dyb),
                    be.view(&xb),
                    be.view(&yr),
                    act_fn,
                );
                let mut d = be.alloc_act(t * c).unwrap();
                be.dropout_forward(be.view_mut(&mut d), be.view(&xb), drop);
                let mut dd = be.alloc_act(t * c).unwrap();
                be.dropout_backward(be.view_mut(&mut dd), be.view(&dyb), drop);
                let bt = batch(&be, &lens, v, 3);
                let mut cls = be.alloc(nb * c).unwrap();
                be.cls_forward(be.view_mut(&mut cls), be.view(&xb), &bt, c);
                let dclsb = up(&be, &dcls);
                let mut dxc = act(&be, &x); // overwritten
                be.cls_backward(be.view_mut(&mut dxc), be.view(&dclsb), &bt, c);
                let tag = format!("shape {si} {act_fn:?}");
                vec![
                    (format!("{tag} activation_forward"), down(&be, &y), Bound::Elementwise),
                    (format!("{tag} activation_backward"), down(&be, &dx), Bound::Elementwise),
                    (format!("{tag} dropout_forward"), down(&be, &d), Bound::Elementwise),
                    (format!("{tag} dropout_backward"), down(&be, &dd), Bound::Elementwise),
                    (format!("{tag} cls_forward"), down(&be, &cls), Bound::Tensor(0.0)),
                    (format!("{tag} cls_backward"), down(&be, &dxc), Bound::Elementwise),
                ]
            });
        }
    }
}

#[test]
fn activation_dropout_cls_emu_bf16_storage_match_cpu_f64() {
    elementwise(Dev::Emu);
}

/// LayerNorm on bf16 storage keeps the pre-norm sum as bf16 and normalises the stored sum, so
/// the reference (exact sum) differs by that rounding as well: bounds 1e-2 of each tensor's scale
/// (largest seen 4.3e-3).
fn layernorm(dev: Dev) {
    for (si, (lens, c, _, _, _)) in shapes().into_iter().enumerate() {
        let mut rng = HostRng::new(si as u64, 14);
        let t: usize = lens.iter().sum();
        let (res, sub, dy) =
            (rb(&randn(&mut rng, t * c)), rb(&randn(&mut rng, t * c)), rb(&randn(&mut rng, t * c)));
        let w: Vec<f64> = randn(&mut rng, c).iter().map(|x| 1.0 + 0.3 * x).collect();
        let b = randn(&mut rng, c);
        let (dw0, db0) = (randn(&mut rng, c), randn(&mut rng, c));
        for (with_sub, p) in [(true, 0.0), (true, 0.2), (false, 0.0)] {
            let drop = Dropout::new(p, 5, 3, 1);
            compare!(dev, true, |be| {
                let (rbuf, sbuf, dyb, wb, bb) =
                    (act(&be, &res), act(&be, &sub), act(&be, &dy), up(&be, &w), up(&be, &b));
                let (mut out, mut sum) = (be.alloc_act(t * c).unwrap(), be.alloc_act(t * c).unwrap());
                let (mut mean, mut rstd) = (be.alloc(t).unwrap(), be.alloc(t).unwrap());
                be.layernorm_forward(
                    be.view_mut(&mut out),
                    be.view_mut(&mut sum),
                    be.view_mut(&mut mean),
                    be.view_mut(&mut rstd),
                    be.view(&rbuf),
                    with_sub.then(|| be.view(&sbuf)),
                    be.view(&wb),
                    be.view(&bb),
                    1e-5,
                    drop,
                    t,
                    c,
                );
                let (mut dres, mut dsub) = (be.alloc_act(t * c).unwrap(), be.alloc_act(t * c).unwrap());
                let (mut dw, mut db) = (up(&be, &dw0), up(&be, &db0));
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
                    (format!("{tag} layernorm_forward out"), down(&be, &out), Bound::Tensor(1e-2)),
                    (format!("{tag} layernorm_forward sum"), down(&be, &sum), Bound::Elementwise),
                    (format!("{tag} layernorm_forward mean"), down(&be, &mean), Bound::Tensor(1e-2)),
                    (format!("{tag} layernorm_forward rstd"), down(&be, &rstd), Bound::Tensor(1e-2)),
                    (format!("{tag} layernorm_backward dres"), down(&be, &dres), Bound::Tensor(1e-2)),
                    (format!("{tag} layernorm_backward dsub"), down(&be, &dsub), Bound::Tensor(1e-2)),
                    (format!("{tag} layernorm_backward dweight"), down(&be, &dw), Bound::Tensor(1e-2)),
                    (format!("{tag} layernorm_backward dbias"), down(&be, &db), Bound::Tensor(1e-5)),
                ]
            });
        }
    }
}

#[test]
fn layernorm_emu_bf16_storage_matches_cpu_f64() {
    layernorm(Dev::Emu);
}

/// Heads wider than the flash kernels' 64 (hs 80) run the f32 kernels on widened copies of the
/// bf16 activations; the outputs are rounded once.
fn classic_attention(dev: Dev) {
    let (lens, nh, c) = (vec![5usize, 1, 17, 9], 2usize, 160usize);
    let t: usize = lens.iter().sum();
    let mut rng = HostRng::new(3, 15);
    let (qkv, dout) = (rb(&randn(&mut rng, t * 3 * c)), rb(&randn(&mut rng, t * c)));
    let drop = Dropout::new(0.1, 9, 2, 4);
    compare!(dev, true, |be| {
        let bt = batch(&be, &lens, 3, 1);
        let (q, d) = (act(&be, &qkv), act(&be, &dout));
        let mut out = be.alloc_act(t * c).unwrap();
        let mut att = be.alloc(be.attention_saved_len(&bt.layout, nh, c)).unwrap();
        be.attention_forward(be.view_mut(&mut out), be.view_mut(&mut att), be.view(&q), &bt, nh, c, drop);
        let mut dqkv = be.alloc_act(t * 3 * c).unwrap();
        let (o, a) = (be.view(&out), be.view(&att));
        be.attention_backward(be.view_mut(&mut dqkv), be.view(&d), o, a, be.view(&q), &bt, nh, c, drop);
        vec![
            ("classic attention out".to_string(), down(&be, &out), Bound::Elementwise),
            ("classic attention dqkv".to_string(), down(&be, &dqkv), Bound::Tensor(8e-3)),
        ]
    });
}

#[test]
fn classic_attention_emu_bf16_storage_matches_cpu_f64() {
    classic_attention(Dev::Emu);
}

#[test]
fn bf16_storage_really_stores_bf16_and_keeps_the_weight_copy() {
    let be = Gpu::new_bf16(nli_bert::backend::gpu::emu::Emu::new().expect("emulator"));
    assert!(be.uses_bf16_storage(), "bf16 storage is the default of the bf16 mode");
    let x = randn(&mut HostRng::new(1, 1), 100);
    let a = act(&be, &x);
    assert!(be.view(&a).is_bf16(), "an activation buffer is bf16");
    assert_eq!(down(&be, &a), rb(&x), "upload_act rounds to nearest even, download widens exactly");
    assert!(all_bf16(&be, &a));
    // Adam writes the parameters and their bf16 copy in one pass: after a step the copy is the
    // new parameters rounded (checked through a product, which reads the copy).
    let (n, ic, oc) = (3usize, 4usize, 5usize);
    let w0 = randn(&mut HostRng::new(2, 2), oc * ic);
    let mut w = up(&be, &w0);
    be.keep_bf16_copy(&mut w).unwrap();
    let g = up(&be, &randn(&mut HostRng::new(3, 3), oc * ic));
    let (mut m, mut v) = (be.alloc(oc * ic).unwrap(), be.alloc(oc * ic).unwrap());
    let step = nli_bert::backend::AdamStep {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        t: 1,
    };
    be.adam_update(be.view_mut(&mut w), be.view(&g), be.view_mut(&mut m), be.view_mut(&mut v), &step);
    let w_new = down(&be, &w);
    let xin = rb(&randn(&mut HostRng::new(4, 4), n * ic));
    let xb = act(&be, &xin);
    let mut y = be.alloc_act(n * oc).unwrap();
    be.matmul_forward(be.view_mut(&mut y), be.view(&xb), be.view(&w), None, n, ic, oc);
    be.check().unwrap();
    let product = |w: &[f64]| -> Vec<f64> {
        let wr = rb(w);
        (0..n * oc)
            .map(|e| {
                let (i, j) = (e / oc, e % oc);
                bf((0..ic).map(|k| xin[i * ic + k] * wr[j * ic + k]).sum::<f64>())
            })
            .collect()
    };
    let got = down(&be, &y);
    check(
        "product after an Adam step (reads the updated bf16 copy)",
        &got,
        &product(&w_new),
        Bound::Tensor(8e-3),
    );
    // A stale copy (the weights before the step) would fail that bound.
    let stale = product(&w0);
    let scale = stale.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = got.iter().zip(&stale).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(diff > 5e-2 * scale, "the step must have moved the product ({diff} of {scale})");
}

#[test]
fn cuda_bf16_storage_ops_match_cpu_f64() {
    if !common::have_cuda("cuda_bf16_storage_ops_match_cpu_f64") {
        return;
    }
    embedding(Dev::Cuda);
    matmul(Dev::Cuda, true);
    matmul(Dev::Cuda, false);
    elementwise(Dev::Cuda);
    layernorm(Dev::Cuda);
    classic_attention(Dev::Cuda);
}
