//! Every CPU op checked against first principles, through the public API only:
//! - finite-difference gradient checks in f64 of every `<op>_backward` (central differences of
//!   the scalar objective L = Σ r ⊙ out with a random r), dropout on where the op has it;
//! - matmul against a naive triple loop, attention against d2l's padded `-1e6`-masked softmax;
//! - `Cpu<f32>` against `Cpu<f64>` on every op;
//! - Adam/AdamW against a hand-written re-statement of PyTorch's formula and hand-computed values.
//!
//! Tolerances: `|a − b| <= atol + rtol·|ref|`; a failure prints the first mismatches with their
//! index.

use nli_bert::backend::cpu::Cpu;
use nli_bert::backend::{Activation, AdamStep, Backend, BatchLayout, DeviceBatch};
use nli_bert::float::Float;
use nli_bert::rng::{Dropout, HostRng};

// ---- helpers ---------------------------------------------------------------------------------

/// Asserts `|got − want| <= atol + rtol·|want|` element-wise, printing the first mismatches.
fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    // Written so that a NaN anywhere counts as a mismatch.
    let within = |i: usize| (got[i] - want[i]).abs() <= atol + rtol * want[i].abs();
    let bad: Vec<usize> = (0..got.len()).filter(|&i| !within(i)).collect();
    if !bad.is_empty() {
        let mut msg = format!(
            "{what}: {} of {} elements differ (atol {atol:e}, rtol {rtol:e})\n",
            bad.len(),
            got.len()
        );
        for &i in bad.iter().take(8) {
            msg +=
                &format!("  [{i}] got {:.12e} want {:.12e} diff {:.3e}\n", got[i], want[i], got[i] - want[i]);
        }
        panic!("{msg}");
    }
}

fn randn(rng: &mut HostRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// Uniform in ±[lo, hi] (keeps values away from 0, where ReLU has a kink).
fn away_from_zero(rng: &mut HostRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| (lo + (hi - lo) * rng.uniform()) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 }).collect()
}

fn to<F: Float>(x: &[f64]) -> Vec<F> {
    x.iter().map(|&v| <F as Float>::from_f64(v)).collect()
}

