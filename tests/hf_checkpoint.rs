//! Hugging Face BERT directories through the user path: a tiny `BertForSequenceClassification`
//! saved by transformers itself (`tests/fixtures/hf/tiny_{safetensors,bin}`, made by
//! `scripts/make_hf_fixtures.py --only tiny`: hidden 16, 2 layers, 4 heads, `gelu_new`, an
//! MNLI-style `id2label` CONTRADICTION/NEUTRAL/ENTAILMENT, `bert.` names, both weight formats),
//! variants of it (other heads, no pooler, `gamma`/`beta`, no prefix, bad configs), saving and
//! reloading a fine-tuned WordPiece model, and `--model hf:ORG/NAME` against a 127.0.0.1 server.

use nli_bert::backend::Activation;
use nli_bert::cli::engine::Engine;
use nli_bert::cli::eval::evaluate;
use nli_bert::data::batch::{encode_dataset_with, Truncate};
use nli_bert::data::snli::{Dataset, Example};
use nli_bert::model::checkpoint::safetensors as st;
use nli_bert::model::checkpoint::torch::TensorData;
use nli_bert::model::config::Precision;
use nli_bert::model::hf::{self, load_hf_dir};
use nli_bert::model::params::ParamLayout;
use nli_bert::model::store;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny_expected.json")).unwrap()).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn pairs_dataset(e: &serde_json::Value) -> Dataset {
    let examples = strings(&e["premises"])
        .into_iter()
        .zip(strings(&e["hypotheses"]))
        .map(|(premise, hypothesis)| Example { premise, hypothesis, label: 0 })
        .collect();
    Dataset { examples, skipped: 0, source: "tiny pairs".into() }
}

/// Copies a fixture directory into a fresh temporary one.
fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    dir
}

/// Rewrites `model.safetensors` in `dir` through `edit` (values kept in f32, as saved).
fn edit_weights(dir: &Path, edit: impl Fn(Vec<TensorData>) -> Vec<TensorData>) {
    let path = dir.join("model.safetensors");
    let tensors = edit(st::load_safetensors(&path).unwrap());
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.shape.clone(),
                t.values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

fn edit_config(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn param<'a>(m: &'a hf::HfModel, name: &str) -> &'a [f64] {
    &m.params[ParamLayout::new(&m.cfg).get(name).unwrap().range()]
}

