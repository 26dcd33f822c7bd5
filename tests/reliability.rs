//! Faults around a training run, tested on the real binary: determinism across runs and thread
//! counts, SIGKILL while a checkpoint is being written, a full disk. (Hostile input files are in
//! `tests/hostile_inputs.rs`, fuzzing in `tests/fuzz_smoke.rs`; see RELIABILITY.md.)

mod common;

use common::{text, write_tsv};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nli-bert"));
    c.env("NLI_BERT_HOME", std::env::temp_dir().join("nli-bert-reliability-test-cache"));
    c
}

/// `finetune --model scratch` on `train` (and `test`), writing to `out`, as strings.
fn finetune_args(train: &Path, test: Option<&Path>, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["finetune", "--model", "scratch", "--data", train.to_str().unwrap()]
        .into_iter()
        .map(String::from)
        .collect();
    if let Some(t) = test {
        a.extend(["--test-data".to_string(), t.to_str().unwrap().to_string()]);
    }
    a.extend(["--out".to_string(), out.to_str().unwrap().to_string(), "--quiet".to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The metrics of every epoch without the timing fields.
fn metrics_no_timing(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {} {} {}", v["epoch"], v["loss"], v["train_acc"], v["test_acc"], v["steps"])
        })
        .collect()
}

// ------------------------------------------------------------------------------------ determinism

/// The model of the determinism test: big enough that the linear layers take gemm's threaded
/// path (m·n·k above 2^18) and attention, LayerNorm and Adam split their work over both threads.
const DET_MODEL: [&str; 16] = [
    "--hidden",
    "64",
    "--ffn",
    "128",
    "--heads",
    "4",
    "--layers",
    "2",
    "--epochs",
    "2",
    "--batch-size",
    "48",
    "--lr",
    "1e-3",
    "--dropout",
    "0.2",
];

#[test]
fn same_seed_gives_bit_identical_metrics_and_weights_run_to_run_and_across_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write_tsv(tmp.path(), "train.tsv", 300, 0);
    let test = write_tsv(tmp.path(), "test.tsv", 60, 1000);
    let run = |name: &str, threads: &str, seed: &str| -> PathBuf {
        let out = tmp.path().join(name);
        let mut extra = DET_MODEL.to_vec();
        extra.extend(["--threads", threads, "--seed", seed]);
        if name.starts_with("f64") {
            extra.extend(["--precision", "f64"]);
        }
        let o = bin().args(finetune_args(&train, Some(&test), &out, &extra)).output().unwrap();
        assert!(o.status.success(), "{name}: {}", text(&o).1);
        out
    };
    let a = run("t1", "1", "7");
    let b = run("t2", "2", "7");
    let c = run("t2-again", "2", "7");
    let d = run("t1-seed8", "1", "8");
    let e = run("t3", "3", "7"); // more threads than cores, work split three ways
    let weights = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert_eq!(metrics_no_timing(&b), metrics_no_timing(&c), "two 2-thread runs differ");
    assert!(weights(&b) == weights(&c), "two 2-thread runs end with different weights");
    assert_eq!(metrics_no_timing(&a), metrics_no_timing(&b), "1 thread and 2 threads differ");
    assert!(weights(&a) == weights(&b), "1 thread and 2 threads end with different weights");
    assert_eq!(metrics_no_timing(&a), metrics_no_timing(&e), "1 thread and 3 threads differ");
    assert!(weights(&a) == weights(&e), "1 thread and 3 threads end with different weights");
    // The f64 reference engine too.
    let (f1, f2) = (run("f64-t1", "1", "7"), run("f64-t2", "2", "7"));
    assert_eq!(metrics_no_timing(&f1), metrics_no_timing(&f2), "f64: 1 thread and 2 threads differ");
    assert!(weights(&f1) == weights(&f2), "f64: 1 thread and 2 threads end with different weights");
    // The comparison can fail: another seed gives other numbers.
    assert_ne!(metrics_no_timing(&a), metrics_no_timing(&d));
    assert_eq!(metrics_no_timing(&a).len(), 2);
}

