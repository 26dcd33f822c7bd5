//! Per-op benchmarks: one criterion group per op family, ids `<family>/<op>/<device>` (e.g.
//! `layernorm/forward/cpu`), throughput in bytes read + written.
//!
//! - `cpu`: `Cpu<f32>`, all cores, at d2l bert.small shapes with a batch of 64 sequences of 25
//!   tokens: T = 1600, C = 256, NH = 4, F = 512, V = 20,256 (every family);
//! - `emu`: `Gpu<Emu>`, our CUDA kernels on the emulator (one fiber per CUDA thread, slow), at small
//!   shapes: 4 sequences of 12 tokens, C = 64, NH = 2, F = 128, V = 1,000 (a few families);
//! - `cuda`: `Gpu<Cuda>` at the CPU's shapes (every family), only when
//!   `cuda::device_count() > 0` (skipped silently otherwise); the device is synchronised inside
//!   the timing ([`Gpu::check`] waits for it).
//!
//! - `attention/flash_{forward,backward}/<dev>`: the flash kernels (bf16 tensor cores) at the same
//!   shapes, beside the f32 kernels' `attention/{forward,backward}/<dev>`.
//!
//! Run: `cargo bench --bench ops` (add `-- <filter>` to pick groups or devices, e.g. `-- layernorm` or `-- /emu`).

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use nli_bert::backend::cpu::Cpu;
use nli_bert::backend::gpu::{cuda, emu::Emu, Gpu};
use nli_bert::backend::{Activation, AdamStep, Backend, BatchLayout, DeviceBatch};
use nli_bert::rng::{Dropout, HostRng};
use std::hint::black_box;
use std::time::Duration;

/// Bytes per f32.
const B4: u64 = 4;
const K: usize = 3;

/// The shapes of one device's runs.
struct Shapes {
    seqs: usize,
    len: usize,
    c: usize,
    nh: usize,
    ff: usize,
    v: usize,
    p: usize,
    adam: usize,
    /// Every family, or only embedding, matmul, attention, AddNorm, activation forwards and Adam.
    all: bool,
    warm_up: Duration,
    measure: Duration,
}

impl Shapes {
    fn t(&self) -> usize {
        self.seqs * self.len
    }
}

/// d2l bert.small at batch 64 × 25 tokens.
const FULL: Shapes = Shapes {
    seqs: 64,
    len: 25,
    c: 256,
    nh: 4,
    ff: 512,
    v: 20256,
    p: 512,
    adam: 1 << 20,
    all: true,
    warm_up: Duration::from_millis(500),
    measure: Duration::from_secs(2),
};

/// Small enough for the emulator.
const SMALL: Shapes = Shapes {
    seqs: 4,
    len: 12,
    c: 64,
    nh: 2,
    ff: 128,
    v: 1000,
    p: 64,
    adam: 1 << 14,
    all: false,
    warm_up: Duration::from_millis(200),
    measure: Duration::from_secs(1),
};

fn rand(n: usize, stream: u32) -> Vec<f32> {
    let mut r = HostRng::new(42, stream);
    (0..n).map(|_| r.normal() as f32 * 0.5).collect()
}

fn batch<B: Backend>(be: &B, s: &Shapes) -> DeviceBatch<B> {
    let (t, len) = (s.t(), s.len);
    let layout = BatchLayout::new(&vec![len; s.seqs]);
    let mut r = HostRng::new(7, 0);
    let tokens: Vec<i32> = (0..t).map(|_| r.below(s.v as u64) as i32).collect();
    let segments: Vec<i32> = (0..t).map(|i| ((i % len) >= len / 2) as i32).collect();
    let positions: Vec<i32> = (0..t).map(|i| (i % len) as i32).collect();
    let labels: Vec<i32> = (0..s.seqs).map(|_| r.below(K as u64) as i32).collect();
    let up = |v: &[i32]| be.upload_i32(v).expect("upload");
    let cu: Vec<i32> = layout.cu_seqlens.iter().map(|&x| x as i32).collect();
    let att: Vec<i32> = layout.att_offsets.iter().map(|&x| x as i32).collect();
    DeviceBatch {
        cu_seqlens: up(&cu),
        att_offsets: up(&att),
        tokens: up(&tokens),
        segments: up(&segments),
        positions: up(&positions),
        labels: up(&labels),
        labels_host: labels,
        layout,
    }
}

fn drop(site: u32) -> Dropout {
    Dropout::new(0.1, 1, 1, site)
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    bytes: u64,
    s: &Shapes,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(s.warm_up).measurement_time(s.measure);
    g.throughput(Throughput::Bytes(bytes));
    g
}

