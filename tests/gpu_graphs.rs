//! Step graphs (CUDA graphs on a GPU; the emulator records and replays the same op list): a
//! training step recorded once per packed-length bucket and replayed with new batches gives the
//! numbers of the same steps launched op by op, with dropout on, for the d2l and Hugging Face
//! variants, in f32 and bf16, across bucket changes, growing embedding-row lists and the last,
//! smaller batch; a non-finite loss leaves the parameters as they were; an update that no longer
//! matches the graph is detected (and recaptured), and reading device memory back while capturing
//! is refused. Also the `loss_nonfinite` kernel against its CPU twin.

mod common;

use common::{packed_batch, tiny_config, Labels, Tiny};
use nli_bert::backend::cpu::classifier::any_nonfinite;
use nli_bert::backend::gpu::cuda::Cuda;
use nli_bert::backend::gpu::device::Device;
use nli_bert::backend::gpu::emu::Emu;
use nli_bert::backend::gpu::Gpu;
use nli_bert::backend::Backend;
use nli_bert::data::batch::Batch;
use nli_bert::model::bert::{cast_params, init_params, Acts, Mode, Model};
use nli_bert::model::config::BertConfig;
use nli_bert::model::params::ParamLayout;
use nli_bert::rng::HostRng;
use nli_bert::train::optim::{Adam, AdamConfig};
use nli_bert::train::step::StepGraphs;

const V: usize = 40;

fn cfg(d2l: bool) -> BertConfig {
    tiny_config(Tiny { v: V, c: 32, f: 48, nh: 2, p: 24 }, d2l, !d2l)
}

/// Batches whose packed lengths fall in several buckets of 16 tokens, with a repeat of a
/// bucket (an update), and a last batch with fewer examples.
fn batches() -> Vec<Batch> {
    let lens: [&[usize]; 11] = [
        &[5, 9, 12],
        &[7, 3, 20],
        &[4, 9, 12],
        &[24, 10, 6],
        &[11, 11, 9],
        &[20, 20, 5],
        &[6, 9, 12],
        &[8, 8, 8],
        &[20, 20, 2],
        &[10, 5, 12],
        &[17, 6],
    ];
    let mut rng = HostRng::new(5, 0);
    lens.iter().map(|l| packed_batch(l, V, &mut rng, Labels::PerSequence)).collect()
}

struct Run {
    losses: Vec<f64>,
    correct: Vec<usize>,
    params: Vec<f64>,
}

/// How [`run_as`] takes its steps.
#[derive(Clone, Copy, PartialEq)]
enum How {
    Launched,
    Graphed,
    /// Queued graph steps, their metrics read after steps 4 and 8 and at the end.
    Queued,
}

fn run<D: Device>(
    be: &Gpu<D>,
    cfg: &BertConfig,
    graphs: Option<&mut StepGraphs<Gpu<D>>>,
    data: &[Batch],
) -> Run {
    let how = if graphs.is_some() { How::Graphed } else { How::Launched };
    run_as(be, cfg, graphs, data, how)
}

fn run_as<D: Device>(
    be: &Gpu<D>,
    cfg: &BertConfig,
    graphs: Option<&mut StepGraphs<Gpu<D>>>,
    data: &[Batch],
    how: How,
) -> Run {
    let host = init_params(&ParamLayout::new(cfg), 3);
    let mut model = Model::from_host(be, cfg.clone(), &cast_params::<f32>(&host)).unwrap();
    let mut acts = Acts::new(be, cfg).unwrap();
    let mut opt = Adam::new(be, &model, AdamConfig::adam(1e-2)).unwrap();
    let mut out = Run { losses: vec![], correct: vec![], params: vec![] };
    let mut graphs = graphs;
    for (step, b) in data.iter().enumerate() {
        let mode = Mode { dropout: 0.2, seed: 9, step: step as u64 };
        let outs = match (how, graphs.as_deref_mut()) {
            (How::Graphed, Some(g)) => {
                vec![model.train_step_graphed(be, &mut opt, &mut acts, b, mode, g).unwrap()]
            }
            (How::Queued, Some(g)) => {
                model.train_step_queued(be, &mut opt, &mut acts, b, mode, g).unwrap();
                if step == 3 || step == 7 || step + 1 == data.len() {
                    g.take_metrics(be).unwrap()
                } else {
                    Vec::new()
                }
            }
            _ => vec![model.train_step(be, &mut opt, &mut acts, b, mode).unwrap()],
        };
        for o in outs {
            out.losses.push(o.loss_sum);
            out.correct.push(o.correct);
        }
    }
    assert_eq!(out.losses.len(), data.len(), "one output per step");
    be.check().unwrap();
    out.params = model.params_host(be).unwrap().iter().map(|&x| x as f64).collect();
    out
}