// ------------------------------------------------------------------------------------ NaN loss

#[test]
fn a_nan_loss_stops_the_run_with_a_message_and_keeps_the_last_checkpoint() {
    // lr 1e30: the first Adam step throws the weights to ~1e30, the second forward pass overflows.
    let tmp = tempfile::tempdir().unwrap();
    let train = write_tsv(tmp.path(), "train.tsv", 120, 0);
    let out = tmp.path().join("out");
    let args: Vec<String> = kill_run_args(&train, &out)
        .into_iter()
        .map(|a| if a == "1e-3" { "1e30".into() } else { a })
        .collect();
    let o = bin().args(&args).output().unwrap();
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the training loss became NaN at step 2 (epoch 1): lower --lr or check the data")
            && stderr.contains("the last checkpoint is intact"),
        "{stderr}"
    );
    // the step-1 checkpoint is there, complete, and no model was written from the broken weights
    let (_, resume) = nli_bert::train::checkpoint::load_checkpoint(&out).unwrap();
    assert_eq!(resume.state.step, 1);
    assert!(!out.join("model.safetensors").exists());
    assert_eq!(temporaries(&out), Vec::<String>::new());
}

// ------------------------------------------------------------------------------------ SIGKILL

/// The run the kill tests interrupt: 120 pairs, batch 8 → 15 steps per epoch, 3 epochs, a
/// checkpoint after every step (so most of the run is spent writing checkpoints).
fn kill_run_args(train: &Path, out: &Path) -> Vec<String> {
    finetune_args(
        train,
        None,
        out,
        &[
            "--hidden",
            "32",
            "--ffn",
            "64",
            "--heads",
            "2",
            "--layers",
            "1",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--dropout",
            "0.1",
            "--seed",
            "3",
            "--threads",
            "1",
            "--save-every",
            "1",
        ],
    )
}

