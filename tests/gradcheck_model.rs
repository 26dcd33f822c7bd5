//! Whole-model gradient check: the hand-written backward of `Model` against central finite
//! differences of the loss, in f64, with dropout ON (the Philox masks are a pure function of
//! (seed, step, site, element), so every perturbed forward drops the same units).

mod common;

use common::{packed_batch, tiny_config, Labels, Tiny};
use nli_bert::backend::cpu::Cpu;
use nli_bert::data::batch::Batch;
use nli_bert::model::bert::{init_params, upload_batch, Acts, Mode, Model};
use nli_bert::model::config::BertConfig;
use nli_bert::model::params::ParamLayout;
use nli_bert::rng::HostRng;

fn tiny(d2l: bool) -> BertConfig {
    tiny_config(Tiny { v: 11, c: 8, f: 12, nh: 2, p: 9 }, d2l, true)
}

/// Three packed sequences (lengths 3, 6, 4) with segments and labels.
fn batch() -> Batch {
    packed_batch(&[3, 6, 4], 11, &mut HostRng::new(5, 0), Labels::Given(&[2, 0, 1]))
}

fn check(cfg: BertConfig, dropout: f64) {
    let be = Cpu::<f64>::new(1).unwrap();
    let layout = ParamLayout::new(&cfg);
    let mut p = init_params(&layout, 3);
    // LayerNorm affine parameters away from (1, 0), so their gradients are exercised.
    let mut rng = HostRng::new(9, 1);
    for e in layout.entries.iter().filter(|e| e.name.contains("ln.") || e.name.contains("embedding_norm")) {
        for x in &mut p[e.range()] {
            *x += 0.3 * rng.normal();
        }
    }
    let db = upload_batch(&be, &batch()).unwrap();
    let mode = Mode { dropout, seed: 42, step: 7 };
    let loss = |params: &[f64]| -> f64 {
        let m = Model::from_host(&be, cfg.clone(), params).unwrap();
        let mut acts = Acts::new(&be, &cfg).unwrap();
        m.forward(&be, &mut acts, &db, mode).unwrap().loss_sum
    };
    let mut model = Model::from_host(&be, cfg.clone(), &p).unwrap();
    let mut acts = Acts::new(&be, &cfg).unwrap();
    model.zero_grad(&be);
    model.forward(&be, &mut acts, &db, mode).unwrap();
    model.backward(&be, &mut acts, &db, mode).unwrap();
    let g = model.grads_host(&be).unwrap();

    let h = 1e-5;
    let mut worst = (0.0f64, String::new());
    let mut nonzero = 0;
    for e in &layout.entries {
        for i in e.range() {
            let mut q = p.clone();
            q[i] = p[i] + h;
            let up = loss(&q);
            q[i] = p[i] - h;
            let down = loss(&q);
            let fd = (up - down) / (2.0 * h);
            // Tolerance 1e-6 relative, plus 1e-9 absolute for the finite difference's rounding noise
            // (W_k.bias has an exactly-zero true gradient: softmax ignores per-query constants).
            let err = (fd - g[i]).abs() / (1e-6 * fd.abs().max(g[i].abs()) + 1e-9);
            if fd.abs() > 1e-8 {
                nonzero += 1;
            }
            if err > worst.0 {
                worst = (
                    err,
                    format!("{}[{}]: analytic {:e}, finite difference {:e}", e.name, i - e.offset, g[i], fd),
                );
            }
        }
    }
    assert!(
        nonzero > layout.total / 2,
        "too few parameters influence the loss: {nonzero} of {}",
        layout.total
    );
    assert!(worst.0 <= 1.0, "gradient error {:.2}x the tolerance at {}", worst.0, worst.1);
}

#[test]
fn gradcheck_whole_model_d2l_with_dropout() {
    check(tiny(true), 0.3);
}

#[test]
fn gradcheck_whole_model_d2l_without_dropout() {
    check(tiny(true), 0.0);
}

#[test]
fn gradcheck_whole_model_hf_variant_with_dropout() {
    // Embedding LayerNorm, erf GELU, dropout after the embeddings and before the classifier.
    check(tiny(false), 0.2);
}