fn emu(bf16: bool) -> Gpu<Emu> {
    let e = Emu::new().expect("the CUDA emulator is built with the crate");
    if bf16 {
        Gpu::new_bf16(e)
    } else {
        Gpu::new(e).with_flash_attention(true)
    }
}

fn cuda(bf16: bool) -> Gpu<Cuda> {
    let d = Cuda::new(0, &nli_bert::data::hub::cache_dir()).expect("Cuda::new(0)");
    if bf16 {
        Gpu::new_bf16(d)
    } else {
        Gpu::new(d).with_flash_attention(true)
    }
}

#[test]
fn graphed_steps_emu_match_launched_steps() {
    graphed_steps_match_launched_steps(emu, true);
}

#[test]
fn graphed_steps_cuda_match_launched_steps() {
    if common::have_cuda("graphed_steps_cuda_match_launched_steps") {
        graphed_steps_match_launched_steps(cuda, false);
    }
}

/// `same_products`: the device multiplies the padded batch's matrices exactly as the unpadded
/// ones (the emulator); a GPU's library may pick other algorithms for other row counts, and the
/// key bias's gradient is pure rounding noise that Adam then amplifies (see gpu_model.rs), so
/// there the parameters are compared as a whole.
fn graphed_steps_match_launched_steps<D: Device>(backend: fn(bool) -> Gpu<D>, same_products: bool) {
    let data = batches();
    for d2l in [true, false] {
        for bf16 in [false, true] {
            let cfg = cfg(d2l);
            let be = backend(bf16);
            assert!(be.graphs_supported(cfg.heads, cfg.hidden));
            let launched = run(&be, &cfg, None, &data);
            let mut graphs = StepGraphs::new(16);
            let graphed = run(&backend(bf16), &cfg, Some(&mut graphs), &data);
            let mut qgraphs = StepGraphs::new(16);
            let queued = run_as(&backend(bf16), &cfg, Some(&mut qgraphs), &data, How::Queued);
            let tol = if same_products { 1e-5 } else { 1e-4 };
            assert_eq!(qgraphs.queued(), 0, "every queued metric was read");
            // Two graphs per bucket alternate for queued steps: more captures, the same numbers.
            assert!(qgraphs.len() > graphs.len(), "{} queued graphs vs {}", qgraphs.len(), graphs.len());
            // (The device's sum equals the host's bit for bit on the same losses, see
            // step_metrics_emu_match_the_host_computation; across two runs the emulator's atomics
            // may order the embedding gradient's sums differently.)
            for (i, (a, b)) in queued.losses.iter().zip(&graphed.losses).enumerate() {
                assert!(
                    (a - b).abs() <= tol * b.abs(),
                    "d2l {d2l} bf16 {bf16}: loss of step {i}: queued (on the device) {a} vs graphed (host) {b}"
                );
            }
            assert_eq!(
                queued.correct, graphed.correct,
                "d2l {d2l} bf16 {bf16}: correct counts, queued vs graphed"
            );
            if same_products {
                let worst = queued
                    .params
                    .iter()
                    .zip(&graphed.params)
                    .map(|(a, b)| (a - b).abs() / (1e-3 + b.abs()))
                    .fold(0.0, f64::max);
                assert!(worst < 1e-4, "queued vs graphed parameters differ by {worst:e}");
            }
            let what = format!("d2l {d2l} bf16 {bf16}");
            // Same ops on the same data; only the order of some sums may differ (the emulator's
            // randomised atomics schedule in the embedding gradient; on a GPU also the products'
            // algorithms, chosen for the padded row count).
            for (i, (a, b)) in graphed.losses.iter().zip(&launched.losses).enumerate() {
                assert!(
                    (a - b).abs() <= tol * b.abs(),
                    "{what}: loss of step {i}: graphed {a} vs launched {b}"
                );
            }
            let worst = if same_products {
                assert_eq!(graphed.correct, launched.correct, "{what}: correct counts");
                graphed
                    .params
                    .iter()
                    .zip(&launched.params)
                    .map(|(a, b)| (a - b).abs() / (1e-3 + b.abs()))
                    .fold(0.0, f64::max)
            } else {
                let num: f64 =
                    graphed.params.iter().zip(&launched.params).map(|(a, b)| (a - b) * (a - b)).sum();
                let den: f64 = launched.params.iter().map(|b| b * b).sum();
                (num / den).sqrt()
            };
            assert!(worst < 1e-4, "{what}: parameters after {} steps differ by {worst:e}", data.len());
            // Packed lengths 26, 30, 25, 40, 31, 45, 27, 24, 42, 27 and 23 in buckets of 16:
            // graphs for 32 tokens (3 examples), 48 (3) and 32 (2, the last batch); the first steps
            // capture again when the gradients become known clean and when the embedding-row list
            // outgrows its power of four; then the steps are updates.
            println!(
                "{what}: {} steps, {} captures ({} after a mismatch, last: {:?}), {} updates",
                data.len(),
                graphs.captures,
                graphs.recaptures,
                graphs.last_mismatch,
                graphs.updates
            );
            assert!(
                graphs.captures >= 3 && graphs.updates >= 3,
                "captures {} updates {} recaptures {} (last: {:?})",
                graphs.captures,
                graphs.updates,
                graphs.recaptures,
                graphs.last_mismatch
            );
            assert_eq!(
                graphs.captures,
                graphs.len() + graphs.recaptures + graphs.dropped,
                "every capture but the replaced and dropped ones is held"
            );
            // The first 48-token batch grows the activations (capacity 32 → 64): the graphs
            // recorded before are dropped, not replayed.
            assert!(graphs.dropped >= 1, "graphs recorded before the activations grew were dropped");
        }
    }
}