#[test]
fn tiny_checkpoint_in_both_formats_matches_transformers_with_labels_reordered() {
    let e = expected();
    let ds = pairs_dataset(&e);
    let max_len = e["max_len"].as_u64().unwrap() as usize;
    // the checkpoint's rows are CONTRADICTION, NEUTRAL, ENTAILMENT: ours[i] = theirs[perm[i]]
    let perm = [2, 0, 1];
    for kind in ["safetensors", "bin"] {
        let dir = fixtures().join(format!("tiny_{kind}"));
        assert!(hf::is_hf_dir(&dir));
        let m = store::load_model(dir.to_str().unwrap(), None, false, 0).unwrap();
        assert_eq!(m.cfg.activation, Activation::GeluTanh);
        assert_eq!((m.cfg.hidden, m.cfg.heads, m.cfg.layers, m.cfg.ln_eps), (16, 4, 2, 1e-12));
        let (enc, _) =
            encode_dataset_with(&ds, &m.text_encoder().unwrap(), max_len, Truncate::Longest).unwrap();
        for (got, want) in enc.iter().zip(e["input_ids"].as_array().unwrap()) {
            let want: Vec<u32> =
                want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(got.ids, want, "{kind}: input ids");
        }
        let r = evaluate(&m, &enc, 8, &Engine { precision: Precision::F64, threads: 1, ..Engine::cpu(1) })
            .unwrap();
        for (i, row) in e["logits_f64_checkpoint_order"].as_array().unwrap().iter().enumerate() {
            let theirs: Vec<f64> = row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            for (k, &p) in perm.iter().enumerate() {
                let (a, b) = (r.logits[i * 3 + k], theirs[p]);
                assert!((a - b).abs() <= 1e-10 * b.abs().max(1.0), "{kind}: pair {i} label {k}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn other_heads_missing_pooler_and_old_names() {
    let src = fixtures().join("tiny_safetensors");
    let base = load_hf_dir(&src, 0).unwrap();
    assert_eq!(base.notices.len(), 1, "{:?}", base.notices);
    assert!(base.notices[0].contains("reordered"), "{:?}", base.notices);
    assert_eq!(base.hidden_dropout, 0.1);

    // unnamed labels: a fresh output layer, the rest unchanged
    let d = copy_dir(&src);
    edit_config(d.path(), |v| {
        v["id2label"] = serde_json::json!({"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"});
    });
    let m = load_hf_dir(d.path(), 0).unwrap();
    assert!(m.notices.iter().any(|n| n.contains("fresh output layer")), "{:?}", m.notices);
    assert_ne!(param(&m, "output.weight"), param(&base, "output.weight"));
    assert_eq!(param(&m, "output.bias"), &[0.0; 3]);
    assert_eq!(param(&m, "hidden.0.weight"), param(&base, "hidden.0.weight"));

    // old names: no `bert.` prefix, LayerNorm gamma/beta; no pooler; another task head
    let d = copy_dir(&src);
    edit_weights(d.path(), |ts| {
        let mut out: Vec<TensorData> = ts
            .into_iter()
            .filter(|t| !t.name.contains("pooler"))
            .map(|mut t| {
                t.name = t.name.trim_start_matches("bert.").replace("LayerNorm.weight", "LayerNorm.gamma");
                t.name = t.name.replace("LayerNorm.bias", "LayerNorm.beta");
                t
            })
            .collect();
        out.push(TensorData {
            name: "qa_outputs.weight".into(),
            shape: vec![2, 16],
            dtype: out[0].dtype,
            values: vec![0.5; 32],
        });
        out
    });
    let m = load_hf_dir(d.path(), 0).unwrap();
    assert!(m.notices.iter().any(|n| n.contains("no pooler")), "{:?}", m.notices);
    assert!(m.notices.iter().any(|n| n.contains("qa_outputs.weight")), "{:?}", m.notices);
    let layout = ParamLayout::new(&m.cfg);
    for e in &layout.entries {
        if !e.name.starts_with("hidden.") {
            assert_eq!(param(&m, &e.name), param(&base, &e.name), "{}", e.name);
        }
    }
    assert_eq!(param(&m, "hidden.0.bias"), &[0.0; 16]);

    // a 2-way classifier is another head
    let d = copy_dir(&src);
    edit_weights(d.path(), |ts| {
        ts.into_iter()
            .map(|mut t| {
                if t.name.starts_with("classifier.") {
                    t.shape[0] = 2;
                    t.values.truncate(t.values.len() / 3 * 2);
                }
                t
            })
            .collect()
    });
    edit_config(d.path(), |v| v["id2label"] = serde_json::json!({"0": "entailment", "1": "not_entailment"}));
    let m = load_hf_dir(d.path(), 0).unwrap();
    assert!(m.notices.iter().any(|n| n.contains("[2, 16]")), "{:?}", m.notices);
}

#[test]
fn bad_checkpoints_say_what_is_wrong() {
    let src = fixtures().join("tiny_safetensors");
    let err = |edit: &dyn Fn(&Path)| -> String {
        let d = copy_dir(&src);
        edit(d.path());
        match load_hf_dir(d.path(), 0) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    };
    let e = err(&|d| edit_config(d, |v| v["hidden_act"] = "swish".into()));
    assert!(e.contains("hidden_act \"swish\""), "{e}");
    let e = err(&|d| edit_config(d, |v| v["model_type"] = "roberta".into()));
    assert!(e.contains("only BERT"), "{e}");
    let e = err(&|d| edit_config(d, |v| v["position_embedding_type"] = "relative_key".into()));
    assert!(e.contains("relative_key"), "{e}");
    let e = err(&|d| edit_config(d, |v| v["vocab_size"] = 99.into()));
    assert!(e.contains("vocab_size 99") && e.contains("85 tokens"), "{e}");
    let e = err(&|d| edit_config(d, |v| v["num_hidden_layers"] = 3.into()));
    assert!(e.contains("missing") && e.contains("layers"), "{e}");
    let e = err(&|d| edit_config(d, |v| v["hidden_size"] = 24.into()));
    assert!(e.contains("expected shape"), "{e}");
    let e = err(&|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    assert!(e.contains("no model.safetensors or pytorch_model.bin"), "{e}");
    let e = err(&|d| std::fs::write(d.join("vocab.txt"), "a\nb\n").unwrap());
    assert!(e.contains("[UNK]"), "{e}");
    let e = err(&|d| std::fs::write(d.join("config.json"), "{\"hidden_size\": 16}").unwrap());
    assert!(e.contains("config.json") && e.contains("intermediate_size"), "{e}");
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nli-bert"));
    c.env_remove("NLI_BERT_HF_URL").env_remove("NLI_BERT_HOME");
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "failed: {o}\n{e}");
    format!("{o}{e}")
}

#[test]
fn finetuned_hf_model_saves_vocab_txt_and_loads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.tsv");
    let mut tsv = String::from("label\tpremise\thypothesis\n");
    for (l, p, h) in [
        ("entailment", "A man is playing a guitar.", "A person plays music."),
        ("contradiction", "A dog is sleeping.", "The dog runs outside."),
        ("neutral", "Two people sitting on a bench", "Two people are playing."),
        ("entailment", "A woman plays a guitar", "A woman plays an instrument"),
    ] {
        tsv += &format!("{l}\t{p}\t{h}\n");
    }
    std::fs::write(&data, tsv).unwrap();
    let model = fixtures().join("tiny_safetensors");
    let out = tmp.path().join("out");
    let (model, data_s, out_s) = (model.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let train = ["finetune", "--model", model, "--data", data_s, "--test-data", data_s, "--max-len", "24"];
    let opts =
        ["--epochs", "2", "--batch-size", "2", "--lr", "1e-3", "--adamw", "0.01", "--precision", "f64"];
    let log = ok(bin().args(train).args(opts).args(["--out", out_s, "--threads", "1"]));
    assert!(log.contains("reordered"), "{log}");
    assert!(out.join("vocab.txt").is_file() && !out.join("vocab.json").exists());
    assert_eq!(
        std::fs::read(out.join("vocab.txt")).unwrap(),
        std::fs::read(fixtures().join("tiny_safetensors/vocab.txt")).unwrap()
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model"]["tokenizer"], "word_piece");
    assert_eq!(cfg["model"]["activation"], "gelu_tanh");
    assert_eq!(cfg["model"]["embedding_layernorm"], true);
    // the last epoch's test accuracy is what eval of the saved model reports
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().last().unwrap(),
    )
    .unwrap();
    let ev = ok(bin().args(["eval", "--model", out_s, "--data", data_s, "--json", "--precision", "f64"]));
    let ev: serde_json::Value = serde_json::from_str(ev.lines().next().unwrap()).unwrap();
    assert_eq!(ev["accuracy"], last["test_acc"], "{ev} vs {last}");
    let pred = ok(bin().args([
        "predict",
        "--model",
        out_s,
        "--premise",
        "A man plays guitar",
        "--hypothesis",
        "Music",
    ]));
    assert!(["entailment", "contradiction", "neutral"].iter().any(|l| pred.starts_with(l)), "{pred}");
    let m = store::load_model(out_s, None, false, 0).unwrap();
    assert!(m.cfg.hf_extra_dropout && m.cfg.train_pos_embedding);
}

/// A minimal HTTP/1.1 server on 127.0.0.1: `routes` maps a path to a body, or to a redirect
/// (`Err(location)`); anything else is 404. Logs the paths asked for.
fn serve(routes: HashMap<String, Result<Vec<u8>, String>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(s) = stream else { continue };
            handle(s, &routes, &log2);
        }
    });
    (base, log)
}

fn handle(mut s: TcpStream, routes: &HashMap<String, Result<Vec<u8>, String>>, log: &Mutex<Vec<String>>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let path = String::from_utf8_lossy(&req).split(' ').nth(1).unwrap_or("").to_string();
    log.lock().unwrap().push(path.clone());
    let _ = match routes.get(&path) {
        Some(Ok(body)) => {
            let _ =
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            s.write_all(body)
        }
        Some(Err(loc)) => {
            write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        }
        None => write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
    let _ = s.flush();
}

#[test]
fn hf_hub_model_downloads_into_the_cache_and_runs() {
    let src = fixtures().join("tiny_safetensors");
    let file = |n: &str| std::fs::read(src.join(n)).unwrap();
    let mut routes = HashMap::new();
    // the hub answers /resolve/ with a redirect to its CDN for large files
    routes.insert("/acme/tiny-bert/resolve/main/model.safetensors".into(), Err("/cdn/weights".into()));
    routes.insert("/cdn/weights".into(), Ok(file("model.safetensors")));
    routes.insert("/acme/tiny-bert/resolve/main/config.json".into(), Ok(file("config.json")));
    routes.insert("/acme/tiny-bert/resolve/main/vocab.txt".into(), Ok(file("vocab.txt")));
    let (base, log) = serve(routes);
    let home = tempfile::tempdir().unwrap();
    let predict = |model: &str| {
        bin()
            .env("NLI_BERT_HF_URL", &base)
            .env("NLI_BERT_HOME", home.path())
            .args(["predict", "--model", model, "--max-len", "24", "--premise", "A man plays a guitar"])
            .args(["--hypothesis", "Music"])
            .output()
            .unwrap()
    };
    let out = predict("hf:acme/tiny-bert");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cached = home.path().join("hf/acme/tiny-bert");
    for f in ["config.json", "vocab.txt", "model.safetensors"] {
        assert_eq!(std::fs::read(cached.join(f)).unwrap(), file(f), "{f}");
    }
    assert!(!cached.join("tokenizer_config.json").exists(), "404 for an optional file writes nothing");
    let asked = log.lock().unwrap().len();
    assert!(log.lock().unwrap().iter().any(|p| p.ends_with("tokenizer_config.json")));
    // the same prediction as from the directory itself, and no request the second time
    let mut local = bin();
    local.args([
        "predict",
        "--model",
        src.to_str().unwrap(),
        "--max-len",
        "24",
        "--premise",
        "A man plays a guitar",
    ]);
    let local = local.args(["--hypothesis", "Music"]).output().unwrap();
    assert_eq!(out.stdout, local.stdout);
    let again = predict("hf:acme/tiny-bert");
    assert!(again.status.success());
    assert_eq!(log.lock().unwrap().len(), asked, "a cached model needs no download");

    let missing = predict("hf:acme/nope");
    assert_eq!(missing.status.code(), Some(1));
    let e = String::from_utf8_lossy(&missing.stderr);
    assert!(e.contains("acme/nope/resolve/main/config.json") && e.contains("not found"), "{e}");
    let bad = predict("hf:../etc");
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}
