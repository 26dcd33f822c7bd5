//! `nli-bert export --to hf` against the real transformers: tests/fixtures/hf/export/expected.json
//! was made by scripts/make_export_fixture.py, which loaded our export of the tiny Hugging Face
//! fixture with `AutoModelForSequenceClassification` / `AutoTokenizer` (no missing, unexpected or
//! mismatched keys) and recorded its tensors, token ids and logits. Here the same export is made
//! again and checked to be those very bytes, with those tensor names and shapes, our tokenizer
//! giving those ids, and our engine, loading the exported directory, those logits (f32, 1e-5).

use std::path::Path;

use nli_bert::data::vocab::Vocab;
use nli_bert::data::wordpiece::{read_vocab_txt, WordPiece};
use nli_bert::model::export::export_hf;
use nli_bert::model::store::{load_model, scratch_model, ScratchArgs};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> serde_json::Value {
    let p = root().join("tests/fixtures/hf/export/expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn sha1_hex(path: &Path) -> String {
    nli_bert::data::hub::sha1_file(path).unwrap()
}

fn exported() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = load_model(root().join("tests/fixtures/hf/tiny_safetensors").to_str().unwrap(), None, false, 0)
        .unwrap();
    export_hf(&m, dir.path()).unwrap();
    dir
}

#[test]
fn the_export_is_the_directory_transformers_loaded() {
    let fx = fixture();
    let dir = exported();
    for (file, want) in fx["sha1"].as_object().unwrap() {
        assert_eq!(
            sha1_hex(&dir.path().join(file)),
            want.as_str().unwrap(),
            "{file} differs from the bytes transformers loaded: rerun scripts/make_export_fixture.py"
        );
    }
    // Tensor names and shapes: exactly transformers' state dict.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ours: std::collections::BTreeMap<String, Vec<usize>> =
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec())).collect();
    let theirs: std::collections::BTreeMap<String, Vec<usize>> = fx["state_dict"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, s)| {
            (n.clone(), s.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect())
        })
        .collect();
    assert_eq!(ours, theirs);
    // Labels in our order.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["id2label"], fx["id2label"]);
    assert_eq!(fx["id2label"]["0"], "entailment");
}

#[test]
fn our_tokenizer_and_engine_on_the_export_give_transformers_ids_and_logits() {
    let fx = fixture();
    let dir = exported();
    let vocab: Vocab = read_vocab_txt(dir.path().join("vocab.txt")).unwrap();
    let wp = WordPiece::new(&vocab, true).unwrap();
    let pairs = fx["pairs"].as_array().unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
    };
    for p in pairs {
        let (a, b) = (p["premise"].as_str().unwrap(), p["hypothesis"].as_str().unwrap());
        let (got, types) = wp.encode_pair(a, b, 64);
        assert_eq!(got.iter().map(|&x| x as u64).collect::<Vec<_>>(), ids(&p["input_ids"]), "{a:?} / {b:?}");
        assert_eq!(types.iter().map(|&x| x as u64).collect::<Vec<_>>(), ids(&p["token_type_ids"]));
    }
    // `nli-bert predict` on the exported directory (f32, CPU) prints transformers' logits.
    let input = dir.path().join("pairs.tsv");
    let tsv: String =
        std::iter::once("premise\thypothesis\n".to_string())
            .chain(pairs.iter().map(|p| {
                format!("{}\t{}\n", p["premise"].as_str().unwrap(), p["hypothesis"].as_str().unwrap())
            }))
            .collect();
    std::fs::write(&input, tsv).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nli-bert"))
        .args(["predict", "--model", dir.path().to_str().unwrap(), "--input", input.to_str().unwrap()])
        .args(["--max-len", "64", "--device", "cpu", "--threads", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), pairs.len());
    let mut worst = 0.0f64;
    for (line, p) in lines.iter().zip(pairs) {
        let ours = line["logits"].as_array().unwrap_or_else(|| panic!("{line}"));
        for (x, y) in ours.iter().zip(p["logits"].as_array().unwrap()) {
            worst = worst.max((x.as_f64().unwrap() - y.as_f64().unwrap()).abs());
        }
    }
    assert!(worst <= 1e-5, "logits differ from transformers' by {worst:e}");
}

#[test]
fn a_d2l_architecture_model_cannot_be_exported_and_nothing_is_written() {
    let ds = nli_bert::data::snli::read_dataset(root().join("examples/data/snli_sample_test.tsv")).unwrap();
    let s = ScratchArgs { hidden: 8, ffn: 16, heads: 2, layers: 1, min_freq: 5 };
    let m = scratch_model(&ds, &s, 32, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    let e = export_hf(&m, &out).unwrap_err();
    assert!(matches!(e, nli_bert::Error::Usage(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("cannot be exported as a Hugging Face BERT") && msg.contains("LayerNorm"), "{msg}");
    assert!(!out.exists(), "nothing written");
}