/// Names in `dir` that look like temporaries of an interrupted write.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Resumes `cut` to the end and checks that it ends exactly like the uninterrupted `full`.
fn resume_and_compare(cut: &Path, full: &Path, what: &str) {
    let o = bin()
        .args(["finetune", "--resume", cut.to_str().unwrap(), "--threads", "1", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{what}: resume failed: {}", text(&o).1);
    assert_eq!(metrics_no_timing(full), metrics_no_timing(cut), "{what}: metrics differ after resuming");
    assert!(
        std::fs::read(full.join("model.safetensors")).unwrap()
            == std::fs::read(cut.join("model.safetensors")).unwrap(),
        "{what}: final weights differ after resuming"
    );
    assert_eq!(temporaries(cut), Vec::<String>::new(), "{what}: temporaries left after resuming");
}

#[test]
fn sigkill_while_writing_checkpoints_leaves_one_that_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write_tsv(tmp.path(), "train.tsv", 120, 0);
    let full = tmp.path().join("full");
    let o = bin().args(kill_run_args(&train, &full)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);

    // Kill timings: odd rounds kill as soon as a checkpoint folder is being written (plus 0-0.3 ms),
    // even rounds after a pseudo-random delay of 0-60 ms into the run once it has checkpointed.
    let (mut mid_write, mut killed) = (0, 0);
    let rounds = 8;
    for round in 0..rounds {
        let cut = tmp.path().join(format!("cut{round}"));
        let mut child = bin()
            .args(kill_run_args(&train, &cut))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let writing = cut.join(format!(".checkpoint.tmp-{pid}"));
        let t0 = Instant::now();
        while !cut.join("checkpoint/state.json").exists() {
            assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        let jitter = Duration::from_micros((round as u64 * 7919 + 13) % 300);
        if round % 2 == 1 {
            let t1 = Instant::now();
            while !writing.exists() && t1.elapsed() < Duration::from_secs(10) {
                std::hint::spin_loop();
            }
            std::thread::sleep(jitter);
        } else {
            std::thread::sleep(Duration::from_millis((round as u64 * 37) % 60) + jitter);
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed += 1;
        } else {
            assert!(status.success(), "round {round}: {status}"); // it finished before the kill
        }
        if writing.exists() {
            mid_write += 1;
        }
        // The checkpoint --resume picks up loads completely: model, vocabulary, optimizer state.
        let (model, resume) = nli_bert::train::checkpoint::load_checkpoint(&cut)
            .unwrap_or_else(|e| panic!("round {round}: the checkpoint does not load after SIGKILL: {e}"));
        assert!(model.params.iter().all(|v| v.is_finite()));
        assert!(
            resume.state.step >= 1 && resume.state.step <= 45,
            "round {round}: step {}",
            resume.state.step
        );
        assert_eq!(resume.m.len(), model.params.len());
        // ... and it is a consistent one: the resumed run ends bit for bit like the uninterrupted one.
        resume_and_compare(&cut, &full, &format!("round {round} (killed at step {})", resume.state.step));
    }
    eprintln!("{killed} of {rounds} runs killed, {mid_write} while a checkpoint was being written");
    assert!(killed >= rounds - 2, "only {killed} of {rounds} runs were still running when killed");
    // The kills did land while a checkpoint was being written (the temporary folder was left).
    assert!(mid_write >= rounds / 4, "only {mid_write} of {rounds} kills landed mid-write");
}

#[test]
fn a_save_killed_between_the_two_renames_falls_back_to_the_previous_checkpoint() {
    // The swap is: write .checkpoint.tmp-PID, rename checkpoint → checkpoint.old, rename the new
    // one → checkpoint, delete checkpoint.old. A kill between the two renames leaves only
    // checkpoint.old (and the complete new folder under its temporary name): rebuilt here exactly.
    let tmp = tempfile::tempdir().unwrap();
    let train = write_tsv(tmp.path(), "train.tsv", 120, 0);
    let full = tmp.path().join("full");
    assert!(bin().args(kill_run_args(&train, &full)).output().unwrap().status.success());
    let cut = tmp.path().join("cut");
    let mut args = kill_run_args(&train, &cut);
    args.extend(["--max-steps".to_string(), "20".to_string()]);
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    std::fs::rename(cut.join("checkpoint"), cut.join("checkpoint.old")).unwrap();
    // a half-written newer checkpoint of a dead process: no state.json yet, a truncated model
    let dead = cut.join(".checkpoint.tmp-99999999");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("model.safetensors"), b"\x10\x00\x00").unwrap();
    std::fs::write(cut.join(".curves.svg.tmp-99999999"), b"<svg").unwrap();
    // a file of the user's that merely looks like a temporary is left alone
    std::fs::write(cut.join("notes.tmp-99999999"), b"mine").unwrap();
    let (_, resume) = nli_bert::train::checkpoint::load_checkpoint(&cut).unwrap();
    assert_eq!(resume.state.step, 20);
    let o = bin().args(["finetune", "--resume", cut.to_str().unwrap(), "--threads", "1"]).output().unwrap();
    assert!(text(&o).1.contains("removed 2 temporary file(s) left in"), "{}", text(&o).1);
    assert_eq!(std::fs::read(cut.join("notes.tmp-99999999")).unwrap(), b"mine");
    std::fs::remove_file(cut.join("notes.tmp-99999999")).unwrap();
    assert_eq!(metrics_no_timing(&full), metrics_no_timing(&cut));
    // resuming the finished run again changes nothing
    resume_and_compare(&cut, &full, "fallback to checkpoint.old");
    assert!(
        !cut.join("checkpoint.old").exists(),
        "checkpoint.old is removed once a new checkpoint is in place"
    );
}

// ------------------------------------------------------------------------------------ full disk

/// Every file of a checkpoint folder with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

/// A run stopped at step 5 with a checkpoint there (and the uninterrupted run to compare with).
fn checkpointed_at_step_5(tmp: &Path) -> (PathBuf, PathBuf) {
    let train = write_tsv(tmp, "train.tsv", 120, 0);
    let full = tmp.join("full");
    let o = bin().args(kill_run_args(&train, &full)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let cut = tmp.join("cut");
    let mut args = kill_run_args(&train, &cut);
    args.extend(["--max-steps".to_string(), "5".to_string()]);
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    (full, cut)
}

#[test]
fn a_file_size_limit_mid_checkpoint_is_a_clear_error_and_the_previous_checkpoint_stays() {
    // RLIMIT_FSIZE stands in for a full disk without privileges: `ulimit -f` in sh (512-byte
    // blocks in POSIX sh, 1024 in some shells: the sizes below work with both), and SIGXFSZ
    // ignored (a disposition exec keeps), so a write past the limit fails with EFBIG instead of
    // killing the process.
    let tmp = tempfile::tempdir().unwrap();
    let (full, cut) = checkpointed_at_step_5(tmp.path());
    let ck = cut.join("checkpoint");
    let before = snapshot(&ck);
    let model_size = std::fs::metadata(ck.join("model.safetensors")).unwrap().len();
    let limit_blocks = model_size / 2 / 1024; // the model cannot be written, whatever the unit
    let small: u64 = ["state.json", "config.json", "vocab.json"]
        .iter()
        .map(|f| std::fs::metadata(ck.join(f)).unwrap().len())
        .max()
        .unwrap()
        .max(std::fs::metadata(cut.join("curves.svg")).unwrap().len());
    assert!(
        small * 2 < limit_blocks * 512,
        "the limit must let the small files through: {small} vs {limit_blocks} blocks"
    );

    let o = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f \"$0\" && exec \"$@\"")
        .arg(limit_blocks.to_string())
        .arg(env!("CARGO_BIN_EXE_nli-bert"))
        .args(["finetune", "--resume", cut.to_str().unwrap(), "--threads", "1", "--quiet"])
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    eprintln!("what the user sees:\n{stderr}");
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("saving the checkpoint of step 6 failed"), "{stderr}");
    assert!(stderr.contains("File too large") && stderr.contains("model.safetensors"), "{stderr}");
    assert!(
        stderr.contains(&format!("the previous checkpoint in {} is intact", ck.display()))
            && stderr.contains("--resume"),
        "{stderr}"
    );
    // Nothing half-written: the checkpoint is byte for byte the step-5 one, no temporaries.
    assert!(snapshot(&ck) == before, "the previous checkpoint changed");
    assert_eq!(temporaries(&cut), Vec::<String>::new());
    // Once there is room, the run continues from it exactly.
    resume_and_compare(&cut, &full, "after the size-limit failure");
}

