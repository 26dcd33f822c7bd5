//! One whole training step (zero grads, forward, backward, Adam) of the bert.small classifier on
//! the CPU: C 256, F 512, 4 heads, 2 blocks, 512 positions, V 60,005 (d2l's vocabulary size), a
//! batch of 64 pairs with SNLI-like lengths (mean ≈ 25 tokens), f32, all cores.
//!
//! Ids: `train_step/cpu` (the trainer's row-sparse Adam) and `train_step_dense_adam/cpu`
//! (PyTorch's dense Adam over every embedding row). Throughput in examples.
//! Run: `cargo bench --bench train_step`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nli_bert::backend::cpu::Cpu;
use nli_bert::data::batch::Batch;
use nli_bert::model::bert::{init_params, upload_batch, Acts, Mode, Model};
use nli_bert::model::config::BertConfig;
use nli_bert::model::params::ParamLayout;
use nli_bert::rng::HostRng;
use nli_bert::train::optim::{Adam, AdamConfig};
use std::time::Duration;

const B: usize = 64;

fn snli_like_batch(seed: u64) -> Batch {
    let mut r = HostRng::new(seed, 0);
    let mut b = Batch { tokens: vec![], segments: vec![], positions: vec![], lens: vec![], labels: vec![] };
    for k in 0..B {
        // Premise 8..20 words, hypothesis 3..12, plus <cls> and two <sep>: mean ≈ 25.
        let (p, h) = (8 + r.below(13) as usize, 3 + r.below(10) as usize);
        let len = p + h + 3;
        for i in 0..len {
            // Zipf-ish ids concentrated on the first few thousand rows, like real text.
            let u = r.uniform();
            b.tokens.push((5.0 + 6000.0 * u * u * u) as i32);
            b.segments.push(i32::from(i > p + 1));
            b.positions.push(i as i32);
        }
        b.lens.push(len);
        b.labels.push((k % 3) as i32);
    }
    b
}

fn bench(c: &mut Criterion) {
    let cfg = BertConfig::d2l_small(60_005);
    let host: Vec<f32> = init_params(&ParamLayout::new(&cfg), 0).iter().map(|&x| x as f32).collect();
    let be = Cpu::<f32>::new(0).unwrap();
    let batches: Vec<Batch> = (0..8).map(snli_like_batch).collect();
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Elements(B as u64));
    for (id, sparse) in [("cpu", true), ("cpu_dense_adam", false)] {
        let mut model = Model::from_host(&be, cfg.clone(), &host).unwrap();
        let mut opt = Adam::new(&be, &model, AdamConfig::adam(1e-4)).unwrap();
        let mut acts = Acts::new(&be, &cfg).unwrap();
        let mut step = 0u64;
        g.bench_function(id, |bch| {
            bch.iter(|| {
                let b = &batches[step as usize % batches.len()];
                let db = upload_batch(&be, b).unwrap();
                let mode = Mode { dropout: 0.2, seed: 0, step };
                if sparse {
                    opt.zero_grad(&be, &mut model);
                } else {
                    model.zero_grad(&be);
                }
                model.forward(&be, &mut acts, &db, mode).unwrap();
                model.backward(&be, &mut acts, &db, mode).unwrap();
                if sparse {
                    opt.step_batch(&be, &mut model, &b.tokens);
                } else {
                    opt.step(&be, &mut model);
                }
                step += 1;
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
