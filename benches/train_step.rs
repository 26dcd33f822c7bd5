//! One whole training step (zero grads, forward, backward, Adam) of the bert.small classifier: C 256,
//! F 512, 4 heads, 2 blocks, 512 positions, V 60,005 (d2l's vocabulary size), a batch of 64 pairs
//! with SNLI-like lengths (mean ≈ 25 tokens), f32.
//!
//! Ids: `train_step/cpu` (all cores, the trainer's row-sparse Adam), `train_step/cpu_dense_adam`
//! (PyTorch's dense Adam over every embedding row), `train_step/emu` (`Gpu<Emu>`, a tiny shape:
//! C 32, F 64, 2 heads, vocabulary 500, 4 pairs; the emulator is slow) and `train_step/cuda`
//! (`Gpu<Cuda>`, bert.small, only when a CUDA device is present; the device is synchronised
//! inside the timing). Throughput in examples.
//! Run: `cargo bench --bench train_step`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nli_bert::backend::cpu::Cpu;
use nli_bert::backend::gpu::{cuda, emu::Emu, Gpu};
use nli_bert::backend::Backend;
use nli_bert::data::batch::Batch;
use nli_bert::model::bert::{cast_params, init_params, upload_batch, Acts, Mode, Model};
use nli_bert::model::config::BertConfig;
use nli_bert::model::params::ParamLayout;
use nli_bert::rng::HostRng;
use nli_bert::train::optim::{Adam, AdamConfig};
use std::time::Duration;

fn snli_like_batch(seed: u64, pairs: usize, vocab: usize) -> Batch {
    let mut r = HostRng::new(seed, 0);
    let mut b = Batch { tokens: vec![], segments: vec![], positions: vec![], lens: vec![], labels: vec![] };
    for k in 0..pairs {
        // Premise 8..20 words, hypothesis 3..12, plus <cls> and two <sep>: mean ≈ 25.
        let (p, h) = (8 + r.below(13) as usize, 3 + r.below(10) as usize);
        let len = p + h + 3;
        for i in 0..len {
            // Zipf-ish ids concentrated on the first few thousand rows, like real text.
            let u = r.uniform();
            b.tokens.push((5.0 + (6000.min(vocab - 6) as f64) * u * u * u) as i32);
            b.segments.push(i32::from(i > p + 1));
            b.positions.push(i as i32);
        }
        b.lens.push(len);
        b.labels.push((k % 3) as i32);
    }
    b
}

/// Times the step on `be` under `id`; `sparse` picks the trainer's row-sparse Adam; `sync` waits
/// for the device inside the timing.
fn bench_on<B: Backend>(
    c: &mut Criterion,
    be: &B,
    cfg: &BertConfig,
    pairs: usize,
    ids: &[(&str, bool)],
    sync: &dyn Fn(),
) {
    let host: Vec<B::F> = cast_params(&init_params(&ParamLayout::new(cfg), 0));
    let batches: Vec<Batch> = (0..8).map(|s| snli_like_batch(s, pairs, cfg.vocab_size)).collect();
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Elements(pairs as u64));
    for &(id, sparse) in ids {
        let mut model = Model::from_host(be, cfg.clone(), &host).unwrap();
        let mut opt = Adam::new(be, &model, AdamConfig::adam(1e-4)).unwrap();
        let mut acts = Acts::new(be, cfg).unwrap();
        let mut step = 0u64;
        g.bench_function(id, |bch| {
            bch.iter(|| {
                let b = &batches[step as usize % batches.len()];
                let mode = Mode { dropout: 0.2, seed: 0, step };
                if sparse {
                    // the trainer's step (row-sparse Adam)
                    model.train_step(be, &mut opt, &mut acts, b, mode).unwrap();
                } else {
                    // PyTorch-style dense Adam over every parameter, for comparison
                    let db = upload_batch(be, b).unwrap();
                    model.zero_grad(be);
                    model.forward(be, &mut acts, &db, mode).unwrap();
                    model.backward(be, &mut acts, &db, mode).unwrap();
                    opt.step(be, &mut model);
                }
                sync();
                step += 1;
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let small = BertConfig::d2l_small(60_005);
    let cpu = Cpu::<f32>::new(0).unwrap();
    bench_on(c, &cpu, &small, 64, &[("cpu", true), ("cpu_dense_adam", false)], &|| {});
    let tiny = BertConfig { hidden: 32, ffn: 64, heads: 2, max_positions: 64, ..BertConfig::d2l_small(500) };
    let emu = Gpu::new(Emu::new().expect("emulator"));
    bench_on(c, &emu, &tiny, 4, &[("emu", true)], &|| emu.check().expect("emulator"));
    if cuda::device_count() > 0 {
        let gpu = Gpu::new(cuda::Cuda::new(0, &nli_bert::data::hub::cache_dir()).expect("CUDA device 0"));
        bench_on(c, &gpu, &small, 64, &[("cuda", true)], &|| gpu.check().expect("CUDA device"));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