#[test]
fn graphed_step_with_a_nonfinite_loss_leaves_the_parameters() {
    let cfg = cfg(true);
    let be = emu(true);
    let host = init_params(&ParamLayout::new(&cfg), 3);
    let mut model = Model::from_host(&be, cfg.clone(), &cast_params::<f32>(&host)).unwrap();
    let mut acts = Acts::new(&be, &cfg).unwrap();
    let mut opt = Adam::new(&be, &model, AdamConfig::adam(1e-2)).unwrap();
    let mut graphs = StepGraphs::new(16);
    let mut data = batches();
    let mode = |s: u64| Mode { dropout: 0.2, seed: 9, step: s };
    // Two good steps (capture, then an update of the same graph), then the same bucket with a
    // label outside 0..3: the loss is NaN and Adam must skip on the device.
    model.train_step_graphed(&be, &mut opt, &mut acts, &data[0], mode(0), &mut graphs).unwrap();
    model.train_step_graphed(&be, &mut opt, &mut acts, &data[2], mode(1), &mut graphs).unwrap();
    let before = model.params_host(&be).unwrap();
    data[0].labels[1] = 7;
    let o = model.train_step_graphed(&be, &mut opt, &mut acts, &data[0], mode(2), &mut graphs).unwrap();
    assert!(o.loss_sum.is_nan(), "the out-of-range label gives a NaN loss, got {}", o.loss_sum);
    assert!(graphs.updates >= 1, "the bad step ran through an updated graph");
    assert_eq!(model.params_host(&be).unwrap(), before, "parameters changed after a non-finite loss");
    // and the guard does not stick: the next good step moves them
    model.train_step_graphed(&be, &mut opt, &mut acts, &data[2], mode(3), &mut graphs).unwrap();
    assert_ne!(model.params_host(&be).unwrap(), before, "a good step after the bad one must update");
    be.check().unwrap();
}

