//! Whole-model gradient check: the hand-written backward of `Model` against central finite
//! differences of the loss, in f64, with dropout ON (the Philox masks are a pure function of
//! (seed, step, site, element), so every perturbed forward drops the same units).

use nli_bert::backend::cpu::Cpu;
use nli_bert::backend::Activation;
use nli_bert::data::batch::Batch;
use nli_bert::model::bert::{init_params, upload_batch, Acts, Mode, Model};
use nli_bert::model::config::{BertConfig, TokenizerKind};
use nli_bert::model::params::ParamLayout;
use nli_bert::rng::HostRng;

fn tiny(d2l: bool) -> BertConfig {
    BertConfig {
        vocab_size: 11,
        hidden: 8,
        ffn: 12,
        heads: 2,
        layers: 2,
        max_positions: 9,
        type_vocab_size: 2,
        activation: if d2l { Activation::Relu } else { Activation::Gelu },
        ln_eps: 1e-5,
        embedding_layernorm: !d2l,
        train_pos_embedding: true,
        num_labels: 3,
        tokenizer: TokenizerKind::D2lWords,
        lowercase: true,
        hf_extra_dropout: !d2l,
    }
}

/// Three packed sequences (lengths 3, 6, 4) with segments and labels.
fn batch() -> Batch {
    let lens = [3usize, 6, 4];
    let mut rng = HostRng::new(5, 0);
    let mut b = Batch {
        tokens: vec![],
        segments: vec![],
        positions: vec![],
        lens: lens.to_vec(),
        labels: vec![2, 0, 1],
    };
    for &l in &lens {
        for i in 0..l {
            b.tokens.push(rng.below(11) as i32);
            b.segments.push(i32::from(i >= l / 2));
            b.positions.push(i as i32);
        }
    }
    b
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
