//! The CLI as a user runs it: a subprocess on small data written here.

mod common;

use common::{text, write_tsv};

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nli-bert"));
    c.env("NLI_BERT_HOME", std::env::temp_dir().join("nli-bert-cli-test-cache"));
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("running nli-bert")
}

/// The arguments of a small fine-tune (a one-block model on 90 generated pairs, tested on 30).
fn small_args(dir: &Path, out: &Path, precision: &str) -> Vec<String> {
    let train = write_tsv(dir, "train.tsv", 90, 0);
    let test = write_tsv(dir, "test.tsv", 30, 1000);
    [
        "finetune",
        "--model",
        "scratch",
        "--data",
        train.to_str().unwrap(),
        "--test-data",
        test.to_str().unwrap(),
        "--hidden",
        "16",
        "--ffn",
        "32",
        "--heads",
        "2",
        "--layers",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--threads",
        "1",
        "--precision",
        precision,
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn small_finetune(dir: &Path, out: &Path, precision: &str, extra: &[&str]) -> Output {
    let mut args = small_args(dir, out, precision);
    if extra.contains(&"--epochs") {
        let at = args.iter().position(|a| a == "--epochs").unwrap();
        args.drain(at..at + 2);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    bin().args(&args).output().expect("running nli-bert")
}

#[test]
fn cli_finetune_eval_predict_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let o = small_finetune(tmp.path(), &out, "f32", &[]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "finetune failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "two epoch lines and d2l's two final lines:\n{stdout}");
    for (i, l) in lines[..2].iter().enumerate() {
        assert!(l.starts_with(&format!("epoch {}/2: loss ", i + 1)), "{l}");
        assert!(
            l.contains(", train acc ")
                && l.contains(", test acc ")
                && l.contains(" examples/sec on cpu (1 thread)"),
            "{l}"
        );
    }
    assert!(lines[2].starts_with("loss ") && lines[2].contains("test acc"), "{}", lines[2]);
    assert!(lines[3].ends_with("examples/sec on cpu (1 thread)"), "{}", lines[3]);
    assert!(stderr.contains("read 90 examples"), "{stderr}");

    for f in ["model.safetensors", "config.json", "vocab.json", "metrics.jsonl"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 2);
    for (i, m) in metrics.iter().enumerate() {
        assert_eq!(m["epoch"].as_u64(), Some(i as u64 + 1));
        for k in ["loss", "train_acc", "test_acc", "examples_per_sec", "seconds"] {
            assert!(m[k].as_f64().is_some(), "metrics.jsonl lacks {k}: {m}");
        }
    }
    // The epoch line prints the metrics file's numbers.
    let acc = metrics[1]["test_acc"].as_f64().unwrap();
    assert!(lines[1].contains(&format!("test acc {acc:.3}")), "{} vs {acc}", lines[1]);

    // eval --json on the same test file gives the same accuracy, and a consistent confusion matrix.
    let test = tmp.path().join("test.tsv");
    let o = run(&["eval", "--model", out.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["n"].as_u64(), Some(30));
    assert!((v["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
    let conf: Vec<Vec<u64>> = serde_json::from_value(v["confusion"].clone()).unwrap();
    let diag: u64 = (0..3).map(|i| conf[i][i]).sum();
    let total: u64 = conf.iter().flatten().sum();
    assert_eq!(total, 30);
    assert!((diag as f64 / 30.0 - acc).abs() < 1e-12);
    assert!(v["loss"].as_f64().unwrap() > 0.0);

    // predict --json on a file: one object per pair, probabilities sum to 1, label = argmax.
    let o = run(&["predict", "--model", out.to_str().unwrap(), "--input", test.to_str().unwrap(), "--json"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let preds: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(preds.len(), 30);
    let mut correct = 0;
    let gold: Vec<String> = std::fs::read_to_string(&test)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    for (p, g) in preds.iter().zip(&gold) {
        let probs: Vec<f64> = serde_json::from_value(p["probs"].clone()).unwrap();
        let logits: Vec<f64> = serde_json::from_value(p["logits"].clone()).unwrap();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let am = (0..3).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        let names = ["entailment", "contradiction", "neutral"];
        assert_eq!(p["label"].as_str(), Some(names[am]));
        if names[am] == g {
            correct += 1;
        }
    }
    assert!((correct as f64 / 30.0 - acc).abs() < 1e-12, "predict and eval disagree");

    // A --max-len beyond the model's positional table is a usage error, not a crash.
    let o = run(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--max-len",
        "129",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("128 positions"), "{}", text(&o).1);

    // One pair from flags.
    let o = run(&[
        "predict",
        "--model",
        out.to_str().unwrap(),
        "--premise",
        "a man is running",
        "--hypothesis",
        "a man is not running",
        "--json",
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    assert!(v["label"].is_string() && v["probs"].as_array().unwrap().len() == 3);

    // A saved model fine-tunes further.
    let out2 = tmp.path().join("model2");
    let o = run(&[
        "finetune",
        "--model",
        out.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--out",
        out2.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(out2.join("model.safetensors").is_file());
}

#[test]
fn cli_f64_runs_are_bit_reproducible_and_saved_as_f64() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert!(small_finetune(tmp.path(), &a, "f64", &["--dropout", "0.3"]).status.success());
    assert!(small_finetune(tmp.path(), &b, "f64", &["--dropout", "0.3"]).status.success());
    let strip = |p: &Path| -> Vec<(String, String, String)> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["loss"].to_string(), v["train_acc"].to_string(), v["test_acc"].to_string())
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
    let t = nli_bert::model::checkpoint::safetensors::load_safetensors(&a.join("model.safetensors")).unwrap();
    assert!(t.iter().all(|t| t.dtype.name() == "float64"), "{:?}", t[0].dtype);
    // A different seed gives a different run.
    let c = tmp.path().join("c");
    assert!(small_finetune(tmp.path(), &c, "f64", &["--dropout", "0.3", "--seed", "1"]).status.success());
    assert_ne!(strip(&a), strip(&c));
}

#[test]
fn cli_bad_inputs_give_clear_errors_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing data file: runtime error naming the file.
    let o = run(&["finetune", "--model", "scratch", "--data", "/nonexistent/train.tsv"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("/nonexistent/train.tsv"), "{}", text(&o).1);
    // Malformed TSV: file:line.
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "label\tpremise\thypothesis\nentailment\tonly two columns\n").unwrap();
    let o = run(&["finetune", "--model", "scratch", "--data", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("bad.tsv:2"), "{}", text(&o).1);
    // Unknown label.
    std::fs::write(&bad, "label\tpremise\thypothesis\nmaybe\ta b\tc d\n").unwrap();
    let o = run(&["finetune", "--model", "scratch", "--data", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("bad.tsv:2") && text(&o).1.contains("maybe"), "{}", text(&o).1);
    // Not a model directory: usage error.
    let o = run(&["eval", "--model", tmp.path().to_str().unwrap(), "--data", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("pretrained.params"), "{}", text(&o).1);
    // Unknown flag and bad values: usage errors (clap and ours).
    assert_eq!(run(&["finetune", "--no-such-flag"]).status.code(), Some(2));
    let good = write_tsv(tmp.path(), "good.tsv", 9, 0);
    let o = run(&["finetune", "--model", "scratch", "--data", good.to_str().unwrap(), "--max-len", "3"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[
        "finetune",
        "--model",
        "scratch",
        "--data",
        good.to_str().unwrap(),
        "--hidden",
        "10",
        "--heads",
        "4",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("divisible"), "{}", text(&o).1);
    // A corrupt checkpoint: error naming it, nothing run.
    let d = tmp.path().join("d2l");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("vocab.json"), "[\"<unk>\", \"<pad>\", \"<cls>\", \"<sep>\"]").unwrap();
    std::fs::write(d.join("pretrained.params"), b"PK\x03\x04garbage").unwrap();
    let o = run(&["finetune", "--model", d.to_str().unwrap(), "--data", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("pretrained.params"), "{}", text(&o).1);
    // No half-written output directory contents after a failure before training.
    assert!(!tmp.path().join("never").exists());
}

#[test]
fn cli_demo_trains_from_scratch_and_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = run(&[
        "demo",
        "--train-size",
        "4000",
        "--test-size",
        "600",
        "--epochs",
        "3",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("held-out accuracy "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accuracy line:\n{stdout}"));
    // Chance is 1/3; three epochs on 4k generated pairs reach ~0.85 (the default run: ~0.96).
    assert!(acc > 0.7, "held-out accuracy {acc}\n{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains(" => ")).count(), 3, "{stdout}");
    assert!(out.join("model.safetensors").is_file() && out.join("metrics.jsonl").is_file());
}

/// The lines of a run's metrics.jsonl.
fn read_metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metrics_no_timing(dir: &Path) -> Vec<String> {
    read_metrics(dir)
        .iter()
        .map(|v| format!("{} {} {} {} {}", v["epoch"], v["loss"], v["train_acc"], v["test_acc"], v["steps"]))
        .collect()
}

#[test]
fn cli_resume_after_interruption_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    // 90 training pairs, batch 16: 6 steps per epoch, 2 epochs.
    let o = small_finetune(tmp.path(), &full, "f32", &["--dropout", "0.3", "--save-every", "2"]);
    assert!(o.status.success(), "{}", text(&o).1);
    for stop in ["5", "8"] {
        // Interrupted mid-epoch 1 (step 5) or mid-epoch 2 (step 8), then resumed.
        let _ = std::fs::remove_dir_all(&cut);
        let o = small_finetune(
            tmp.path(),
            &cut,
            "f32",
            &["--dropout", "0.3", "--save-every", "2", "--max-steps", stop],
        );
        assert!(o.status.success(), "{}", text(&o).1);
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cut.join("checkpoint/state.json")).unwrap())
                .unwrap();
        assert_eq!(state["train"]["step"].as_u64(), Some(stop.parse().unwrap()));
        let o = run(&["finetune", "--resume", cut.to_str().unwrap(), "--threads", "1"]);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stderr}");
        assert!(stderr.contains("resuming"), "{stderr}");
        assert_eq!(stdout.lines().filter(|l| l.starts_with("epoch ")).count(), 2, "{stdout}");
        assert_eq!(metrics_no_timing(&full), metrics_no_timing(&cut), "resumed at step {stop}");
        assert_eq!(
            std::fs::read(full.join("model.safetensors")).unwrap(),
            std::fs::read(cut.join("model.safetensors")).unwrap(),
            "final weights differ after resuming at step {stop}"
        );
    }
    // Resuming a directory without a checkpoint is a usage error.
    let o = run(&["finetune", "--resume", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
}

#[test]
fn cli_resume_with_more_epochs_continues_and_max_steps_says_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, short) = (tmp.path().join("full"), tmp.path().join("short"));
    let o = small_finetune(tmp.path(), &full, "f32", &["--dropout", "0.3"]);
    assert!(o.status.success(), "{}", text(&o).1);
    // A 1-epoch run resumed with --epochs 2 continues to 2 epochs: the same run as 2 at once.
    let o = small_finetune(tmp.path(), &short, "f32", &["--dropout", "0.3", "--epochs", "1"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = run(&["finetune", "--resume", short.to_str().unwrap(), "--threads", "1", "--epochs", "2"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("continuing the run to 2 epochs (it was started for 1)"), "{stderr}");
    assert!(stdout.contains("epoch 2/2: "), "{stdout}");
    assert_eq!(metrics_no_timing(&full), metrics_no_timing(&short));
    assert_eq!(
        std::fs::read(full.join("model.safetensors")).unwrap(),
        std::fs::read(short.join("model.safetensors")).unwrap(),
        "1 + 1 epochs must give the weights of 2"
    );
    // Asking for no more epochs than are done is a usage error that says why; nothing changes.
    let before = std::fs::read(short.join("model.safetensors")).unwrap();
    let o = run(&["finetune", "--resume", short.to_str().unwrap(), "--epochs", "2"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("already completed 2 epoch(s)"), "{}", text(&o).1);
    assert_eq!(std::fs::read(short.join("model.safetensors")).unwrap(), before);

    // --max-steps: the partial epoch's line and stderr say the run was stopped, and where.
    let cut = tmp.path().join("cut");
    let o = small_finetune(tmp.path(), &cut, "f32", &["--max-steps", "3"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("epoch 1/2 (stopped by --max-steps after batch 3/6): loss"), "{stdout}");
    assert!(
        stderr.contains("stopped by --max-steps 3 at step 3 (epoch 1/2, batch 3/6); continue with `nli-bert finetune --resume"),
        "{stderr}"
    );
    // Without a terminal, no progress line repeats an epoch's last batch (the epoch line does).
    assert!(!stderr.lines().any(|l| l.starts_with("epoch ") && l.contains(" 6/6 loss")), "{stderr}");
    let o = small_finetune(tmp.path(), &tmp.path().join("plain"), "f32", &[]);
    assert!(
        !text(&o).1.lines().any(|l| l.starts_with("epoch ") && l.contains(" 6/6 loss")),
        "{}",
        text(&o).1
    );
}

#[test]
fn cli_resume_and_max_steps_with_step_graphs_on_emu() {
    // The queued graph steps read their losses at checkpoints and stops: a run resumed after one
    // epoch, and one stopped by --max-steps, report what the uninterrupted run reports (up to the
    // emulator's atomics order: not byte for byte).
    let tmp = tempfile::tempdir().unwrap();
    let (full, short, cut) = (tmp.path().join("full"), tmp.path().join("short"), tmp.path().join("cut"));
    let emu = ["--device", "emu", "--graphs", "on"];
    let o = small_finetune(tmp.path(), &full, "bf16", &emu);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = small_finetune(tmp.path(), &short, "bf16", &[&emu[..], &["--epochs", "1"]].concat());
    assert!(o.status.success(), "{}", text(&o).1);
    let o = run(&[
        &["finetune", "--resume", short.to_str().unwrap(), "--threads", "1", "--epochs", "2"],
        &emu[..],
    ]
    .concat());
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("epoch 2/2: ") && stdout.contains("step graphs"), "{stdout}");
    let (a, b) = (read_metrics(&full), read_metrics(&short));
    assert_eq!(a.len(), 2);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-4 * lx.abs(), "loss whole run {lx} vs resumed {ly}");
        assert_eq!(x["steps"], y["steps"]);
        assert_eq!(x["examples"], y["examples"]);
    }
    let o = small_finetune(tmp.path(), &cut, "bf16", &[&emu[..], &["--max-steps", "3"]].concat());
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("epoch 1/2 (stopped by --max-steps after batch 3/6): loss"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let loss: f64 =
        line.split("loss ").nth(1).and_then(|r| r.split(',').next()).and_then(|x| x.parse().ok()).unwrap();
    assert!(loss.is_finite() && loss > 0.5, "the stopped epoch's loss was read from the device: {line}");
    let m = read_metrics(&cut);
    assert_eq!(m[0]["examples"], 48, "3 batches of 16 were counted: {:?}", m[0]);
}

#[test]
fn cli_curves_svg_parses_and_holds_three_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    assert!(small_finetune(tmp.path(), &out, "f32", &[]).status.success());
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("curves.svg is well-formed XML");
    let count = |id: &str| -> usize {
        let n =
            doc.descendants().find(|n| n.attribute("id") == Some(id)).unwrap_or_else(|| panic!("no {id}"));
        n.attribute("points").unwrap().split_whitespace().count()
    };
    // Five points per epoch (6 batches: every batch // 5 = 1 → 6 points) for the training curves,
    // one per epoch for the test accuracy.
    assert_eq!(count("train-loss"), 12);
    assert_eq!(count("train-acc"), 12);
    assert_eq!(count("test-acc"), 2);
    for label in ["train loss", "train acc", "test acc", "epoch"] {
        assert!(doc.descendants().any(|n| n.text() == Some(label)), "legend/axis label {label:?} missing");
    }
    let title = doc.descendants().find(|n| n.attribute("id") == Some("title")).and_then(|n| n.text());
    assert!(title.is_some_and(|t| t.contains("on train.tsv (test: test.tsv)")), "{title:?}");
}

#[test]
fn cli_ctrl_c_saves_a_checkpoint_and_the_run_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write_tsv(tmp.path(), "big.tsv", 1500, 0);
    let args = |out: &Path| -> Vec<String> {
        [
            "finetune",
            "--model",
            "scratch",
            "--data",
            train.to_str().unwrap(),
            "--hidden",
            "16",
            "--ffn",
            "32",
            "--heads",
            "2",
            "--layers",
            "1",
            "--epochs",
            "30",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--threads",
            "1",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let cut = tmp.path().join("cut");
    let child = bin()
        .args(args(&cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first epoch's checkpoint, then interrupt.
    let t0 = std::time::Instant::now();
    while !cut.join("checkpoint/state.json").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let done = child.wait_with_output().unwrap();
    let status = done.status;
    assert_eq!(status.code(), Some(130), "Ctrl-C must exit with 130 after saving");
    let stderr = String::from_utf8_lossy(&done.stderr);
    let hint = format!("continue with `nli-bert finetune --resume {}`", cut.display());
    assert!(stderr.contains(&hint), "the message must name the run's directory: {stderr}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("checkpoint/state.json")).unwrap()).unwrap();
    let stopped_at = state["train"]["step"].as_u64().unwrap();
    assert!(stopped_at > 0 && stopped_at < 30 * 94, "stopped at step {stopped_at}");
    let o = run(&["finetune", "--resume", cut.to_str().unwrap(), "--threads", "1", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let full = tmp.path().join("full");
    let o = bin().args(args(&full)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(metrics_no_timing(&full), metrics_no_timing(&cut), "interrupted at step {stopped_at}");
    assert_eq!(
        std::fs::read(full.join("model.safetensors")).unwrap(),
        std::fs::read(cut.join("model.safetensors")).unwrap()
    );
}

#[test]
fn cli_finetune_on_emu_device_matches_cpu() {
    // The same run on the CPU engine and on our CUDA kernels under the emulator (--device emu):
    // the epoch lines name the device, and the metrics agree to f32 rounding.
    let dir = tempfile::tempdir().unwrap();
    let (cpu_out, emu_out) = (dir.path().join("cpu"), dir.path().join("emu"));
    let o = small_finetune(dir.path(), &cpu_out, "f32", &["--device", "cpu"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = small_finetune(dir.path(), &emu_out, "f32", &["--device", "emu"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with("epoch "))
            .all(|l| l.ends_with("on emu, f32, fused epilogues")),
        "{stdout}"
    );
    let (c, e) = (read_metrics(&cpu_out), read_metrics(&emu_out));
    assert_eq!(c.len(), 2);
    assert_eq!(c.len(), e.len());
    for (c, e) in c.iter().zip(&e) {
        let (lc, le) = (c["loss"].as_f64().unwrap(), e["loss"].as_f64().unwrap());
        assert!((lc - le).abs() <= 1e-4 * lc.abs(), "loss cpu {lc} vs emu {le}");
        for k in ["train_acc", "test_acc", "steps"] {
            assert_eq!(c[k], e[k], "{k}: cpu {} vs emu {}", c[k], e[k]);
        }
    }
    // --precision f64 is CPU-only: a usage error (exit 2) naming the fix.
    let o = small_finetune(dir.path(), &dir.path().join("x"), "f64", &["--device", "emu"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("--precision f64 runs on the CPU only"), "{:?}", text(&o));
}

#[test]
fn cli_bench_tiny_cpu_prints_the_speed_figures() {
    let o = run(&["bench", "--shape", "tiny", "--steps", "3", "--device", "cpu", "--batch-size", "16"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.starts_with("bench tiny: hidden 64"), "{stdout}");
    let step = stdout.lines().find(|l| l.starts_with("train step: ")).unwrap_or_else(|| panic!("{stdout}"));
    // every figure present and positive
    for unit in ["ms/step", "examples/s", "tokens/s", "TFLOP/s", "GB/s"] {
        let before = step.split(&format!(" {unit}")).next().unwrap_or_default();
        let x: f64 = before.rsplit([' ', '(']).next().unwrap_or_default().parse().unwrap_or(-1.0);
        assert!(x > 0.0, "{unit} in {step}");
    }
    assert!(!stdout.contains("H100"), "the H100 fractions are for CUDA devices: {stdout}");
    // --json: the same figures, and 3 steps of 16 examples
    let o =
        run(&["bench", "--shape", "tiny", "--steps", "3", "--device", "cpu", "--batch-size", "16", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["step"]["examples"], 48);
    for k in ["examples_per_s", "tokens_per_s", "tflops", "gbps"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    // bad arguments are usage errors
    let o = run(&["bench", "--shape", "tiny", "--steps", "0", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    // --breakdown: the CPU engine says it cannot time single ops
    let o = run(&[
        "bench",
        "--shape",
        "tiny",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--breakdown",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("breakdown: cpu"), "{:?}", text(&o));
}

#[test]
fn cli_bench_step_graphs_on_emu() {
    // bf16 (flash attention): the steps run as recorded graphs by default, and say so; --graphs
    // off launches every op; --graphs on where graphs cannot run is a usage error.
    let args =
        ["bench", "--shape", "tiny", "--steps", "3", "--warmup", "1", "--device", "emu", "--batch-size", "8"];
    let o = run(&[&args[..], &["--precision", "bf16", "--json"]].concat());
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let g = &v["step"]["graphs"];
    assert!(g["captures"].as_u64().unwrap() >= 1 && g["bucket"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        g["captures"].as_u64().unwrap() + g["updates"].as_u64().unwrap(),
        4,
        "every step (warm-up included) is a capture or an update: {v}"
    );
    assert!(v["step"]["device"].as_str().unwrap().ends_with(", step graphs"), "{v}");
    let o = run(&[&args[..], &["--precision", "bf16", "--json", "--graphs", "off"]].concat());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["step"]["graphs"].is_null() && !v["step"]["device"].as_str().unwrap().contains("graphs"),
        "{v}"
    );
    let o = run(&["bench", "--shape", "tiny", "--steps", "1", "--device", "cpu", "--graphs", "on"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("--graphs on"), "{:?}", text(&o));
}

#[test]
fn cli_bench_breakdown_on_emu_times_every_op_family() {
    let args = ["bench", "--shape", "tiny", "--steps", "1", "--warmup", "0", "--device", "emu"];
    let o =
        run(&[&args[..], &["--batch-size", "8", "--precision", "bf16", "--breakdown", "--json"]].concat());
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let b = &v["step"]["breakdown"];
    let fams = b["families"].as_array().unwrap_or_else(|| panic!("{v}"));
    let names: Vec<&str> = fams.iter().map(|f| f["family"].as_str().unwrap()).collect();
    // every kernel family of a bf16 training step ran and took time; shares add up to 1
    for f in ["matmul", "attention", "layernorm", "activation", "classifier", "adam", "embedding", "reduce"] {
        let e =
            fams.iter().find(|x| x["family"] == f).unwrap_or_else(|| panic!("{f} missing from {names:?}"));
        assert!(e["ms_per_step"].as_f64().unwrap() > 0.0, "{f}: {e}");
    }
    assert!(!names.contains(&"other"), "every kernel has a family: {names:?}");
    // cuBLAS rounds the bf16 operands inside the GEMM: no conversion kernel runs, unless the
    // first bf16 path is asked for
    assert!(!names.contains(&"convert"), "bf16 GEMMs convert nothing: {names:?}");
    let o = bin()
        .args([&args[..], &["--batch-size", "8", "--precision", "bf16", "--breakdown", "--json"]].concat())
        .env("NLI_BERT_BF16_GEMM", "copies")
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", text(&o)));
    let copies =
        v["step"]["breakdown"]["families"].as_array().unwrap().iter().any(|f| f["family"] == "convert");
    assert!(copies && v["step"]["device"].as_str().unwrap().contains("bf16 GEMMs on copies"), "{v}");
    let share: f64 = fams.iter().map(|f| f["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9, "shares sum to {share}");
    // the ops' times account for the wall time of the steps (the emulator runs launches in line)
    let ops: f64 = fams.iter().map(|f| f["ms_per_step"].as_f64().unwrap()).sum();
    let wall = b["wall_ms_per_step"].as_f64().unwrap();
    assert!(ops <= wall * 1.001 && ops >= 0.5 * wall, "ops {ops} ms vs wall {wall} ms");
    assert!(fams.iter().any(|f| f["family"] == "matmul" && f["tflops"].as_f64().unwrap() > 0.0));
    // the text form prints the table
    let o = run(&[&args[..], &["--batch-size", "8", "--breakdown"]].concat());
    let out = text(&o).0;
    assert!(out.contains("breakdown over 1 more steps") && out.contains("  matmul "), "{out}");
}

#[test]
fn cli_finetune_with_step_graphs_matches_op_by_op() {
    // The same bf16 run on the emulator with the steps as queued graphs (the default there: their
    // losses read a few steps later, from the device) and op by op: the same metrics, up to the
    // order of the embedding gradient's atomics.
    let dir = tempfile::tempdir().unwrap();
    let (on, off) = (dir.path().join("on"), dir.path().join("off"));
    let o = small_finetune(dir.path(), &on, "bf16", &["--device", "emu", "--graphs", "on"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.lines().filter(|l| l.starts_with("epoch ")).all(|l| l.ends_with(", step graphs")),
        "{stdout}"
    );
    let o = small_finetune(dir.path(), &off, "bf16", &["--device", "emu", "--graphs", "off"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let (a, b) = (read_metrics(&on), read_metrics(&off));
    assert_eq!(a.len(), 2);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-4 * ly.abs(), "loss with graphs {lx} vs op by op {ly}");
        for k in ["train_acc", "test_acc"] {
            let (p, q) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!((p - q).abs() <= 0.05, "{k} with graphs {p} vs op by op {q}");
        }
        assert_eq!(x["steps"], y["steps"]);
        assert_eq!(x["examples"], y["examples"]);
    }
}

#[test]
fn cli_bf16_on_emu_learns_like_f32() {
    // --precision bf16 (bf16 matrix products and flash attention on tensor cores, f32 elsewhere)
    // through our kernels on the emulator: the same run as f32 on the CPU ends with nearly the
    // same loss and accuracies.
    let dir = tempfile::tempdir().unwrap();
    let (f32_out, bf16_out) = (dir.path().join("f32"), dir.path().join("bf16"));
    let o = small_finetune(dir.path(), &f32_out, "f32", &["--device", "cpu"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = small_finetune(dir.path(), &bf16_out, "bf16", &["--device", "emu"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("on emu, bf16 activations and GEMMs, fused epilogues, flash attention, step graphs"),
        "{stdout}"
    );
    let last = |d: &Path| -> serde_json::Value {
        let s = std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        serde_json::from_str(s.lines().last().unwrap()).unwrap()
    };
    let (a, b) = (last(&f32_out), last(&bf16_out));
    let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
    assert!((la - lb).abs() <= 0.05 * la, "loss f32 {la} vs bf16 {lb}");
    for k in ["train_acc", "test_acc"] {
        let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
        assert!((x - y).abs() <= 0.1, "{k}: f32 {x} vs bf16 {y}");
    }
    // bf16 is GPU-only: on the CPU a usage error naming the fix
    let o = small_finetune(dir.path(), &dir.path().join("x"), "bf16", &["--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("--precision bf16 needs a GPU"), "{:?}", text(&o));
    let o = small_finetune(
        dir.path(),
        &dir.path().join("y"),
        "f32",
        &["--device", "cpu", "--attention", "flash"],
    );
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("--attention flash runs on a GPU"), "{:?}", text(&o));
    assert!(!dir.path().join("y").exists(), "nothing written after a usage error");
}

#[test]
fn cli_predict_labels_every_pair_with_or_without_labels_in_input_order() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let o = small_finetune(tmp.path(), &out, "f32", &["--quiet"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let model = out.to_str().unwrap();
    let pairs = [
        ("a man is running", "a man is not running"),
        ("the dog is sleeping", "the dog is sleeping at home"),
        ("a child, smiling, is eating", "a child is eating"),
    ];
    let predict = |input: &str, extra: &[&str], stdin: Option<&str>| -> Output {
        let mut c = bin();
        c.args(["predict", "--model", model, "--input", input, "--threads", "1"]).args(extra);
        if let Some(s) = stdin {
            use std::io::Write;
            c.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = c.spawn().unwrap();
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
            return child.wait_with_output().unwrap();
        }
        c.output().unwrap()
    };
    let rows = |o: &Output| -> Vec<serde_json::Value> {
        assert!(o.status.success(), "{}", text(o).1);
        text(o).0.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    // No label column: one JSON line per pair, in order.
    let plain = tmp.path().join("plain.tsv");
    let body: String = pairs.iter().map(|(p, h)| format!("{p}\t{h}\n")).collect();
    std::fs::write(&plain, format!("premise\thypothesis\n{body}")).unwrap();
    let a = rows(&predict(plain.to_str().unwrap(), &[], None));
    assert_eq!(a.len(), 3);
    for (r, (p, _)) in a.iter().zip(&pairs) {
        assert_eq!(r["premise"].as_str(), Some(*p));
        assert!(r.get("gold_label").is_none());
    }
    // Labels `-` and empty (rows the training readers skip) still get a prediction, the same one.
    let labelled = tmp.path().join("labelled.tsv");
    let golds = ["-", "", "neutral"];
    let body: String = pairs.iter().zip(golds).map(|((p, h), g)| format!("{g}\t{p}\t{h}\n")).collect();
    std::fs::write(&labelled, format!("label\tpremise\thypothesis\n{body}")).unwrap();
    let b = rows(&predict(labelled.to_str().unwrap(), &[], None));
    assert_eq!(b.len(), 3);
    for ((x, y), g) in a.iter().zip(&b).zip(golds) {
        assert_eq!((&x["label"], &x["probs"]), (&y["label"], &y["probs"]));
        assert_eq!(y["gold_label"].as_str(), Some(g));
    }
    // JSON lines without gold_label, from standard input.
    let jsonl: String = pairs
        .iter()
        .map(|(p, h)| format!("{}\n", serde_json::json!({"premise": p, "hypothesis": h})))
        .collect();
    let c = rows(&predict("-", &[], Some(&jsonl)));
    assert_eq!(
        c.iter().map(|r| &r["probs"]).collect::<Vec<_>>(),
        a.iter().map(|r| &r["probs"]).collect::<Vec<_>>()
    );
    // CSV into a file: a header, one row per pair, the comma-holding premise quoted.
    let csv = tmp.path().join("out.csv");
    let o = predict(plain.to_str().unwrap(), &["--format", "csv", "--output", csv.to_str().unwrap()], None);
    assert!(o.status.success() && text(&o).0.is_empty(), "{}", text(&o).1);
    let written = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "premise,hypothesis,label,entailment,contradiction,neutral");
    assert!(lines[3].starts_with("\"a child, smiling, is eating\",a child is eating,"), "{}", lines[3]);
    let p0: Vec<f64> = lines[1].rsplitn(4, ',').take(3).map(|x| x.parse().unwrap()).collect();
    let want: Vec<f64> = serde_json::from_value(a[0]["probs"].clone()).unwrap();
    for (g, w) in p0.iter().rev().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{g} vs {w}");
    }
    // Nothing to label is an error, never silent success.
    let empty = tmp.path().join("empty.tsv");
    std::fs::write(&empty, "premise\thypothesis\n").unwrap();
    let o = predict(empty.to_str().unwrap(), &[], None);
    assert!(!o.status.success() && text(&o).1.contains("no pairs"), "{}", text(&o).1);
}

#[test]
fn cli_numeric_flags_out_of_range_are_usage_errors_and_an_unsaved_run_says_so() {
    for args in [
        &["--lr", "-1"][..],
        &["--lr=-1"],
        &["--lr", "0"],
        &["--lr", "nan"],
        &["--adamw", "-0.1"],
        &["--epochs", "0"],
        &["--batch-size", "0"],
        &["--max-steps", "0"],
    ] {
        let mut all = vec!["finetune", "--model", "scratch", "--data", "/nonexistent.tsv"];
        all.extend_from_slice(args);
        let o = run(&all);
        let flag = args[0].split('=').next().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o).1);
        assert!(text(&o).1.contains(&format!("error: {flag} ")), "{args:?}: {}", text(&o).1);
    }
    let tmp = tempfile::tempdir().unwrap();
    let train = write_tsv(tmp.path(), "train.tsv", 20, 0);
    let o = run(&[
        "finetune",
        "--model",
        "scratch",
        "--data",
        train.to_str().unwrap(),
        "--hidden",
        "8",
        "--ffn",
        "16",
        "--heads",
        "2",
        "--layers",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--threads",
        "1",
    ]);
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("no --out: the fine-tuned model") && stderr.contains("nothing was saved"),
        "{stderr}"
    );
}

#[test]
fn cli_download_list_shows_the_catalog() {
    let o = bin()
        .args(["download", "--list"])
        .env_remove("NLI_BERT_D2L_URL")
        .env_remove("NLI_BERT_SNLI_URL")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    for e in nli_bert::data::hub::catalog_with(nli_bert::data::hub::DATA_URL, nli_bert::data::hub::SNLI_URL) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{}\t", e.name)))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains(&e.sha1) && line.contains(&e.url) && line.ends_with(&e.folder), "{line}");
    }
    let o = run(&["download"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
}

#[test]
fn cli_readme_commands_run_on_the_shipped_sample() {
    // The README's fine-tune / eval / predict commands on examples/data (a fresh clone has
    // nothing else), shortened with --epochs 1 --max-steps 3.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (train, test) =
        (root.join("examples/data/snli_sample_train.tsv"), root.join("examples/data/snli_sample_test.tsv"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sample");
    let (tr, te, o) = (train.to_str().unwrap(), test.to_str().unwrap(), out.to_str().unwrap());
    let args = ["finetune", "--model", "scratch", "--data", tr, "--test-data", te, "--out", o];
    let r = run(&[
        &args[..],
        &[
            "--epochs",
            "1",
            "--max-steps",
            "3",
            "--batch-size",
            "64",
            "--hidden",
            "32",
            "--ffn",
            "64",
            "--threads",
            "1",
        ],
    ]
    .concat());
    assert!(r.status.success(), "{}", text(&r).1);
    assert!(
        text(&r).1.contains("read 2002 examples") || text(&r).0.contains("read 2002 examples"),
        "{:?}",
        text(&r)
    );
    let r = run(&["eval", "--model", o, "--data", te, "--json"]);
    assert!(r.status.success(), "{}", text(&r).1);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["n"].as_u64(), Some(501), "{v}");
    let r = run(&["predict", "--model", o, "--input", te]);
    assert!(r.status.success(), "{}", text(&r).1);
    assert_eq!(text(&r).0.lines().count(), 501);
    // `cut -f2,3 test.tsv | nli-bert predict --input - --format csv --output preds.csv`
    let unlabelled: String = std::fs::read_to_string(&test)
        .unwrap()
        .lines()
        .map(|l| l.splitn(3, '\t').skip(1).collect::<Vec<_>>().join("\t") + "\n")
        .collect();
    let csv = dir.path().join("preds.csv");
    let mut child = bin()
        .args(["predict", "--model", o, "--input", "-", "--format", "csv", "--output", csv.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(unlabelled.as_bytes()).unwrap();
    let r = child.wait_with_output().unwrap();
    assert!(r.status.success(), "{}", text(&r).1);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 502, "a header and 501 rows");
}

#[test]
fn the_shipped_sample_is_real_snli_dev_data() {
    // Every pair of examples/data is a line of SNLI's dev split as ../shared/data has it.
    let Some(shared) = common::shared_data("the_shipped_sample_is_real_snli_dev_data") else { return };
    let dev: std::collections::HashSet<String> =
        std::fs::read_to_string(shared.join("snli_dev.tsv")).unwrap().lines().map(String::from).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (f, n) in [("snli_sample_train.tsv", 2002), ("snli_sample_test.tsv", 501)] {
        let text = std::fs::read_to_string(root.join("examples/data").join(f)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "label\tpremise\thypothesis");
        assert_eq!(lines.len() - 1, n, "{f}");
        assert!(lines.iter().all(|l| dev.contains(*l)), "{f} has a line that is not in snli_dev.tsv");
    }
}

#[test]
fn cli_finetune_on_two_emulated_gpus_matches_one() {
    // --device emu:2: two ranks in one process (one thread and emulated GPU each), every batch
    // split by tokens, gradients summed, one Adam step: the one-GPU run's metrics up to the order
    // of the sums (f32). Only rank 0 prints and saves; the epoch line names both devices.
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let o = small_finetune(dir.path(), &one, "f32", &["--device", "emu"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = small_finetune(dir.path(), &two, "f32", &["--device", "emu:2"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let epochs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(epochs.len(), 2, "one line per epoch, from rank 0 only:\n{stdout}");
    assert!(epochs.iter().all(|l| l.contains("on 2x emu")), "{stdout}");
    let (a, b) = (read_metrics(&one), read_metrics(&two));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-5 * lx.abs(), "loss on one emulated GPU {lx} vs two {ly}");
        for k in ["train_acc", "test_acc"] {
            let (p, q) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!((p - q).abs() <= 0.02, "{k}: one GPU {p} vs two {q}");
        }
        assert_eq!(x["steps"], y["steps"]);
        assert_eq!(x["examples"], y["examples"]);
    }
}

/// A free port on 127.0.0.1 for a rendezvous.
fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string()
}

/// `nli-bert <args> <extra>` started as rank `rank` of a two-process run (torchrun's variables)
/// meeting on `port`, its output captured.
fn rank_of_two(rank: &str, port: &str, args: &[String], extra: &[&str]) -> std::process::Child {
    bin()
        .args(args)
        .args(extra)
        .env("RANK", rank)
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port)
        .env("NLI_BERT_RANK_TIMEOUT", "60")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn cli_finetune_as_two_processes_matches_one() {
    // torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) on two CPU processes:
    // the rendezvous on 127.0.0.1, batches split between them, gradients summed through rank 0;
    // the one-process run's metrics up to the order of the sums. Only rank 0 writes --out.
    let dir = tempfile::tempdir().unwrap();
    let (one, two, other) = (dir.path().join("one"), dir.path().join("two"), dir.path().join("rank1"));
    let o = small_finetune(dir.path(), &one, "f32", &["--device", "cpu"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let port = free_port();
    // (the arguments first: writing them writes the data files, which must not change under a
    // running rank)
    let (a0, a1) = (small_args(dir.path(), &two, "f32"), small_args(dir.path(), &other, "f32"));
    let spawn = |rank: &str, args: &[String]| rank_of_two(rank, &port, args, &["--device", "cpu"]);
    let (r0, r1) = (spawn("0", &a0), spawn("1", &a1));
    let (o0, o1) = (r0.wait_with_output().unwrap(), r1.wait_with_output().unwrap());
    assert!(o0.status.success(), "rank 0: {:?}", text(&o0));
    assert!(o1.status.success(), "rank 1: {:?}", text(&o1));
    let (stdout0, _) = text(&o0);
    let (stdout1, _) = text(&o1);
    assert!(
        stdout0.lines().filter(|l| l.starts_with("epoch ")).all(|l| l.contains("on 2x cpu")),
        "{stdout0}"
    );
    assert!(!stdout1.contains("epoch "), "rank 1 prints no epoch lines: {stdout1}");
    assert!(!other.exists(), "rank 1 writes nothing");
    let (a, b) = (read_metrics(&one), read_metrics(&two));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-5 * lx.abs(), "loss in one process {lx} vs two {ly}");
        assert_eq!(x["steps"], y["steps"]);
        assert_eq!(x["examples"], y["examples"]);
    }
}

#[test]
fn cli_resume_on_two_ranks_continues_the_run() {
    // Two emulated GPUs, stopped by --max-steps inside the first epoch and resumed with the same
    // two ranks: the uninterrupted two-rank run's metrics (rank 0 saved the checkpoint; every
    // rank starts from it).
    let tmp = tempfile::tempdir().unwrap();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    let two = ["--device", "emu:2"];
    let o = small_finetune(tmp.path(), &full, "f32", &two);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = small_finetune(tmp.path(), &cut, "f32", &[&two[..], &["--max-steps", "4"]].concat());
    assert!(o.status.success(), "{}", text(&o).1);
    let o = run(&[&["finetune", "--resume", cut.to_str().unwrap(), "--threads", "1"], &two[..]].concat());
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("epoch 2/2: ") && stdout.contains("on 2x emu"), "{stdout}");
    let (a, b) = (read_metrics(&full), read_metrics(&cut));
    assert_eq!(a.len(), 2);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-5 * lx.abs(), "loss whole run {lx} vs resumed {ly}");
        assert_eq!(x["steps"], y["steps"]);
        assert_eq!(x["examples"], y["examples"]);
    }
}

#[test]
fn cli_ranks_with_other_settings_are_refused_at_start() {
    // Two processes of one run whose flags differ (here the seed): rank 0 refuses rank 1
    // at the rendezvous and both exit with an error that says so, before any training.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = small_args(dir.path(), &dir.path().join("out"), "f32");
    let spawn =
        |rank: &str, seed: &str| rank_of_two(rank, &port, &args, &["--device", "cpu", "--seed", seed]);
    let (r0, r1) = (spawn("0", "1"), spawn("1", "2"));
    for (rank, o) in [r0.wait_with_output().unwrap(), r1.wait_with_output().unwrap()].into_iter().enumerate()
    {
        let (stdout, stderr) = text(&o);
        assert!(!o.status.success(), "rank {rank} must fail: {stdout}");
        assert!(stderr.contains("rank 1 runs another model or other settings"), "rank {rank}: {stderr}");
        assert!(!stdout.contains("epoch "), "rank {rank} trained: {stdout}");
    }
}

#[test]
fn cli_two_processes_resume_from_rank_0s_checkpoint() {
    // Two CPU processes stopped by --max-steps, then both resumed from rank 0's directory (a
    // shared file system): the uninterrupted two-process run's metrics.
    let dir = tempfile::tempdir().unwrap();
    let run2 = |args: &dyn Fn(&str) -> Vec<String>| -> (Output, Output) {
        let port = free_port();
        // (the arguments first: writing them writes the data files, which must not change under
        // a running rank)
        let (a0, a1) = (args("0"), args("1"));
        let spawn = |rank: &str| rank_of_two(rank, &port, if rank == "0" { &a0 } else { &a1 }, &[]);
        let (a, b) = (spawn("0"), spawn("1"));
        (a.wait_with_output().unwrap(), b.wait_with_output().unwrap())
    };
    let (full, cut) = (dir.path().join("full"), dir.path().join("cut"));
    let out =
        |base: &Path, rank: &str| if rank == "0" { base.to_path_buf() } else { base.with_extension("rank1") };
    let small = |base: &Path, extra: &[&str]| {
        let (d, base, extra) = (
            dir.path().to_path_buf(),
            base.to_path_buf(),
            extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        move |rank: &str| {
            let mut a = small_args(&d, &out(&base, rank), "f32");
            a.extend(["--device".to_string(), "cpu".to_string()]);
            a.extend(extra.iter().cloned());
            a
        }
    };
    let (o0, o1) = run2(&small(&full, &[]));
    assert!(o0.status.success() && o1.status.success(), "{:?} {:?}", text(&o0), text(&o1));
    let (o0, o1) = run2(&small(&cut, &["--max-steps", "4"]));
    assert!(o0.status.success() && o1.status.success(), "{:?} {:?}", text(&o0), text(&o1));
    let resume = |_rank: &str| -> Vec<String> {
        ["finetune", "--resume", cut.to_str().unwrap(), "--threads", "1", "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let (o0, o1) = run2(&resume);
    assert!(o0.status.success(), "rank 0: {:?}", text(&o0));
    assert!(o1.status.success(), "rank 1: {:?}", text(&o1));
    let (a, b) = (read_metrics(&full), read_metrics(&cut));
    assert_eq!(a.len(), 2);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-5 * lx.abs(), "loss whole run {lx} vs resumed {ly}");
        assert_eq!(x["steps"], y["steps"]);
    }
}