#[test]
fn a_full_disk_mid_checkpoint_is_a_clear_error_and_the_previous_checkpoint_stays() {
    // A real ENOSPC: the run writes into a small tmpfs mounted in a private mount namespace
    // (`unshare -rm`, no privileges needed where user namespaces are enabled), sized so that one
    // checkpoint fits and the next one (written beside it before the swap) does not.
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let probe = Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs \"$0\"", mnt.to_str().unwrap()])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = format!(
            "cannot mount a tmpfs in a user namespace here ({probe:?}); the RLIMIT_FSIZE test covers this"
        );
        common::missing(
            common::Need::DiskFaults,
            "a_full_disk_mid_checkpoint_is_a_clear_error_and_the_previous_checkpoint_stays",
            &why,
        );
        return;
    }
    let (full, _) = checkpointed_at_step_5(tmp.path());
    let pages = |dir: &Path| -> u64 {
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.metadata().unwrap().len().div_ceil(4096)).sum()
    };
    let ck_pages = pages(&full.join("checkpoint"));
    let size_kb = (ck_pages + ck_pages / 2 + 4) * 4;
    let keep = tmp.path().join("kept");
    let train = tmp.path().join("train.tsv");
    let run_dir = mnt.join("run");
    let o = Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(
            "mnt=$0; size=$1; keep=$2; shift 3; mount -t tmpfs -o size=${size}k tmpfs \"$mnt\" || exit 99; \
             \"$@\"; rc=$?; cp -a \"$mnt/run\" \"$keep\"; exit $rc",
        )
        .args([mnt.to_str().unwrap(), &size_kb.to_string(), keep.to_str().unwrap(), "-"])
        .arg(env!("CARGO_BIN_EXE_nli-bert"))
        .args(kill_run_args(&train, &run_dir))
        .env("NLI_BERT_HOME", tmp.path().join("cache"))
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    eprintln!("what the user sees:\n{stderr}");
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains("saving the checkpoint of step 2 failed"), "{stderr}");
    assert!(stderr.contains("is intact") && stderr.contains("--resume"), "{stderr}");
    // What was on the full disk: the step-1 checkpoint, complete, and no temporaries.
    assert_eq!(temporaries(&keep), Vec::<String>::new());
    let (_, resume) = nli_bert::train::checkpoint::load_checkpoint(&keep).unwrap();
    assert_eq!(resume.state.step, 1);
    // The stored output folder is the tmpfs one: resume from a copy elsewhere.
    resume_and_compare(&keep, &full, "after a full disk");
}