fn wide<F: Float>(x: &[F]) -> Vec<f64> {
    x.iter().map(|&v| Float::to_f64(v)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A packed batch of sequences with the given lengths, random tokens (< vocab), segments and
/// labels (< k), built by hand from a [`BatchLayout`].
fn batch<F: Float>(lens: &[usize], vocab: usize, k: usize, seed: u64) -> DeviceBatch<Cpu<F>> {
    let layout = BatchLayout::new(lens);
    let t = layout.t();
    let mut rng = HostRng::new(seed, 99);
    let tokens = (0..t).map(|_| rng.below(vocab as u64) as i32).collect();
    let segments = (0..t).map(|_| rng.below(2) as i32).collect();
    let positions = lens.iter().flat_map(|&l| 0..l as i32).collect();
    let labels: Vec<i32> = (0..lens.len()).map(|_| rng.below(k as u64) as i32).collect();
    DeviceBatch {
        cu_seqlens: layout.cu_seqlens.iter().map(|&x| x as i32).collect(),
        att_offsets: layout.att_offsets.iter().map(|&x| x as i32).collect(),
        layout,
        tokens,
        segments,
        positions,
        labels: labels.clone(),
        labels_host: labels,
    }
}

const H: f64 = 1e-6;
const FD_ATOL: f64 = 1e-9;
const FD_RTOL: f64 = 1e-7;

/// Compares `analytic[a]` with central differences of L(xs) = Σ r ⊙ f(xs) with respect to every
/// element of `xs[a]`, for every input `a`.
fn fd_check(
    op: &str,
    names: &[&str],
    xs: &[Vec<f64>],
    analytic: &[Vec<f64>],
    r: &[f64],
    f: impl Fn(&[Vec<f64>]) -> Vec<f64>,
) {
    assert_eq!(xs.len(), analytic.len());
    let obj = |x: &[Vec<f64>]| dot(&f(x), r);
    let mut x = xs.to_vec();
    for a in 0..xs.len() {
        let mut num = vec![0.0; xs[a].len()];
        for i in 0..xs[a].len() {
            let x0 = x[a][i];
            x[a][i] = x0 + H;
            let lp = obj(&x);
            x[a][i] = x0 - H;
            let lm = obj(&x);
            x[a][i] = x0;
            num[i] = (lp - lm) / (2.0 * H);
        }
        assert_close(&format!("{op}: d{}", names[a]), &analytic[a], &num, FD_ATOL, FD_RTOL);
    }
}

fn cpu64() -> Cpu<f64> {
    Cpu::new(2).expect("thread pool")
}

/// The accumulated part of a gradient buffer that started at `before`.
fn added(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

const DROP: f64 = 0.3;
fn dropout(site: u32) -> Dropout {
    Dropout::new(DROP, 1234, 5, site)
}

// ---- gradient checks -------------------------------------------------------------------------

#[test]
fn embedding_backward_matches_finite_differences() {
    let cpu = cpu64();
    let (c, v, p) = (5, 11, 8);
    let bt = batch::<f64>(&[1, 3, 5], v, 3, 1);
    let t = bt.layout.t();
    let mut rng = HostRng::new(1, 1);
    let xs = vec![randn(&mut rng, v * c), randn(&mut rng, 2 * c), randn(&mut rng, p * c)];
    let r = randn(&mut rng, t * c);
    let fwd = |x: &[Vec<f64>]| {
        let mut out = vec![f64::NAN; t * c];
        cpu.embedding_forward(&mut out, &bt, &x[0], &x[1], &x[2], c);
        out
    };
    let g0: Vec<Vec<f64>> = xs.iter().map(|x| randn(&mut rng, x.len())).collect();
    let mut g = g0.clone();
    {
        let [dwte, dwse, dwpe] = &mut g[..] else { unreachable!() };
        cpu.embedding_backward(dwte, dwse, Some(dwpe), &r, &bt, c);
    }
    let grads: Vec<Vec<f64>> = g.iter().zip(&g0).map(|(a, b)| added(a, b)).collect();
    fd_check("embedding", &["wte", "wse", "wpe"], &xs, &grads, &r, fwd);
    // Frozen positional table: the other two still get their gradients.
    let mut g2 = g0.clone();
    {
        let [dwte, dwse, _] = &mut g2[..] else { unreachable!() };
        cpu.embedding_backward(dwte, dwse, None, &r, &bt, c);
    }
    assert_eq!(g2[0], g[0]);
    assert_eq!(g2[1], g[1]);
}

fn check_matmul_grads(n: usize, ic: usize, oc: usize, with_bias: bool, accumulate: bool) {
    let cpu = cpu64();
    let mut rng = HostRng::new((n * 1000 + ic * 10 + oc) as u64, 2);
    let mut xs = vec![randn(&mut rng, n * ic), randn(&mut rng, oc * ic)];
    if with_bias {
        xs.push(randn(&mut rng, oc));
    }
    let r = randn(&mut rng, n * oc);
    let fwd = |x: &[Vec<f64>]| {
        let mut out = vec![f64::NAN; n * oc];
        cpu.matmul_forward(&mut out, &x[0], &x[1], x.get(2).map(|b| &b[..]), n, ic, oc);
        out
    };
    let dinp0 = if accumulate { randn(&mut rng, n * ic) } else { vec![f64::NAN; n * ic] };
    let (dw0, db0) = (randn(&mut rng, oc * ic), randn(&mut rng, oc));
    let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
    cpu.matmul_backward(
        Some(&mut dinp),
        accumulate,
        &mut dw,
        if with_bias { Some(&mut db) } else { None },
        &r,
        &xs[0],
        &xs[1],
        n,
        ic,
        oc,
    );
    let dinp = if accumulate { added(&dinp, &dinp0) } else { dinp };
    let mut grads = vec![dinp, added(&dw, &dw0)];
    if with_bias {
        grads.push(added(&db, &db0));
    } else {
        assert_eq!(db, db0, "dbias must be untouched without a bias");
    }
    let op = format!("matmul {n}x{ic}x{oc} bias={with_bias} accumulate={accumulate}");
    fd_check(&op, &["inp", "weight", "bias"], &xs, &grads, &r, fwd);
}

#[test]
fn matmul_backward_matches_finite_differences() {
    for accumulate in [false, true] {
        check_matmul_grads(7, 13, 5, true, accumulate);
        check_matmul_grads(3, 4, 6, false, accumulate);
    }
    // Without dinp (the first layer) the parameter grads are still produced.
    let cpu = cpu64();
    let (mut dw, mut db) = (vec![0.0; 6], vec![0.0; 2]);
    cpu.matmul_backward(
        None,
        false,
        &mut dw,
        Some(&mut db),
        &[1.0, 2.0],
        &[1.0, 2.0, 3.0],
        &[0.0; 6],
        1,
        3,
        2,
    );
    assert_eq!(dw, [1.0, 2.0, 3.0, 2.0, 4.0, 6.0]);
    assert_eq!(db, [1.0, 2.0]);
}

fn check_attention_grads(lens: &[usize], nh: usize, c: usize, drop: Dropout) {
    let cpu = cpu64();
    let bt = batch::<f64>(lens, 5, 3, 3);
    let t = bt.layout.t();
    let mut rng = HostRng::new(3, nh as u32);
    let xs = vec![randn(&mut rng, t * 3 * c)];
    let r = randn(&mut rng, t * c);
    let fwd = |x: &[Vec<f64>]| {
        let mut out = vec![f64::NAN; t * c];
        let mut att = vec![f64::NAN; bt.layout.att_len(nh)];
        cpu.attention_forward(&mut out, &mut att, &x[0], &bt, nh, c, drop);
        out
    };
    let mut att = vec![0.0; bt.layout.att_len(nh)];
    let mut out = vec![0.0; t * c];
    cpu.attention_forward(&mut out, &mut att, &xs[0], &bt, nh, c, drop);
    let mut dqkv = vec![f64::NAN; t * 3 * c];
    cpu.attention_backward(&mut dqkv, &r, &out, &att, &xs[0], &bt, nh, c, drop);
    fd_check(&format!("attention lens={lens:?} nh={nh} p={}", drop.p), &["qkv"], &xs, &[dqkv], &r, fwd);
}

#[test]
fn attention_backward_matches_finite_differences() {
    check_attention_grads(&[1, 3, 5, 2], 2, 8, dropout(0));
    check_attention_grads(&[3, 1, 6], 4, 8, dropout(3));
    check_attention_grads(&[4, 1], 2, 6, Dropout::OFF);
}

/// d2l's attention on a padded batch: scores (B,NH,Tmax,Tmax), keys >= len set to -1e6, softmax,
/// dropout, times V. Returns (out (T,C) for the real query rows, att (NH·Σ len²)).
fn naive_padded_attention(
    qkv: &[f64],
    lens: &[usize],
    nh: usize,
    c: usize,
    drop: Dropout,
) -> (Vec<f64>, Vec<f64>) {
    let layout = BatchLayout::new(lens);
    let (t, hs, tmax) = (layout.t(), c / nh, lens.iter().copied().max().unwrap_or(0));
    let mut out = vec![0.0; t * c];
    let mut att = vec![0.0; layout.att_len(nh)];
    let at = |b: usize, i: usize, col: usize| (layout.cu_seqlens[b] + i) * 3 * c + col;
    for (b, &len) in lens.iter().enumerate() {
        // Padded Q, K, V: rows >= len are zeros, like d2l's padded tokens' projections would be
        // arbitrary (they never matter for real queries).
        let get = |i: usize, col: usize| if i < len { qkv[at(b, i, col)] } else { 0.0 };
        for h in 0..nh {
            for i in 0..tmax {
                let mut s: Vec<f64> = (0..tmax)
                    .map(|j| {
                        (0..hs).map(|d| get(i, h * hs + d) * get(j, c + h * hs + d)).sum::<f64>()
                            / (hs as f64).sqrt()
                    })
                    .collect();
                for (j, s) in s.iter_mut().enumerate() {
                    if j >= len {
                        *s = -1e6;
                    }
                }
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                if i >= len {
                    continue;
                }
                let base = nh * layout.att_offsets[b] + h * len * len + i * len;
                for j in 0..tmax {
                    let p = e[j] / z;
                    if j >= len {
                        assert_eq!(p, 0.0, "a masked key must get exactly zero probability");
                        continue;
                    }
                    att[base + j] = p;
                    let f = drop.factor((base + j) as u64);
                    for d in 0..hs {
                        out[(layout.cu_seqlens[b] + i) * c + h * hs + d] +=
                            p * f * get(j, 2 * c + h * hs + d);
                    }
                }
            }
        }
    }
    (out, att)
}

#[test]
fn attention_forward_matches_d2l_padded_masking() {
    let cpu = cpu64();
    for (lens, nh, c, drop) in [
        (&[1usize, 3, 7, 2][..], 2, 8, Dropout::OFF),
        (&[5, 1, 3][..], 4, 12, dropout(9)),
        (&[9][..], 3, 9, dropout(1)),
    ] {
        let bt = batch::<f64>(lens, 5, 3, 4);
        let t = bt.layout.t();
        let mut rng = HostRng::new(4, c as u32);
        let qkv: Vec<f64> = randn(&mut rng, t * 3 * c).iter().map(|x| 2.0 * x).collect();
        let mut out = vec![f64::NAN; t * c];
        let mut att = vec![f64::NAN; bt.layout.att_len(nh)];
        cpu.attention_forward(&mut out, &mut att, &qkv, &bt, nh, c, drop);
        let (out_ref, att_ref) = naive_padded_attention(&qkv, lens, nh, c, drop);
        assert_close(&format!("attention att lens={lens:?}"), &att, &att_ref, 1e-14, 1e-12);
        assert_close(&format!("attention out lens={lens:?}"), &out, &out_ref, 1e-13, 1e-12);
    }
}

fn check_layernorm_grads(with_sub: bool) {
    let cpu = cpu64();
    let (t, c, eps) = (7, 6, 1e-5);
    let drop = dropout(1);
    let mut rng = HostRng::new(5, with_sub as u32);
    let res = randn(&mut rng, t * c);
    let sub = randn(&mut rng, t * c);
    let w: Vec<f64> = randn(&mut rng, c).iter().map(|x| 1.0 + 0.3 * x).collect();
    let b = randn(&mut rng, c);
    let r = randn(&mut rng, t * c);
    let xs = if with_sub { vec![res, w, b, sub] } else { vec![res, w, b] };
    let fwd = |x: &[Vec<f64>]| {
        let (mut out, mut sum, mut mean, mut rstd) =
            (vec![f64::NAN; t * c], vec![0.0; t * c], vec![0.0; t], vec![0.0; t]);
        cpu.layernorm_forward(
            &mut out,
            &mut sum,
            &mut mean,
            &mut rstd,
            &x[0],
            x.get(3).map(|s| &s[..]),
            &x[1],
            &x[2],
            eps,
            drop,
            t,
            c,
        );
        out
    };
    let (mut out, mut sum, mut mean, mut rstd) =
        (vec![0.0; t * c], vec![0.0; t * c], vec![0.0; t], vec![0.0; t]);
    cpu.layernorm_forward(
        &mut out,
        &mut sum,
        &mut mean,
        &mut rstd,
        &xs[0],
        xs.get(3).map(|s| &s[..]),
        &xs[1],
        &xs[2],
        eps,
        drop,
        t,
        c,
    );
    let (dw0, db0) = (randn(&mut rng, c), randn(&mut rng, c));
    let (mut dres, mut dsub, mut dw, mut db) =
        (vec![f64::NAN; t * c], vec![f64::NAN; t * c], dw0.clone(), db0.clone());
    cpu.layernorm_backward(
        &mut dres,
        if with_sub { Some(&mut dsub) } else { None },
        &mut dw,
        &mut db,
        &r,
        &sum,
        &mean,
        &rstd,
        &xs[1],
        drop,
        t,
        c,
    );
    let mut grads = vec![dres, added(&dw, &dw0), added(&db, &db0)];
    if with_sub {
        grads.push(dsub);
    }
    fd_check(&format!("layernorm sub={with_sub}"), &["res", "weight", "bias", "sub"], &xs, &grads, &r, fwd);
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    check_layernorm_grads(true);
    check_layernorm_grads(false);
}

#[test]
fn layernorm_forward_is_layernorm_with_biased_variance() {
    let cpu = cpu64();
    let (c, eps) = (4, 1e-5);
    let res = [1.0, 2.0, 3.0, 6.0];
    let (mut out, mut sum, mut mean, mut rstd) = (vec![0.0; c], vec![0.0; c], vec![0.0; 1], vec![0.0; 1]);
    let (w, b) = ([1.0, 2.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]);
    cpu.layernorm_forward(
        &mut out,
        &mut sum,
        &mut mean,
        &mut rstd,
        &res,
        None,
        &w,
        &b,
        eps,
        Dropout::OFF,
        1,
        c,
    );
    // mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
    let rs = 1.0 / (3.5f64 + eps).sqrt();
    assert_eq!(mean[0], 3.0);
    assert!((rstd[0] - rs).abs() < 1e-15);
    assert_close("layernorm", &out, &[-2.0 * rs, -2.0 * rs, 0.0, 3.0 * rs + 1.0], 1e-15, 1e-14);
}

#[test]
fn activation_backward_matches_finite_differences() {
    let cpu = cpu64();
    let n = 40;
    for act in [Activation::Relu, Activation::Gelu, Activation::GeluTanh, Activation::Tanh] {
        let mut rng = HostRng::new(6, act as u32);
        let xs = vec![away_from_zero(&mut rng, n, 0.01, 3.0)];
        let r = randn(&mut rng, n);
        let fwd = |x: &[Vec<f64>]| {
            let mut out = vec![f64::NAN; n];
            cpu.activation_forward(&mut out, &x[0], act);
            out
        };
        let out = fwd(&xs);
        let mut dinp = vec![f64::NAN; n];
        cpu.activation_backward(&mut dinp, &r, &xs[0], &out, act);
        fd_check(&format!("{act:?}"), &["inp"], &xs, &[dinp], &r, fwd);
    }
}

#[test]
fn activation_forward_known_values() {
    let cpu = cpu64();
    let x = [-1.0, 0.0, 0.5, 2.0];
    let mut out = [0.0; 4];
    cpu.activation_forward(&mut out, &x, Activation::Gelu);
    // torch.nn.functional.gelu(torch.tensor([-1., 0., .5, 2.], dtype=torch.float64))
    assert_close(
        "gelu",
        &out,
        &[-0.15865525393145707, 0.0, 0.34573123063700656, 1.9544997361036416],
        1e-15,
        1e-14,
    );
    cpu.activation_forward(&mut out, &x, Activation::GeluTanh);
    // gelu(approximate='tanh')
    assert_close(
        "gelu_tanh",
        &out,
        &[-0.15880800939172324, 0.0, 0.34571400982514394, 1.954597694087775],
        1e-15,
        1e-14,
    );
    cpu.activation_forward(&mut out, &x, Activation::Relu);
    assert_eq!(out, [0.0, 0.0, 0.5, 2.0]);
    // ReLU backward at exactly 0 is 0 (PyTorch's threshold_backward).
    let mut d = [0.0; 4];
    cpu.activation_backward(&mut d, &[1.0; 4], &x, &out, Activation::Relu);
    assert_eq!(d, [0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn classifier_cls_backward_matches_finite_differences() {
    let cpu = cpu64();
    let c = 3;
    let bt = batch::<f64>(&[2, 1, 4], 5, 3, 7);
    let (t, nb) = (bt.layout.t(), bt.layout.b());
    let mut rng = HostRng::new(7, 0);
    let xs = vec![randn(&mut rng, t * c)];
    let r = randn(&mut rng, nb * c);
    let fwd = |x: &[Vec<f64>]| {
        let mut out = vec![f64::NAN; nb * c];
        cpu.cls_forward(&mut out, &x[0], &bt, c);
        out
    };
    assert_eq!(fwd(&xs)[c..2 * c], xs[0][2 * c..3 * c]);
    let mut dx = vec![f64::NAN; t * c];
    cpu.cls_backward(&mut dx, &r, &bt, c);
    fd_check("cls", &["x"], &xs, &[dx], &r, fwd);
}

#[test]
fn activation_dropout_backward_matches_finite_differences() {
    let cpu = cpu64();
    let n = 50;
    let drop = dropout(1_000_000);
    let mut rng = HostRng::new(8, 0);
    let xs = vec![randn(&mut rng, n)];
    let r = randn(&mut rng, n);
    let fwd = |x: &[Vec<f64>]| {
        let mut out = vec![f64::NAN; n];
        cpu.dropout_forward(&mut out, &x[0], drop);
        out
    };
    let out = fwd(&xs);
    for (i, (&o, &x)) in out.iter().zip(&xs[0]).enumerate() {
        assert_eq!(o, x * drop.factor(i as u64), "element {i}");
    }
    assert!(out.iter().filter(|&&o| o == 0.0).count() > 5, "p = 0.3 must drop some of 50 elements");
    let mut dinp = vec![f64::NAN; n];
    cpu.dropout_backward(&mut dinp, &r, drop);
    fd_check("dropout", &["inp"], &xs, &[dinp], &r, fwd);
    let mut copy = vec![0.0; n];
    cpu.dropout_forward(&mut copy, &xs[0], Dropout::OFF);
    assert_eq!(copy, xs[0]);
}

#[test]
fn classifier_crossentropy_backward_matches_finite_differences() {
    let cpu = cpu64();
    let (nb, k, scale) = (5, 3, 0.37);
    let bt = batch::<f64>(&[1; 5], 5, k, 9);
    let mut rng = HostRng::new(9, 0);
    let xs = vec![randn(&mut rng, nb * k).iter().map(|x| 3.0 * x).collect::<Vec<_>>()];
    let fwd = |x: &[Vec<f64>]| {
        let (mut losses, mut probs) = (vec![f64::NAN; nb], vec![f64::NAN; nb * k]);
        cpu.crossentropy_forward(&mut losses, &mut probs, &x[0], &bt, k);
        losses
    };
    let (mut losses, mut probs) = (vec![0.0; nb], vec![0.0; nb * k]);
    cpu.crossentropy_forward(&mut losses, &mut probs, &xs[0], &bt, k);
    for b in 0..nb {
        let row = &xs[0][b * k..(b + 1) * k];
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        let want = lse - row[bt.labels[b] as usize];
        assert!((losses[b] - want).abs() < 1e-14, "loss {b}: {} vs {want}", losses[b]);
    }
    let mut d = vec![f64::NAN; nb * k];
    cpu.crossentropy_backward(&mut d, &probs, &bt, k, scale);
    fd_check("crossentropy", &["logits"], &xs, &[d], &vec![scale; nb], fwd);
}

// ---- matmul against a naive triple loop ------------------------------------------------------

#[test]
fn matmul_matches_naive_triple_loop() {
    for threads in [1, 2] {
        let cpu = Cpu::<f64>::new(threads).expect("thread pool");
        // The last shape is large enough (n·ic·oc > 2^18) to take gemm's threaded path.
        for (n, ic, oc) in [(7, 13, 5), (33, 65, 17), (1, 1, 1), (70, 80, 61)] {
            let mut rng = HostRng::new(10, (n + ic + oc) as u32);
            let (x, w, b) = (randn(&mut rng, n * ic), randn(&mut rng, oc * ic), randn(&mut rng, oc));
            let dout = randn(&mut rng, n * oc);
            let mut out = vec![f64::NAN; n * oc];
            cpu.matmul_forward(&mut out, &x, &w, Some(&b), n, ic, oc);
            let mut want = vec![0.0; n * oc];
            for i in 0..n {
                for j in 0..oc {
                    let mut s = 0.0;
                    for k in 0..ic {
                        s += x[i * ic + k] * w[j * ic + k];
                    }
                    want[i * oc + j] = s + b[j];
                }
            }
            let shape = format!("{n}x{ic}x{oc} threads={threads}");
            assert_close(&format!("matmul_forward {shape}"), &out, &want, 1e-12, 1e-12);
            let (mut dinp, mut dw, mut db) = (vec![f64::NAN; n * ic], vec![0.5; oc * ic], vec![0.25; oc]);
            cpu.matmul_backward(Some(&mut dinp), false, &mut dw, Some(&mut db), &dout, &x, &w, n, ic, oc);
            let (mut dinp_ref, mut dw_ref, mut db_ref) =
                (vec![0.0; n * ic], vec![0.5; oc * ic], vec![0.25; oc]);
            for i in 0..n {
                for j in 0..oc {
                    let g = dout[i * oc + j];
                    db_ref[j] += g;
                    for k in 0..ic {
                        dinp_ref[i * ic + k] += g * w[j * ic + k];
                        dw_ref[j * ic + k] += g * x[i * ic + k];
                    }
                }
            }
            assert_close(&format!("matmul dinp {shape}"), &dinp, &dinp_ref, 1e-12, 1e-12);
            assert_close(&format!("matmul dweight {shape}"), &dw, &dw_ref, 1e-12, 1e-12);
            assert_close(&format!("matmul dbias {shape}"), &db, &db_ref, 1e-12, 1e-12);
        }
    }
}

// ---- f32 against f64 -------------------------------------------------------------------------

/// Runs every op forward and backward on `Cpu<F>` from the same f64 inputs (rounded to F) and
/// returns every output, widened to f64, by name.
fn run_all<F: Float>(inputs: &[Vec<f64>]) -> Vec<(String, Vec<f64>)> {
    let cpu = Cpu::<F>::new(2).expect("thread pool");
    let lens = [1, 3, 5, 8, 2];
    let (c, nh, ff, v, k) = (8, 2, 12, 11, 3);
    let bt = batch::<F>(&lens, v, k, 11);
    let (t, nb) = (bt.layout.t(), bt.layout.b());
    let x: Vec<Vec<F>> = inputs.iter().map(|x| to::<F>(x)).collect();
    let z = |n: usize| vec![F::zero(); n];
    let mut res: Vec<(String, Vec<f64>)> = Vec::new();
    let mut put = |name: &str, v: &[F]| res.push((name.to_string(), wide(v)));

    // embedding: wte (V,C), wse (2,C), wpe (P=8,C)
    let mut emb = z(t * c);
    cpu.embedding_forward(&mut emb, &bt, &x[0][..v * c], &x[1][..2 * c], &x[2][..8 * c], c);
    put("embedding_forward", &emb);
    let (mut dwte, mut dwse, mut dwpe) = (z(v * c), z(2 * c), z(8 * c));
    cpu.embedding_backward(&mut dwte, &mut dwse, Some(&mut dwpe), &x[3][..t * c], &bt, c);
    put("embedding_backward dwte", &dwte);
    put("embedding_backward dwpe", &dwpe);

    // matmul: inp (T,C) · W (F,C)ᵀ + b
    let mut h = z(t * ff);
    cpu.matmul_forward(&mut h, &x[3][..t * c], &x[4][..ff * c], Some(&x[5][..ff]), t, c, ff);
    put("matmul_forward", &h);
    let (mut dinp, mut dw, mut db) = (z(t * c), z(ff * c), z(ff));
    cpu.matmul_backward(
        Some(&mut dinp),
        false,
        &mut dw,
        Some(&mut db),
        &x[6][..t * ff],
        &x[3][..t * c],
        &x[4][..ff * c],
        t,
        c,
        ff,
    );
    put("matmul_backward dinp", &dinp);
    put("matmul_backward dweight", &dw);
    put("matmul_backward dbias", &db);

    // attention: qkv (T,3C)
    let drop = Dropout::new(0.1, 3, 2, 0);
    let (mut out, mut att) = (z(t * c), z(bt.layout.att_len(nh)));
    cpu.attention_forward(&mut out, &mut att, &x[7][..t * 3 * c], &bt, nh, c, drop);
    put("attention_forward out", &out);
    put("attention_forward att", &att);
    let mut dqkv = z(t * 3 * c);
    cpu.attention_backward(&mut dqkv, &x[3][..t * c], &out, &att, &x[7][..t * 3 * c], &bt, nh, c, drop);
    put("attention_backward", &dqkv);

    // layernorm: res (T,C), sub (T,C), weight/bias (C,)
    for with_sub in [true, false] {
        let sub = with_sub.then(|| &x[8][..t * c]);
        let (mut o, mut s, mut m, mut r) = (z(t * c), z(t * c), z(t), z(t));
        let drop = Dropout::new(0.2, 3, 2, 1);
        cpu.layernorm_forward(
            &mut o,
            &mut s,
            &mut m,
            &mut r,
            &x[3][..t * c],
            sub,
            &x[9][..c],
            &x[10][..c],
            1e-5,
            drop,
            t,
            c,
        );
        put(&format!("layernorm_forward sub={with_sub}"), &o);
        put(&format!("layernorm_forward rstd sub={with_sub}"), &r);
        let (mut dres, mut dsub, mut dw, mut db) = (z(t * c), z(t * c), z(c), z(c));
        let dsub_opt = if with_sub { Some(&mut dsub[..]) } else { None };
        cpu.layernorm_backward(
            &mut dres,
            dsub_opt,
            &mut dw,
            &mut db,
            &x[6][..t * c],
            &s,
            &m,
            &r,
            &x[9][..c],
            drop,
            t,
            c,
        );
        put(&format!("layernorm_backward dres sub={with_sub}"), &dres);
        put(&format!("layernorm_backward dsub sub={with_sub}"), &dsub);
        put(&format!("layernorm_backward dweight sub={with_sub}"), &dw);
        put(&format!("layernorm_backward dbias sub={with_sub}"), &db);
    }

    // activations over (T,F)
    for act in [Activation::Relu, Activation::Gelu, Activation::GeluTanh, Activation::Tanh] {
        let mut a = z(t * ff);
        cpu.activation_forward(&mut a, &h, act);
        put(&format!("activation_forward {act:?}"), &a);
        let mut d = z(t * ff);
        cpu.activation_backward(&mut d, &x[6][..t * ff], &h, &a, act);
        put(&format!("activation_backward {act:?}"), &d);
    }

    // <cls>, dropout, loss
    let mut cls = z(nb * c);
    cpu.cls_forward(&mut cls, &emb, &bt, c);
    put("cls_forward", &cls);
    let mut dx = z(t * c);
    cpu.cls_backward(&mut dx, &x[9][..nb * c], &bt, c);
    put("cls_backward", &dx);
    let drop = Dropout::new(0.5, 1, 1, 7);
    let mut dr = z(t * c);
    cpu.dropout_forward(&mut dr, &x[3][..t * c], drop);
    put("dropout_forward", &dr);
    cpu.dropout_backward(&mut dr, &x[6][..t * c], drop);
    put("dropout_backward", &dr);
    let (mut losses, mut probs, mut dlogits) = (z(nb), z(nb * k), z(nb * k));
    cpu.crossentropy_forward(&mut losses, &mut probs, &x[10][..nb * k], &bt, k);
    put("crossentropy_forward", &losses);
    put("crossentropy_forward probs", &probs);
    cpu.crossentropy_backward(&mut dlogits, &probs, &bt, k, 1.0 / nb as f64);
    put("crossentropy_backward", &dlogits);

    // adam: two steps on (T,C) parameters
    let (mut p, mut m, mut vv) = (x[3][..t * c].to_vec(), z(t * c), z(t * c));
    for step in 1..=2 {
        let s = AdamStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: step == 2,
            t: step,
        };
        cpu.adam_update(&mut p, &x[6][..t * c], &mut m, &mut vv, &s);
    }
    put("adam_update", &p);
    res
}

#[test]
fn f32_matches_f64_on_every_op() {
    let mut rng = HostRng::new(12, 0);
    let inputs: Vec<Vec<f64>> = (0..11).map(|_| randn(&mut rng, 1024)).collect();
    let r64 = run_all::<f64>(&inputs);
    let r32 = run_all::<f32>(&inputs);
    assert_eq!(r64.len(), r32.len());
    for ((name, a), (_, b)) in r32.iter().zip(&r64) {
        assert_close(&format!("f32 vs f64: {name}"), a, b, 1e-5, 1e-5);
    }
}

// ---- Adam -----------------------------------------------------------------------------------

/// PyTorch `_single_tensor_adam`, re-stated in f64, one element at a time.
fn adam_ref(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], s: &AdamStep) {
    let bc1 = 1.0 - s.beta1.powi(s.t as i32);
    let bc2 = 1.0 - s.beta2.powi(s.t as i32);
    let step_size = s.lr / bc1;
    for i in 0..p.len() {
        let mut gi = g[i];
        if s.weight_decay != 0.0 {
            if s.decoupled {
                p[i] *= 1.0 - s.lr * s.weight_decay;
            } else {
                gi += s.weight_decay * p[i];
            }
        }
        let w = 1.0 - s.beta1;
        m[i] = if w < 0.5 { m[i] + w * (gi - m[i]) } else { gi - (gi - m[i]) * (1.0 - w) };
        v[i] = v[i] * s.beta2 + (1.0 - s.beta2) * gi * gi;
        let denom = v[i].sqrt() / bc2.sqrt() + s.eps;
        p[i] += -step_size * m[i] / denom;
    }
}

fn step(t: u64, weight_decay: f64, decoupled: bool, beta1: f64) -> AdamStep {
    AdamStep { lr: 1e-3, beta1, beta2: 0.999, eps: 1e-8, weight_decay, decoupled, t }
}

#[test]
fn adam_matches_reference_for_three_steps() {
    for (wd, decoupled, beta1) in
        [(0.0, false, 0.9), (0.01, false, 0.9), (0.01, true, 0.9), (0.0, false, 0.3)]
    {
        let mut rng = HostRng::new(13, (wd * 100.0) as u32 + decoupled as u32);
        let n = 50_000; // several rayon chunks
        let p0 = randn(&mut rng, n);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut pr, mut mr, mut vr) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut p32, mut m32, mut v32) = (to::<f32>(&p0), vec![0f32; n], vec![0f32; n]);
        let (cpu, cpu32) = (cpu64(), Cpu::<f32>::new(2).expect("pool"));
        for t in 1..=3 {
            let g = randn(&mut rng, n);
            let s = step(t, wd, decoupled, beta1);
            cpu.adam_update(&mut p, &g, &mut m, &mut v, &s);
            cpu32.adam_update(&mut p32, &to::<f32>(&g), &mut m32, &mut v32, &s);
            adam_ref(&mut pr, &g, &mut mr, &mut vr, &s);
        }
        let what = format!("adam wd={wd} decoupled={decoupled} beta1={beta1}");
        assert_close(&format!("{what} p"), &p, &pr, 0.0, 1e-15);
        assert_close(&format!("{what} m"), &m, &mr, 0.0, 1e-15);
        assert_close(&format!("{what} v"), &v, &vr, 0.0, 1e-15);
        assert_close(&format!("{what} p f32"), &wide(&p32), &pr, 1e-6, 1e-6);
    }
}

#[test]
fn adam_known_values() {
    let cpu = cpu64();
    // One step from m = v = 0 with g = 0.5, lr = 0.1: m = 0.05, v = 0.00025, step_size = 1,
    // denom = √0.00025 / √0.001 + 1e-8 = 0.5 + 1e-8, p = 1 − 0.05 / 0.50000001 = 0.900000002.
    let s =
        AdamStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, t: 1 };
    let (mut p, mut m, mut v) = ([1.0], [0.0], [0.0]);
    cpu.adam_update(&mut p, &[0.5], &mut m, &mut v, &s);
    assert!((m[0] - 0.05).abs() < 1e-16 && (v[0] - 0.00025).abs() < 1e-18, "m {} v {}", m[0], v[0]);
    assert!((p[0] - 0.900000002).abs() < 1e-15, "p {}", p[0]);
    // AdamW, wd = 0.1: p is first scaled by 1 − 0.1·0.1 = 0.99, then the same update.
    let (mut p, mut m, mut v) = ([1.0], [0.0], [0.0]);
    cpu.adam_update(&mut p, &[0.5], &mut m, &mut v, &AdamStep { weight_decay: 0.1, decoupled: true, ..s });
    assert!((p[0] - 0.890000002).abs() < 1e-15, "AdamW p {}", p[0]);
    // Adam with L2, wd = 0.1: g = 0.5 + 0.1 = 0.6; m = 0.06, v = 0.00036, denom = 0.6 + 1e-8.
    let (mut p, mut m, mut v) = ([1.0], [0.0], [0.0]);
    cpu.adam_update(&mut p, &[0.5], &mut m, &mut v, &AdamStep { weight_decay: 0.1, ..s });
    assert!((m[0] - 0.06).abs() < 1e-16, "m {}", m[0]);
    assert!((p[0] - (1.0 - 0.06 / (0.6 + 1e-8))).abs() < 1e-15, "Adam L2 p {}", p[0]);
}

#[test]
fn adam_with_zero_grads_still_decays_moments() {
    let cpu = cpu64();
    let s =
        AdamStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, t: 2 };
    let (mut p, mut m, mut v) = ([1.0, -2.0], [1.0, -0.5], [1.0, 0.25]);
    cpu.adam_update(&mut p, &[0.0, 0.0], &mut m, &mut v, &s);
    assert_close("m", &m, &[0.9, -0.45], 1e-16, 1e-15);
    assert_close("v", &v, &[0.999, 0.24975], 1e-16, 1e-15);
    // p still moves along m: p − step_size·m / (√v / bc2 + eps).
    let (ss, bc2) = (s.step_size(), s.bias_correction2_sqrt());
    let want = [
        1.0 - ss * 0.9 / (0.999f64.sqrt() / bc2 + 1e-8),
        -2.0 + ss * 0.45 / (0.24975f64.sqrt() / bc2 + 1e-8),
    ];
    assert_close("p", &p, &want, 1e-15, 1e-14);
}
