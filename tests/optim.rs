//! The trainer's row-sparse Adam step (only token-embedding rows used so far) is bit-identical to
//! PyTorch's dense step, which tests/d2l_parity.rs checks against d2l.

use nli_bert::backend::cpu::Cpu;
use nli_bert::data::batch::Batch;
use nli_bert::model::bert::{init_params, upload_batch, Acts, Mode, Model};
use nli_bert::model::config::BertConfig;
use nli_bert::model::params::ParamLayout;
use nli_bert::train::optim::{Adam, AdamConfig};

fn batch(tokens: &[i32], lens: &[usize]) -> Batch {
    let mut b = Batch {
        tokens: tokens.to_vec(),
        segments: vec![],
        positions: vec![],
        lens: lens.to_vec(),
        labels: vec![],
    };
    for (k, &l) in lens.iter().enumerate() {
        b.labels.push((k % 3) as i32);
        for i in 0..l {
            b.segments.push(i32::from(i > l / 2));
            b.positions.push(i as i32);
        }
    }
    b
}

fn run(sparse: bool, cfg: AdamConfig) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut mc = BertConfig::d2l_small(40);
    (mc.hidden, mc.ffn, mc.heads, mc.layers, mc.max_positions) = (16, 24, 2, 2, 12);
    let be = Cpu::<f32>::new(2).unwrap();
    let host: Vec<f32> = init_params(&ParamLayout::new(&mc), 1).iter().map(|&x| x as f32).collect();
    let mut model = Model::from_host(&be, mc.clone(), &host).unwrap();
    let mut opt = Adam::new(&be, &model, cfg).unwrap();
    let mut acts = Acts::new(&be, &mc).unwrap();
    // Batches over growing, overlapping subsets of the vocabulary; row 39 is never used.
    let batches = [
        batch(&[3, 5, 7, 4, 9, 3, 11, 4], &[4, 4]),
        batch(&[3, 20, 21, 4, 22, 4, 3, 5, 4, 6, 4], &[6, 5]),
        batch(&[3, 30, 4, 31, 4], &[5]),
        batch(&[3, 5, 4, 8, 4, 3, 38, 4, 2, 4], &[5, 5]),
    ];
    for (step, b) in batches.iter().enumerate() {
        let db = upload_batch(&be, b).unwrap();
        let mode = Mode { dropout: 0.2, seed: 3, step: step as u64 };
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
    }
    (model.params_host(&be).unwrap(), opt.m.clone(), opt.v.clone())
}

#[test]
fn row_sparse_adam_is_bit_identical_to_dense_adam() {
    let cfg = AdamConfig::adam(1e-2);
    let (dense, sparse) = (run(false, cfg), run(true, cfg));
    assert!(dense.0.iter().zip(&sparse.0).all(|(a, b)| a.to_bits() == b.to_bits()), "parameters differ");
    assert!(dense.1.iter().zip(&sparse.1).all(|(a, b)| a.to_bits() == b.to_bits()), "first moments differ");
    assert!(dense.2.iter().zip(&sparse.2).all(|(a, b)| a.to_bits() == b.to_bits()), "second moments differ");
    // And training did move the parameters.
    let mut mc = BertConfig::d2l_small(40);
    (mc.hidden, mc.ffn, mc.heads, mc.layers, mc.max_positions) = (16, 24, 2, 2, 12);
    let init: Vec<f32> = init_params(&ParamLayout::new(&mc), 1).iter().map(|&x| x as f32).collect();
    let moved = init.iter().zip(&dense.0).filter(|(a, b)| a != b).count();
    assert!(moved > init.len() / 2, "only {moved} parameters moved");
}

#[test]
fn adamw_with_weight_decay_stays_dense_and_identical() {
    let cfg = AdamConfig::adamw(1e-2, 0.1);
    let (dense, sparse) = (run(false, cfg), run(true, cfg));
    assert_eq!(dense.0, sparse.0);
}