/// Every family (or the subset of `s.all == false`) on `be`, ids `<family>/<op>/<dev>`; `sync` waits for
/// the device and runs inside the timing.
fn bench_on<B: Backend<F = f32>>(c: &mut Criterion, be: &B, dev: &str, s: &Shapes, sync: &dyn Fn()) {
    eprintln!("backend: {}", be.name());
    let (t, cc, nh, ff, v, p) = (s.t(), s.c, s.nh, s.ff, s.v, s.p);
    let seqs = s.seqs;
    let up = |x: &[f32]| be.upload(x).expect("upload");
    let zeros = |n: usize| be.alloc(n).expect("alloc");
    let bt = batch(be, s);
    let att_len = bt.layout.att_len(nh);
    let id = |op: &str| format!("{op}/{dev}");

    // ---- embedding: (V,C) + (2,C) + (P,C) tables -> (T,C)
    let (wte, wse, wpe) = (up(&rand(v * cc, 1)), up(&rand(2 * cc, 2)), up(&rand(p * cc, 3)));
    let mut emb = zeros(t * cc);
    let mut g = group(c, "embedding", 4 * (t * cc) as u64 * B4, s);
    g.bench_function(id("forward"), |b| {
        b.iter(|| {
            be.embedding_forward(be.view_mut(&mut emb), &bt, be.view(&wte), be.view(&wse), be.view(&wpe), cc);
            sync();
        })
    });
    g.finish();
    if s.all {
        let (mut dwte, mut dwse, mut dwpe) = (zeros(v * cc), zeros(2 * cc), zeros(p * cc));
        let mut g = group(c, "embedding", 7 * (t * cc) as u64 * B4, s);
        g.bench_function(id("backward"), |b| {
            b.iter(|| {
                be.embedding_backward(
                    be.view_mut(&mut dwte),
                    be.view_mut(&mut dwse),
                    Some(be.view_mut(&mut dwpe)),
                    be.view(&emb),
                    &bt,
                    cc,
                );
                sync();
            })
        });
        g.finish();
    }

    // ---- matmul: the fused QKV projection (T,C)·(3C,C)ᵀ
    let (x, wqkv, bqkv) = (up(&rand(t * cc, 4)), up(&rand(3 * cc * cc, 5)), up(&rand(3 * cc, 6)));
    let mut qkv = zeros(t * 3 * cc);
    let mm_bytes = ((t * cc) + (3 * cc * cc) + (t * 3 * cc)) as u64 * B4;
    let mut g = group(c, "matmul", mm_bytes, s);
    g.bench_function(id("forward"), |b| {
        b.iter(|| {
            be.matmul_forward(
                be.view_mut(&mut qkv),
                be.view(&x),
                be.view(&wqkv),
                Some(be.view(&bqkv)),
                t,
                cc,
                3 * cc,
            );
            sync();
        })
    });
    g.finish();
    if s.all {
        let (mut dx, mut dw, mut db) = (zeros(t * cc), zeros(3 * cc * cc), zeros(3 * cc));
        let mut g = group(c, "matmul", 2 * mm_bytes, s);
        g.bench_function(id("backward"), |b| {
            b.iter(|| {
                be.matmul_backward(
                    Some(be.view_mut(&mut dx)),
                    false,
                    be.view_mut(&mut dw),
                    Some(be.view_mut(&mut db)),
                    be.view(&qkv),
                    be.view(&x),
                    be.view(&wqkv),
                    t,
                    cc,
                    3 * cc,
                );
                sync();
            })
        });
        g.bench_function(id("backward_no_dinp"), |b| {
            b.iter(|| {
                be.matmul_backward(
                    None,
                    false,
                    be.view_mut(&mut dw),
                    Some(be.view_mut(&mut db)),
                    be.view(&qkv),
                    be.view(&x),
                    be.view(&wqkv),
                    t,
                    cc,
                    3 * cc,
                );
                sync();
            })
        });
        g.finish();
    }

    // ---- attention over the packed sequences
    let mut out = zeros(t * cc);
    let mut att = zeros(att_len);
    let att_bytes = ((t * 3 * cc) + (t * cc) + att_len) as u64 * B4;
    let mut g = group(c, "attention", att_bytes, s);
    g.bench_function(id("forward"), |b| {
        b.iter(|| {
            be.attention_forward(
                be.view_mut(&mut out),
                be.view_mut(&mut att),
                be.view(&qkv),
                &bt,
                nh,
                cc,
                drop(0),
            );
            sync();
        })
    });
    g.finish();
    if s.all {
        let mut dqkv = zeros(t * 3 * cc);
        let mut g = group(c, "attention", att_bytes + (t * 3 * cc) as u64 * B4, s);
        g.bench_function(id("backward"), |b| {
            b.iter(|| {
                be.attention_backward(
                    be.view_mut(&mut dqkv),
                    be.view(&out),
                    be.view(&out),
                    be.view(&att),
                    be.view(&qkv),
                    &bt,
                    nh,
                    cc,
                    drop(0),
                );
                sync();
            })
        });
        g.finish();
    }

    // ---- AddNorm over (T,C)
    let (res, lw, lb) = (up(&rand(t * cc, 7)), up(&rand(cc, 8)), up(&rand(cc, 9)));
    let (mut o, mut sm, mut m, mut r) = (zeros(t * cc), zeros(t * cc), zeros(t), zeros(t));
    let mut g = group(c, "layernorm", 4 * (t * cc) as u64 * B4, s);
    g.bench_function(id("forward"), |b| {
        b.iter(|| {
            be.layernorm_forward(
                be.view_mut(&mut o),
                be.view_mut(&mut sm),
                be.view_mut(&mut m),
                be.view_mut(&mut r),
                be.view(&res),
                Some(be.view(&out)),
                be.view(&lw),
                be.view(&lb),
                1e-5,
                drop(1),
                t,
                cc,
            );
            sync();
        })
    });
    g.finish();
    let mut dres = zeros(t * cc);
    if s.all {
        let (mut dsub, mut dlw, mut dlb) = (zeros(t * cc), zeros(cc), zeros(cc));
        let mut g = group(c, "layernorm", 6 * (t * cc) as u64 * B4, s);
        g.bench_function(id("backward"), |b| {
            b.iter(|| {
                be.layernorm_backward(
                    be.view_mut(&mut dres),
                    Some(be.view_mut(&mut dsub)),
                    be.view_mut(&mut dlw),
                    be.view_mut(&mut dlb),
                    be.view(&o),
                    be.view(&sm),
                    be.view(&m),
                    be.view(&r),
                    be.view(&lw),
                    drop(1),
                    t,
                    cc,
                );
                sync();
            })
        });
        g.finish();
    }

    // ---- activations over the FFN hidden (T,F)
    let h = up(&rand(t * ff, 10));
    let mut a = zeros(t * ff);
    let mut da = zeros(t * ff);
    let acts: &[(&str, Activation)] = if s.all {
        &[("", Activation::Relu), ("_gelu", Activation::Gelu)]
    } else {
        &[("", Activation::Relu)]
    };
    let mut g = group(c, "activation", 2 * (t * ff) as u64 * B4, s);
    for &(suffix, act) in acts {
        g.bench_function(id(&format!("forward{suffix}")), |b| {
            b.iter(|| {
                be.activation_forward(be.view_mut(&mut a), be.view(&h), act);
                sync();
            })
        });
    }
    g.finish();
    if s.all {
        let mut g = group(c, "activation", 4 * (t * ff) as u64 * B4, s);
        for &(suffix, act) in acts {
            g.bench_function(id(&format!("backward{suffix}")), |b| {
                b.iter(|| {
                    be.activation_backward(be.view_mut(&mut da), be.view(&h), be.view(&h), be.view(&a), act);
                    sync();
                })
            });
        }
        g.finish();

        // ---- dropout over (T,F), <cls> gather, loss
        let mut g = group(c, "activation", 2 * (t * ff) as u64 * B4, s);
        g.bench_function(id("dropout_forward"), |b| {
            b.iter(|| {
                be.dropout_forward(be.view_mut(&mut a), be.view(&h), drop(2));
                sync();
            })
        });
        g.finish();
        let mut cls = zeros(seqs * cc);
        let mut g = group(c, "classifier", (t * cc + seqs * cc) as u64 * B4, s);
        g.bench_function(id("cls_backward"), |b| {
            b.iter(|| {
                be.cls_backward(be.view_mut(&mut dres), be.view(&cls), &bt, cc);
                sync();
            })
        });
        g.finish();
        let mut g = group(c, "classifier", 2 * (seqs * cc) as u64 * B4, s);
        g.bench_function(id("cls_forward"), |b| {
            b.iter(|| {
                be.cls_forward(be.view_mut(&mut cls), be.view(&o), &bt, cc);
                sync();
            })
        });
        g.finish();
        let logits = up(&rand(seqs * K, 11));
        let (mut losses, mut probs, mut dlogits) = (zeros(seqs), zeros(seqs * K), zeros(seqs * K));
        let mut g = group(c, "classifier", (3 * seqs * K) as u64 * B4, s);
        g.bench_function(id("crossentropy_forward"), |b| {
            b.iter(|| {
                be.crossentropy_forward(
                    be.view_mut(&mut losses),
                    be.view_mut(&mut probs),
                    be.view(&logits),
                    &bt,
                    K,
                );
                be.crossentropy_backward(
                    be.view_mut(&mut dlogits),
                    be.view(&probs),
                    &bt,
                    K,
                    1.0 / seqs as f64,
                );
                sync();
            })
        });
        g.finish();
    }

    // ---- Adam over `s.adam` parameters (FULL: 1 Mi, about bert.small's two encoder blocks)
    let n = s.adam;
    let (mut pp, grads, mut am, mut av) = (up(&rand(n, 12)), up(&rand(n, 13)), zeros(n), zeros(n));
    let step =
        AdamStep { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, t: 1 };
    let mut g = group(c, "adam", 7 * n as u64 * B4, s);
    g.bench_function(id("update"), |b| {
        b.iter(|| {
            be.adam_update(
                be.view_mut(&mut pp),
                be.view(&grads),
                be.view_mut(&mut am),
                be.view_mut(&mut av),
                black_box(&step),
            );
            sync();
        })
    });
    g.finish();
}