#[test]
fn graph_updates_detect_a_changed_step_and_capture_refuses_reads() {
    let be = emu(false);
    let x = be.upload(&[1.0f32; 300]).unwrap();
    let mut y = be.alloc(300).unwrap();
    let g = be
        .graph_capture(&mut || {
            be.activation_forward(
                be.slice_mut(&mut y, 0..300),
                be.slice(&x, 0..300),
                nli_bert::backend::Activation::Tanh,
            );
            Ok(())
        })
        .unwrap();
    // nothing ran while capturing
    assert_eq!(be.download(be.view(&y)).unwrap(), vec![0.0; 300]);
    be.graph_replay(&g).unwrap();
    assert!(be.download(be.view(&y)).unwrap().iter().all(|&v| (v - 1f32.tanh()).abs() < 1e-6));
    // the same op over fewer elements: another launch shape, not an update
    let same = be
        .graph_update(&g, &mut || {
            be.activation_forward(
                be.slice_mut(&mut y, 0..300),
                be.slice(&x, 0..300),
                nli_bert::backend::Activation::Relu,
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(same, None, "a changed argument (the activation) is an update");
    let changed = be
        .graph_update(&g, &mut || {
            be.activation_forward(
                be.slice_mut(&mut y, 0..10),
                be.slice(&x, 0..10),
                nli_bert::backend::Activation::Relu,
            );
            Ok(())
        })
        .unwrap();
    assert!(changed.is_some_and(|w| w.contains("grid")), "a changed launch shape must not update the graph");
    let err = be
        .graph_capture(&mut || {
            be.download(be.view(&x))?;
            Ok(())
        })
        .err()
        .expect("reading back while capturing is an error");
    assert!(err.to_string().contains("capturing"), "{err}");
}

#[test]
fn loss_nonfinite_emu_matches_cpu_twin() {
    use nli_bert::backend::gpu::device::{Device, KArg, LaunchCfg};
    let e = Emu::new().unwrap();
    for n in [1usize, 7, 256, 300, 1000] {
        for bad in [None, Some((0, f32::NAN)), Some((n - 1, f32::INFINITY)), Some((n / 2, f32::NEG_INFINITY))]
        {
            let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 20.0).collect();
            if let Some((i, x)) = bad {
                v[i] = x;
            }
            let want = any_nonfinite(&v);
            // SAFETY: fresh allocations sized for the data and the flag.
            unsafe {
                let d = e.alloc(n * 4).unwrap();
                e.copy_htod(d, bytemuck::cast_slice(&v)).unwrap();
                let flag = e.alloc(4).unwrap();
                e.copy_htod(flag, &7i32.to_le_bytes()).unwrap();
                let cfg = LaunchCfg::linear(1, 256, 0);
                e.launch("loss_nonfinite", &cfg, &[KArg::Ptr(d), KArg::I32(n as i32), KArg::Ptr(flag)])
                    .unwrap();
                let mut out = [0u8; 4];
                e.copy_dtoh(flag, &mut out).unwrap();
                assert_eq!(i32::from_le_bytes(out) != 0, want, "n {n}, bad {bad:?}");
                e.free(d);
                e.free(flag);
            }
        }
    }
}

#[test]
fn step_metrics_emu_match_the_host_computation() {
    use nli_bert::model::bert::upload_batch;
    // The loss sum (f64, in order) and the argmax count of step_metrics against Model::output's,
    // bit for bit, with ties, NaN and infinite values among the logits.
    let be = emu(false);
    let k = 3;
    let mut rng = HostRng::new(8, 1);
    for (slot, nb) in [(0usize, 1usize), (1, 7), (1023, 300)] {
        let lens = vec![1; nb];
        let b = packed_batch(&lens, V, &mut rng, Labels::PerSequence);
        let mut logits: Vec<f32> = (0..nb * k).map(|_| (rng.below(5) as f32) - 2.0).collect();
        if nb > 3 {
            logits[3] = f32::NAN;
            logits[4] = f32::INFINITY;
            logits[8] = f32::NAN;
        }
        let losses: Vec<f32> =
            (0..nb).map(|i| 0.1 + i as f32 * 1e-3 + (rng.below(1000) as f32) * 1e-7).collect();
        let db = upload_batch(&be, &b).unwrap();
        let (lb, gb) = (be.upload(&losses).unwrap(), be.upload(&logits).unwrap());
        assert!(be.metrics_push(slot, be.view(&lb), be.view(&gb), &db, k).unwrap());
        let got = be.metrics_read(slot, 1).unwrap();
        let want_sum: f64 = losses.iter().map(|&x| x as f64).sum();
        let want_correct = (0..nb)
            .filter(|&i| nli_bert::model::bert::argmax(&logits[i * k..(i + 1) * k]) as i32 == b.labels[i])
            .count();
        assert_eq!(got, vec![(want_sum, want_correct, nb)], "slot {slot}, {nb} examples");
    }
}

#[test]
fn graphs_survive_an_evaluation_that_grows_the_activations() {
    // An evaluation between steps on a batch longer than any training batch reallocates the
    // activations; graphs recorded before then address freed buffers and must not be replayed as
    // they are (the step code drops them when the activations' generation changes; an update
    // would also find the products' pointers changed).
    let cfg = cfg(true);
    let data = batches();
    let mut rng = HostRng::new(77, 0);
    let big = packed_batch(&[24, 24, 24, 24, 24], V, &mut rng, Labels::PerSequence);
    let go = |graphed: bool| {
        let be = emu(true);
        let host = init_params(&ParamLayout::new(&cfg), 3);
        let mut model = Model::from_host(&be, cfg.clone(), &cast_params::<f32>(&host)).unwrap();
        let mut acts = Acts::new(&be, &cfg).unwrap();
        let mut opt = Adam::new(&be, &model, AdamConfig::adam(1e-2)).unwrap();
        let mut graphs = StepGraphs::new(16);
        let mut losses = Vec::new();
        for (step, b) in data.iter().enumerate() {
            let mode = Mode { dropout: 0.2, seed: 9, step: step as u64 };
            let o = if graphed {
                model.train_step_graphed(&be, &mut opt, &mut acts, b, mode, &mut graphs).unwrap()
            } else {
                model.train_step(&be, &mut opt, &mut acts, b, mode).unwrap()
            };
            losses.push(o.loss_sum);
            if step == 5 {
                let db = nli_bert::model::bert::upload_batch(&be, &big).unwrap();
                let before = acts.generation();
                let e = model.forward(&be, &mut acts, &db, Mode { dropout: 0.0, seed: 0, step: 0 }).unwrap();
                assert!(
                    acts.generation() > before && e.loss_sum.is_finite(),
                    "the evaluation grows the activations"
                );
            }
        }
        be.check().unwrap();
        (losses, model.params_host(&be).unwrap())
    };
    let (gl, gp) = go(true);
    let (ll, lp) = go(false);
    for (i, (a, b)) in gl.iter().zip(&ll).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "loss of step {i}: graphed {a} vs launched {b}");
    }
    let worst =
        gp.iter().zip(&lp).map(|(a, b)| ((a - b).abs() / (1e-3 + b.abs())) as f64).fold(0.0, f64::max);
    assert!(worst < 1e-4, "parameters differ by {worst:e}");
}

