//! Per-op benchmarks of the CPU backend (`Cpu<f32>`, all cores) at d2l bert.small shapes with a
//! batch of 64 sequences of 25 tokens: T = 1600, C = 256, NH = 4, F = 512.
//!
//! One criterion group per op family, ids `<op>/cpu`, throughput in bytes read + written.
//! Run: `cargo bench --bench ops` (add `-- <filter>` to pick groups).

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use nli_bert::backend::cpu::Cpu;
use nli_bert::backend::{Activation, AdamStep, Backend, BatchLayout, DeviceBatch};
use nli_bert::rng::{Dropout, HostRng};
use std::hint::black_box;
use std::time::Duration;

const SEQS: usize = 64;
const LEN: usize = 25;
const T: usize = SEQS * LEN;
const C: usize = 256;
const NH: usize = 4;
const FF: usize = 512;
const V: usize = 20256;
const P: usize = 512;
const K: usize = 3;
/// Bytes per f32.
const B4: u64 = 4;

fn rand(n: usize, stream: u32) -> Vec<f32> {
    let mut r = HostRng::new(42, stream);
    (0..n).map(|_| r.normal() as f32 * 0.5).collect()
}

fn batch() -> DeviceBatch<Cpu<f32>> {
    let layout = BatchLayout::new(&[LEN; SEQS]);
    let mut r = HostRng::new(7, 0);
    let tokens = (0..T).map(|_| r.below(V as u64) as i32).collect();
    let segments = (0..T).map(|i| ((i % LEN) >= LEN / 2) as i32).collect();
    let positions = (0..T).map(|i| (i % LEN) as i32).collect();
    let labels: Vec<i32> = (0..SEQS).map(|_| r.below(K as u64) as i32).collect();
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

fn drop(site: u32) -> Dropout {
    Dropout { p: 0.1, seed: 1, step: 1, site }
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    bytes: u64,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(bytes));
    g
}