/// The byte limit RLIMIT_FSIZE puts on this process, from /proc/self/limits.
fn file_size_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max file size"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Run by `metrics_jsonl_keeps_no_partial_line_when_the_disk_fills` in a child process under a
/// file-size limit; does nothing in a normal test run.
#[test]
#[ignore = "helper: runs in a child process under `ulimit -f`"]
fn helper_append_metrics_under_a_size_limit() {
    let Some(path) = std::env::var_os("NLI_BERT_METRICS_HELPER") else { return };
    let path = PathBuf::from(path);
    let limit = file_size_limit().expect("a file-size limit is set");
    let m = nli_bert::train::trainer::EpochMetrics {
        epoch: 1,
        loss: 0.5,
        train_acc: 0.25,
        test_acc: Some(0.125),
        examples_per_sec: 1000.0,
        seconds: 1.5,
        examples: 120,
        steps: 15,
        partial: None,
    };
    // fill the file to 40 bytes below the limit with whole lines, then append one more epoch
    let line = serde_json::to_string(&m).unwrap() + "\n";
    let mut body = String::new();
    while body.len() + line.len() <= limit as usize - 40 {
        body += &line;
    }
    let pad = limit as usize - 40 - body.len();
    if pad > 0 {
        body += &"x".repeat(pad - 1);
        body += "\n";
    }
    std::fs::write(&path, &body).unwrap();
    let e = nli_bert::train::report::append_metrics(&path, &m).unwrap_err().to_string();
    assert!(e.contains(path.to_str().unwrap()) && e.contains("File too large"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), body, "a partial line was left");
    println!("helper checked: {e}");
}

#[test]
fn metrics_jsonl_keeps_no_partial_line_when_the_disk_fills() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let o = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 2 && exec \"$@\"")
        .arg("-")
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_append_metrics_under_a_size_limit", "--nocapture"])
        .env("NLI_BERT_METRICS_HELPER", &path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success() && stdout.contains("helper checked:"), "{stdout}\n{stderr}");
}

#[test]
fn a_write_to_a_full_device_is_an_error_naming_the_file() {
    // /dev/full: every write fails with ENOSPC.
    let full = Path::new("/dev/full");
    if !full.exists() {
        common::missing(
            common::Need::DiskFaults,
            "a_write_to_a_full_device_is_an_error_naming_the_file",
            "no /dev/full",
        );
        return;
    }
    let m = nli_bert::train::trainer::EpochMetrics {
        epoch: 1,
        loss: 0.5,
        train_acc: 0.25,
        test_acc: None,
        examples_per_sec: 1.0,
        seconds: 1.0,
        examples: 1,
        steps: 1,
        partial: None,
    };
    let e = nli_bert::train::report::append_metrics(full, &m).unwrap_err().to_string();
    assert!(e.contains("/dev/full") && e.contains("No space left on device"), "{e}");
}