#[test]
fn stepper_falls_back_op_by_op_when_graphs_fail() {
    use nli_bert::train::step::{GraphsSel, Stepper};
    // A device whose graph capture fails: with --graphs auto the run goes on op by op after a
    // warning, with the same numbers as a run that never tried (the optimizer's step count given
    // back); with --graphs on it is an error.
    let cfg = cfg(true);
    let data = batches();
    let go = |refuse: bool, sel: GraphsSel| -> nli_bert::Result<(Vec<f64>, Vec<f32>, bool)> {
        let be = Gpu::new_bf16(Emu::new().unwrap().with_capture_refused(refuse));
        let host = init_params(&ParamLayout::new(&cfg), 3);
        let mut model = Model::from_host(&be, cfg.clone(), &cast_params::<f32>(&host)).unwrap();
        let mut acts = Acts::new(&be, &cfg).unwrap();
        let mut opt = Adam::new(&be, &model, AdamConfig::adam(1e-2)).unwrap();
        let mut stepper = Stepper::new(&be, sel, cfg.heads, cfg.hidden)?;
        let mut losses = Vec::new();
        for (step, b) in data.iter().enumerate() {
            stepper.step(
                &mut model,
                &be,
                &mut opt,
                &mut acts,
                b,
                Mode { dropout: 0.2, seed: 9, step: step as u64 },
            )?;
            losses.extend(stepper.drain(&be)?.into_iter().map(|o| o.loss_sum));
        }
        assert_eq!(opt.t, data.len() as u64, "one optimizer step per batch");
        Ok((losses, model.params_host(&be).unwrap(), stepper.graphs().is_some()))
    };
    let (fl, fp, graphs_left) = go(true, GraphsSel::Auto).unwrap();
    assert!(!graphs_left, "the stepper gave up on graphs");
    let (ol, op, _) = go(false, GraphsSel::Off).unwrap();
    assert_eq!(fl.len(), data.len());
    for (i, (a, b)) in fl.iter().zip(&ol).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "loss of step {i}: after the fallback {a} vs op by op {b}");
    }
    let worst =
        fp.iter().zip(&op).map(|(a, b)| ((a - b).abs() / (1e-3 + b.abs())) as f64).fold(0.0, f64::max);
    assert!(worst < 1e-4, "parameters differ by {worst:e}");
    let err = go(true, GraphsSel::On).expect_err("--graphs on with a failing capture is an error");
    assert!(err.to_string().contains("capture refused"), "{err}");
}