/// Flash attention (bf16 tensor cores) forward and backward through the Backend trait, ids
/// `attention/flash_forward/<dev>` and `attention/flash_backward/<dev>`; the bytes are those the
/// kernels must move (qkv, out and the log-sum-exps; backward also dout and dqkv).
fn bench_flash<D: nli_bert::backend::gpu::device::Device>(
    c: &mut Criterion,
    be: &Gpu<D>,
    dev: &str,
    s: &Shapes,
    sync: &dyn Fn(),
) {
    let (t, cc, nh) = (s.t(), s.c, s.nh);
    assert!(be.uses_flash_attention(nh, cc), "the flash kernels take C {cc} with {nh} heads");
    let bt = batch(be, s);
    let qkv = be.upload(&rand(t * 3 * cc, 21)).expect("upload");
    let dout = be.upload(&rand(t * cc, 22)).expect("upload");
    let (mut out, mut lse, mut dqkv) = (
        be.alloc(t * cc).expect("alloc"),
        be.alloc(be.attention_saved_len(&bt.layout, nh, cc)).expect("alloc"),
        be.alloc(t * 3 * cc).expect("alloc"),
    );
    let fwd_bytes = ((t * 3 * cc) + (t * cc) + nh * t) as u64 * B4;
    let mut g = group(c, "attention", fwd_bytes, s);
    g.bench_function(format!("flash_forward/{dev}"), |b| {
        b.iter(|| {
            be.attention_forward(
                be.view_mut(&mut out),
                be.view_mut(&mut lse),
                be.view(&qkv),
                &bt,
                nh,
                cc,
                drop(0),
            );
            sync();
        })
    });
    g.finish();
    let mut g = group(c, "attention", fwd_bytes + (t * 4 * cc) as u64 * B4, s);
    g.bench_function(format!("flash_backward/{dev}"), |b| {
        b.iter(|| {
            be.attention_backward(
                be.view_mut(&mut dqkv),
                be.view(&dout),
                be.view(&out),
                be.view(&lse),
                be.view(&qkv),
                &bt,
                nh,
                cc,
                drop(0),
            );
            sync();
        })
    });
    g.finish();
}

fn bench_ops(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new(0).expect("thread pool");
    bench_on(c, &cpu, "cpu", &FULL, &|| {});
    let emu = Gpu::new(Emu::new().expect("emulator"));
    bench_on(c, &emu, "emu", &SMALL, &|| emu.check().expect("emulator"));
    let emu = emu.with_flash_attention(true);
    bench_flash(c, &emu, "emu", &SMALL, &|| emu.check().expect("emulator"));
    if cuda::device_count() > 0 {
        let gpu = Gpu::new(cuda::Cuda::new(0, &nli_bert::data::hub::cache_dir()).expect("CUDA device 0"));
        bench_on(c, &gpu, "cuda", &FULL, &|| gpu.check().expect("CUDA device"));
        let gpu = gpu.with_flash_attention(true);
        bench_flash(c, &gpu, "cuda", &FULL, &|| gpu.check().expect("CUDA device"));
    }
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