fn bench_ops(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new(0).expect("thread pool");
    eprintln!("backend: {}", cpu.name());
    let bt = batch();
    let att_len = bt.layout.att_len(NH);

    // ---- embedding: (V,C) + (2,C) + (P,C) tables -> (T,C)
    let (wte, wse, wpe) = (rand(V * C, 1), rand(2 * C, 2), rand(P * C, 3));
    let mut emb = vec![0f32; T * C];
    let mut g = group(c, "embedding_forward", 4 * (T * C) as u64 * B4);
    g.bench_function("cpu", |b| b.iter(|| cpu.embedding_forward(&mut emb, &bt, &wte, &wse, &wpe, C)));
    g.finish();
    let (mut dwte, mut dwse, mut dwpe) = (vec![0f32; V * C], vec![0f32; 2 * C], vec![0f32; P * C]);
    let mut g = group(c, "embedding_backward", 7 * (T * C) as u64 * B4);
    g.bench_function("cpu", |b| {
        b.iter(|| cpu.embedding_backward(&mut dwte, &mut dwse, Some(&mut dwpe), &emb, &bt, C))
    });
    g.finish();

    // ---- matmul: the fused QKV projection (T,C)·(3C,C)ᵀ
    let (x, wqkv, bqkv) = (rand(T * C, 4), rand(3 * C * C, 5), rand(3 * C, 6));
    let mut qkv = vec![0f32; T * 3 * C];
    let mm_bytes = ((T * C) + (3 * C * C) + (T * 3 * C)) as u64 * B4;
    let mut g = group(c, "matmul_forward", mm_bytes);
    g.bench_function("cpu", |b| b.iter(|| cpu.matmul_forward(&mut qkv, &x, &wqkv, Some(&bqkv), T, C, 3 * C)));
    g.finish();
    let (mut dx, mut dw, mut db) = (vec![0f32; T * C], vec![0f32; 3 * C * C], vec![0f32; 3 * C]);
    let mut g = group(c, "matmul_backward", 2 * mm_bytes);
    g.bench_function("cpu", |b| {
        b.iter(|| {
            cpu.matmul_backward(Some(&mut dx), false, &mut dw, Some(&mut db), &qkv, &x, &wqkv, T, C, 3 * C)
        })
    });
    g.bench_function("cpu_no_dinp", |b| {
        b.iter(|| cpu.matmul_backward(None, false, &mut dw, Some(&mut db), &qkv, &x, &wqkv, T, C, 3 * C))
    });
    g.finish();

    // ---- attention over 64 sequences of 25 tokens, 4 heads
    let mut out = vec![0f32; T * C];
    let mut att = vec![0f32; att_len];
    let att_bytes = ((T * 3 * C) + (T * C) + att_len) as u64 * B4;
    let mut g = group(c, "attention_forward", att_bytes);
    g.bench_function("cpu", |b| {
        b.iter(|| cpu.attention_forward(&mut out, &mut att, &qkv, &bt, NH, C, drop(0)))
    });
    g.finish();
    let mut dqkv = vec![0f32; T * 3 * C];
    let mut g = group(c, "attention_backward", att_bytes + (T * 3 * C) as u64 * B4);
    g.bench_function("cpu", |b| {
        b.iter(|| cpu.attention_backward(&mut dqkv, &out, &att, &qkv, &bt, NH, C, drop(0)))
    });
    g.finish();

    // ---- AddNorm over (T,C)
    let (res, lw, lb) = (rand(T * C, 7), rand(C, 8), rand(C, 9));
    let (mut o, mut s, mut m, mut r) = (vec![0f32; T * C], vec![0f32; T * C], vec![0f32; T], vec![0f32; T]);
    let mut g = group(c, "addnorm_forward", 4 * (T * C) as u64 * B4);
    g.bench_function("cpu", |b| {
        b.iter(|| {
            cpu.addnorm_forward(
                &mut o,
                &mut s,
                &mut m,
                &mut r,
                &res,
                Some(&out),
                &lw,
                &lb,
                1e-5,
                drop(1),
                T,
                C,
            )
        })
    });
    g.finish();
    let (mut dres, mut dsub, mut dlw, mut dlb) =
        (vec![0f32; T * C], vec![0f32; T * C], vec![0f32; C], vec![0f32; C]);
    let mut g = group(c, "addnorm_backward", 6 * (T * C) as u64 * B4);
    g.bench_function("cpu", |b| {
        b.iter(|| {
            cpu.addnorm_backward(
                &mut dres,
                Some(&mut dsub),
                &mut dlw,
                &mut dlb,
                &o,
                &s,
                &m,
                &r,
                &lw,
                drop(1),
                T,
                C,
            )
        })
    });
    g.finish();

    // ---- activations over the FFN hidden (T,F)
    let h = rand(T * FF, 10);
    let mut a = vec![0f32; T * FF];
    let mut da = vec![0f32; T * FF];
    let acts = [("cpu", Activation::Relu), ("cpu_gelu", Activation::Gelu)];
    let mut g = group(c, "act_forward", 2 * (T * FF) as u64 * B4);
    for (name, act) in acts {
        g.bench_function(name, |b| b.iter(|| cpu.act_forward(&mut a, &h, act)));
    }
    g.finish();
    let mut g = group(c, "act_backward", 4 * (T * FF) as u64 * B4);
    for (name, act) in acts {
        g.bench_function(name, |b| b.iter(|| cpu.act_backward(&mut da, &h, &h, &a, act)));
    }
    g.finish();

    // ---- dropout over (T,F), <cls> gather, loss
    let mut g = group(c, "dropout_forward", 2 * (T * FF) as u64 * B4);
    g.bench_function("cpu", |b| b.iter(|| cpu.dropout_forward(&mut a, &h, drop(2))));
    g.finish();
    let mut cls = vec![0f32; SEQS * C];
    let mut g = group(c, "cls_backward", (T * C + SEQS * C) as u64 * B4);
    g.bench_function("cpu", |b| b.iter(|| cpu.cls_backward(&mut dres, &cls, &bt, C)));
    g.finish();
    let mut g = group(c, "cls_forward", 2 * (SEQS * C) as u64 * B4);
    g.bench_function("cpu", |b| b.iter(|| cpu.cls_forward(&mut cls, &o, &bt, C)));
    g.finish();
    let logits = rand(SEQS * K, 11);
    let (mut losses, mut probs, mut dlogits) = (vec![0f32; SEQS], vec![0f32; SEQS * K], vec![0f32; SEQS * K]);
    let mut g = group(c, "crossentropy_forward", (3 * SEQS * K) as u64 * B4);
    g.bench_function("cpu", |b| {
        b.iter(|| {
            cpu.crossentropy_forward(&mut losses, &mut probs, &logits, &bt, K);
            cpu.crossentropy_backward(&mut dlogits, &probs, &bt, K, 1.0 / SEQS as f64);
        })
    });
    g.finish();

    // ---- Adam over 1 Mi parameters (about bert.small's two encoder blocks)
    let n = 1 << 20;
    let (mut p, grads, mut am, mut av) = (rand(n, 12), rand(n, 13), vec![0f32; n], vec![0f32; n]);
    let step =
        AdamStep { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, t: 1 };
    let mut g = group(c, "adam_update", 7 * n as u64 * B4);
    g.bench_function("cpu", |b| {
        b.iter(|| cpu.adam_update(&mut p, &grads, &mut am, &mut av, black_box(&step)))
    });
    g.finish();
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
