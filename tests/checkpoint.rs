//! Checkpoint reading and writing: torch.save files (zip and legacy containers, written by real
//! torch 2.15 through scripts/make_torch_fixtures.py), hostile pickles, safetensors round trips,
//! and the strictness of the name mapping.

use nli_bert::model::checkpoint::names::{hf_to_d2l, infer_d2l_dims, load_into_params};
use nli_bert::model::checkpoint::safetensors::{load_safetensors, read_safetensors_metadata, save_params};
use nli_bert::model::checkpoint::torch::{
    load_torch_state_dict, parse_torch_state_dict, TensorData, TorchDtype,
};
use nli_bert::model::config::BertConfig;
use nli_bert::model::params::ParamLayout;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PWNED: &str = "/tmp/nli-bert-fixture-pwned-5c1e0b";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

/// The configuration of the `d2l_tiny` fixtures: V=5, C=2, F=3, L=2, P=3.
fn tiny_config() -> BertConfig {
    BertConfig { hidden: 2, ffn: 3, heads: 1, layers: 2, max_positions: 3, ..BertConfig::d2l_small(5) }
}

fn err_of<T: std::fmt::Debug>(r: nli_bert::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn load_tiny() -> Vec<TensorData> {
    load_torch_state_dict(&fixture("d2l_tiny_zip.pt")).unwrap()
}

// ------------------------------------------------------------------------------------------ reading

fn parse_expected(dtype: &str, s: &str) -> f64 {
    // float32/float16/bfloat16 values are written as the shortest f32 repr (see the script)
    if matches!(dtype, "float32" | "float16" | "bfloat16") {
        s.parse::<f32>().unwrap() as f64
    } else {
        s.parse::<f64>().unwrap()
    }
}

#[test]
fn torch_files_match_expected_values_exactly() {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = expected["files"].as_object().unwrap();
    assert_eq!(files.len(), 6);
    for (file, set) in files {
        let want = expected["sets"][set.as_str().unwrap()].as_array().unwrap();
        let got = load_torch_state_dict(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(got.len(), want.len(), "{file}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.name, w["name"].as_str().unwrap(), "{file}");
            let shape: Vec<usize> =
                w["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            assert_eq!(g.shape, shape, "{file}: {}", g.name);
            let dt = w["dtype"].as_str().unwrap();
            assert_eq!(g.dtype.name(), dt, "{file}: {}", g.name);
            let vals: Vec<f64> = w["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| parse_expected(dt, x.as_str().unwrap()))
                .collect();
            assert_eq!(g.values.len(), vals.len(), "{file}: {}", g.name);
            for (i, (a, b)) in g.values.iter().zip(&vals).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{file}: {}[{i}]: {a} vs {b}",
                    g.name
                );
            }
        }
    }
}

#[test]
fn mixed_fixture_details() {
    let t = load_torch_state_dict(&fixture("mixed_legacy.pt")).unwrap();
    let by = |n: &str| t.iter().find(|x| x.name == n).unwrap();
    assert_eq!(by("position_ids").dtype, TorchDtype::I64);
    assert!(!by("position_ids").dtype.is_float());
    assert_eq!(by("position_ids").values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(by("special").non_finite_count(), 3);
    assert_eq!(by("f32").non_finite_count(), 0);
    // the transposed view is the transpose of the base tensor
    let (a, at) = (by("f32"), by("f32_t"));
    assert_eq!(at.shape, vec![4, 3]);
    for i in 0..3 {
        for j in 0..4 {
            assert_eq!(a.values[i * 4 + j], at.values[j * 3 + i]);
        }
    }
    assert_eq!(by("scalar").shape, Vec::<usize>::new());
    assert_eq!(by("empty").values.len(), 0);
}

#[test]
fn d2l_tiny_zip_and_legacy_agree_and_infer_dims() {
    let z = load_tiny();
    let l = load_torch_state_dict(&fixture("d2l_tiny_legacy.pt")).unwrap();
    assert_eq!(z, l);
    assert_eq!(z.len(), 3 + 16 * 2 + 2 + 6 + 2); // embeddings, blocks, hidden, mlm, nsp
    assert_eq!(z[0].name, "encoder.pos_embedding");
    assert_eq!(infer_d2l_dims(&z, Path::new("x")).unwrap(), (5, 2, 3, 2, 3));
}

// ---------------------------------------------------------------------------------------- hostile

#[test]
fn hostile_pickles_are_refused_without_side_effects() {
    let _ = std::fs::remove_file(PWNED);
    for (file, global) in [
        ("evil_os_system.pt", "os.system"),
        ("evil_posix_system.pt", "posix.system"),
        ("evil_eval.pt", "builtins.eval"),
        ("evil_popen.pt", "subprocess.Popen"),
        ("evil_nested.pt", "posix.system"),
    ] {
        let path = fixture(file);
        let e = err_of(load_torch_state_dict(&path));
        assert!(e.contains(&format!("`{global}`")), "{file}: {e}");
        assert!(e.contains(path.to_str().unwrap()), "{file}: {e}");
        assert!(e.contains("refused global"), "{file}: {e}");
    }
    assert!(!Path::new(PWNED).exists(), "a payload ran");
}

#[test]
fn inconsistent_storages_and_views_are_refused() {
    for (file, needles) in [
        ("huge_numel.pt", &["`w`", "1000000000000"][..]),
        ("bad_stride.pt", &["`w`", "stride [4, 1]", "storage of 12"][..]),
        ("bad_offset.pt", &["`w`", "offset 11", "storage of 12"][..]),
        ("not_a_tensor.pt", &["`step`", "int, not a tensor"][..]),
    ] {
        let path = fixture(file);
        let e = err_of(load_torch_state_dict(&path));
        assert!(e.contains(path.to_str().unwrap()), "{file}: {e}");
        for n in needles {
            assert!(e.contains(n), "{file}: `{n}` not in: {e}");
        }
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let p = Path::new("cut.pt");
    let legacy = std::fs::read(fixture("mixed_legacy.pt")).unwrap();
    assert!(parse_torch_state_dict(&legacy, p).is_ok());
    for n in 0..legacy.len() {
        let e = err_of(parse_torch_state_dict(&legacy[..n], p));
        assert!(e.contains("cut.pt"), "{n}: {e}");
    }
    assert!(
        err_of(parse_torch_state_dict(&legacy[..legacy.len() - 10], p)).contains("bytes left in the file")
    );
    let zip = std::fs::read(fixture("d2l_tiny_zip.pt")).unwrap();
    assert!(parse_torch_state_dict(&zip, p).is_ok());
    for n in 0..zip.len() {
        assert!(parse_torch_state_dict(&zip[..n], p).is_err(), "zip cut at {n}");
    }
    // the same through a real file
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cut.pt");
    std::fs::write(&f, &zip[..zip.len() / 2]).unwrap();
    assert!(err_of(load_torch_state_dict(&f)).contains(f.to_str().unwrap()));
    // flipped bits inside the pickles must not panic either (errors or, rarely, other values)
    for i in 0..2000 {
        let mut b = legacy.clone();
        let k = (hash32(2 * i) as usize) % 1527; // the pickles end at byte 1527
        b[k] ^= 1 << (hash32(2 * i + 1) % 8);
        let _ = parse_torch_state_dict(&b, p);
    }
}

/// A deterministic hash (splitmix64's finaliser) for picking bytes to corrupt.
fn hash32(i: usize) -> u32 {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 32) as u32
}

#[test]
fn not_a_torch_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    std::fs::write(&p, b"hello").unwrap();
    assert!(err_of(load_torch_state_dict(&p)).contains("not a torch.save file"));
    // a bare pickle of a dict is refused (no legacy magic number)
    std::fs::write(&p, b"\x80\x02}q\x00.").unwrap();
    assert!(err_of(load_torch_state_dict(&p)).contains("magic number"));
    assert!(err_of(load_torch_state_dict(&dir.path().join("missing.pt"))).contains("missing.pt"));
}

// ------------------------------------------------------------------------------------ safetensors

fn filled_params<F: nli_bert::float::Float>(n: usize) -> Vec<F> {
    (0..n)
        .map(|i| {
            <F as nli_bert::float::Float>::from_f64(((i as f64) * 0.7311).sin() * 3.0 + 1e-30 * i as f64)
        })
        .collect()
}

#[test]
fn safetensors_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config();
    let layout = ParamLayout::new(&cfg);
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("step".to_string(), "12".to_string());

    let p32 = dir.path().join("f32.safetensors");
    let v32: Vec<f32> = filled_params(layout.total);
    save_params(&p32, &layout, &v32, &meta).unwrap();
    let p64 = dir.path().join("f64.safetensors");
    let v64: Vec<f64> = filled_params(layout.total);
    save_params(&p64, &layout, &v64, &meta).unwrap();
    // no temporary files left behind
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    assert_eq!(read_safetensors_metadata(&p32).unwrap(), meta);

    for (p, want, dt) in [
        (&p32, v32.iter().map(|&x| x as f64).collect::<Vec<_>>(), TorchDtype::F32),
        (&p64, v64.clone(), TorchDtype::F64),
    ] {
        let t = load_safetensors(p).unwrap();
        assert_eq!(t.len(), layout.entries.len());
        for (e, t) in layout.entries.iter().zip(&t) {
            assert_eq!((&t.name, &t.shape, t.dtype), (&e.name, &e.shape, dt));
            for (a, b) in t.values.iter().zip(&want[e.range()]) {
                assert_eq!(a.to_bits(), b.to_bits(), "{}", e.name);
            }
        }
        let mut params = vec![0.0; layout.total];
        let rep = load_into_params(&t, &layout, &mut params, p).unwrap();
        assert!(!rep.output_initialized_fresh);
        assert_eq!(rep.loaded, layout.entries.len());
        assert_eq!(
            params.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
    // overwrite in place (atomic rename over an existing file)
    save_params(&p64, &layout, &vec![0.5f64; layout.total], &BTreeMap::new()).unwrap();
    assert!(load_safetensors(&p64).unwrap().iter().all(|t| t.values.iter().all(|&v| v == 0.5)));
    // wrong buffer length
    assert!(err_of(save_params(&p64, &layout, &[0.0f64; 3], &meta)).contains("layout"));
}

/// A safetensors file from a raw JSON header and a data section.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn lying_safetensors_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "beyond the file",
            raw_safetensors(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]),
        ),
        (
            "overlap",
            raw_safetensors(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
        ),
        (
            "shape x dtype",
            raw_safetensors(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]),
        ),
        ("not json", raw_safetensors("{nope", &[])),
        ("tiny", vec![1, 2, 3]),
        ("huge header", u64::MAX.to_le_bytes().to_vec()),
        ("complex", raw_safetensors(r#"{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#, &[0; 8])),
    ];
    for (what, bytes) in cases {
        std::fs::write(&p, bytes).unwrap();
        let e = err_of(load_safetensors(&p));
        assert!(e.contains(p.to_str().unwrap()), "{what}: {e}");
    }
    // a valid one with an I64 buffer and a BF16 tensor reads fine
    let mut data = 7i64.to_le_bytes().to_vec();
    data.extend_from_slice(&half::bf16::from_f32(1.5).to_le_bytes());
    let ok = raw_safetensors(
        r#"{"embeddings.position_ids":{"dtype":"I64","shape":[1,1],"data_offsets":[0,8]},"w":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}}"#,
        &data,
    );
    std::fs::write(&p, ok).unwrap();
    let t = load_safetensors(&p).unwrap();
    assert_eq!((t[0].dtype, t[0].values[0]), (TorchDtype::I64, 7.0));
    assert_eq!((t[1].dtype, t[1].values[0]), (TorchDtype::BF16, 1.5));
}

// ---------------------------------------------------------------------------------- name mapping

#[test]
fn load_into_params_fills_every_entry() {
    let t = load_tiny();
    let layout = ParamLayout::new(&tiny_config());
    let mut params = vec![f64::NAN; layout.total];
    let rep = load_into_params(&t, &layout, &mut params, Path::new("tiny.pt")).unwrap();
    assert!(rep.output_initialized_fresh);
    assert_eq!(rep.pretraining_heads_skipped, 8); // mlm.mlp.{0,2,3}.{weight,bias}, nsp.output.*
    assert_eq!(rep.loaded, layout.entries.len() - 2);
    for e in &layout.entries {
        if e.name.starts_with("output.") {
            assert!(params[e.range()].iter().all(|v| v.is_nan()));
            continue;
        }
        let src = t.iter().find(|x| x.name == e.name).unwrap();
        assert_eq!(&params[e.range()], &src.values[..], "{}", e.name);
    }
    // W_q, W_k, W_v weights land adjacent (one QKV GEMM)
    let b0 = &layout.ranges.blocks[0];
    let wk = t.iter().find(|x| x.name == "encoder.blks.0.attention.W_k.weight").unwrap();
    assert_eq!(&params[b0.qkv_weight.start + 4..b0.qkv_weight.start + 8], &wk.values[..]);
}

#[test]
fn load_into_params_is_strict() {
    let t = load_tiny();
    let cfg = tiny_config();
    let layout = ParamLayout::new(&cfg);
    let mut params = vec![0.0; layout.total];
    let p = Path::new("tiny.pt");

    // a missing key
    let fewer: Vec<TensorData> =
        t.iter().filter(|x| x.name != "encoder.blks.1.ffn.dense2.bias").cloned().collect();
    let e = err_of(load_into_params(&fewer, &layout, &mut params, p));
    assert!(
        e.contains("missing") && e.contains("`encoder.blks.1.ffn.dense2.bias`") && e.contains("tiny.pt"),
        "{e}"
    );

    // a wrong shape: a config with F = 4
    let l4 = ParamLayout::new(&BertConfig { ffn: 4, ..cfg.clone() });
    let e = err_of(load_into_params(&t, &l4, &mut vec![0.0; l4.total], p));
    assert!(
        e.contains("encoder.blks.0.ffn.dense1.weight") && e.contains("[4, 2]") && e.contains("[3, 2]"),
        "{e}"
    );
    assert!(e.contains("bert.small is 256 hidden") && e.contains("heads"), "{e}");

    // more layers in the checkpoint than in the config
    let l1 = ParamLayout::new(&BertConfig { layers: 1, ..cfg.clone() });
    let e = err_of(load_into_params(&t, &l1, &mut vec![0.0; l1.total], p));
    assert!(e.contains("encoder.blks.1.") && e.contains("more layers (2) than the configuration (1)"), "{e}");

    // fewer layers in the checkpoint than in the config
    let l3 = ParamLayout::new(&BertConfig { layers: 3, ..cfg.clone() });
    let e = err_of(load_into_params(&t, &l3, &mut vec![0.0; l3.total], p));
    assert!(
        e.contains("encoder.blks.2.") && e.contains("fewer layers (2) than the configuration (3)"),
        "{e}"
    );

    // vocabulary mismatch
    let lv = ParamLayout::new(&BertConfig { vocab_size: 6, ..cfg.clone() });
    let e = err_of(load_into_params(&t, &lv, &mut vec![0.0; lv.total], p));
    assert!(e.contains("vocabulary differs (5 rows in the checkpoint, 6"), "{e}");

    // an unknown key
    let mut extra = t.clone();
    extra.push(TensorData {
        name: "decoder.weight".into(),
        shape: vec![1],
        dtype: TorchDtype::F32,
        values: vec![0.0],
    });
    let e = err_of(load_into_params(&extra, &layout, &mut params, p));
    assert!(e.contains("unexpected") && e.contains("`decoder.weight`"), "{e}");

    // an integer tensor where a weight belongs
    let mut ints = t.clone();
    ints[1].dtype = TorchDtype::I64;
    assert!(err_of(load_into_params(&ints, &layout, &mut params, p)).contains("int64"));

    // the classifier: both present → loaded; one of the two → error
    let mut with_out = t.clone();
    with_out.push(TensorData {
        name: "output.weight".into(),
        shape: vec![3, 2],
        dtype: TorchDtype::F32,
        values: vec![1.0; 6],
    });
    let e = err_of(load_into_params(&with_out, &layout, &mut params, p));
    assert!(e.contains("output.bias"), "{e}");
    with_out.push(TensorData {
        name: "output.bias".into(),
        shape: vec![3],
        dtype: TorchDtype::F32,
        values: vec![2.0; 3],
    });
    let rep = load_into_params(&with_out, &layout, &mut params, p).unwrap();
    assert!(!rep.output_initialized_fresh);
    assert_eq!(&params[layout.ranges.out_bias.clone()], &[2.0; 3]);
    // wrong number of labels
    let lk = ParamLayout::new(&BertConfig { num_labels: 2, ..cfg.clone() });
    let e = err_of(load_into_params(&with_out, &lk, &mut vec![0.0; lk.total], p));
    assert!(e.contains("classifier has 3 outputs, the configuration 2"), "{e}");
}

/// Our name → a Hugging Face name (the inverse of `hf_to_d2l`, for the test only).
fn to_hf(name: &str) -> String {
    let fixed = [
        ("encoder.token_embedding.weight", "bert.embeddings.word_embeddings.weight"),
        ("encoder.pos_embedding", "bert.embeddings.position_embeddings.weight"),
        ("encoder.segment_embedding.weight", "bert.embeddings.token_type_embeddings.weight"),
        ("encoder.embedding_norm.weight", "bert.embeddings.LayerNorm.gamma"),
        ("encoder.embedding_norm.bias", "bert.embeddings.LayerNorm.beta"),
        ("hidden.0.weight", "bert.pooler.dense.weight"),
        ("hidden.0.bias", "bert.pooler.dense.bias"),
        ("output.weight", "classifier.weight"),
        ("output.bias", "classifier.bias"),
    ];
    if let Some((_, hf)) = fixed.iter().find(|(d, _)| *d == name) {
        return hf.to_string();
    }
    let rest = name.strip_prefix("encoder.blks.").unwrap();
    let (l, sub) = rest.split_once('.').unwrap();
    let (stem, p) = sub.rsplit_once('.').unwrap();
    let hf = match stem {
        "attention.W_q" => "attention.self.query",
        "attention.W_k" => "attention.self.key",
        "attention.W_v" => "attention.self.value",
        "attention.W_o" => "attention.output.dense",
        "addnorm1.ln" => "attention.output.LayerNorm",
        "ffn.dense1" => "intermediate.dense",
        "ffn.dense2" => "output.dense",
        "addnorm2.ln" => "output.LayerNorm",
        other => panic!("{other}"),
    };
    format!("bert.encoder.layer.{l}.{hf}.{p}")
}

#[test]
fn hugging_face_names_load() {
    let cfg = BertConfig { embedding_layernorm: true, ..tiny_config() };
    let layout = ParamLayout::new(&cfg);
    let mut tensors: Vec<TensorData> = layout
        .entries
        .iter()
        .map(|e| {
            let mut shape = e.shape.clone();
            if e.name == "encoder.pos_embedding" {
                shape.remove(0); // HF stores [P, C]
            }
            let values = e.range().map(|i| i as f64 * 0.5).collect();
            TensorData { name: to_hf(&e.name), shape, dtype: TorchDtype::F32, values }
        })
        .collect();
    for t in &tensors {
        assert!(hf_to_d2l(&t.name).is_some(), "{}", t.name);
    }
    tensors.push(TensorData {
        name: "bert.embeddings.position_ids".into(),
        shape: vec![1, 3],
        dtype: TorchDtype::I64,
        values: vec![0.0, 1.0, 2.0],
    });
    tensors.push(TensorData {
        name: "cls.predictions.bias".into(),
        shape: vec![5],
        dtype: TorchDtype::F32,
        values: vec![0.0; 5],
    });
    let mut params = vec![0.0; layout.total];
    let rep = load_into_params(&tensors, &layout, &mut params, Path::new("model.safetensors")).unwrap();
    assert_eq!(rep.loaded, layout.entries.len());
    assert_eq!(rep.hf_names, layout.entries.len());
    assert_eq!(rep.skipped, vec!["bert.embeddings.position_ids".to_string()]);
    assert_eq!(rep.pretraining_heads_skipped, 1);
    assert!(params.iter().enumerate().all(|(i, &v)| v == i as f64 * 0.5));
    assert_eq!(infer_d2l_dims(&tensors, Path::new("m")).unwrap(), (5, 2, 3, 2, 3));

    // an HF checkpoint into a d2l configuration (no embedding LayerNorm): a clear error
    let d2l = ParamLayout::new(&tiny_config());
    let e = err_of(load_into_params(&tensors, &d2l, &mut vec![0.0; d2l.total], Path::new("m")));
    assert!(e.contains("embedding LayerNorm"), "{e}");
    // a d2l checkpoint into an HF configuration
    let e = err_of(load_into_params(&load_tiny(), &layout, &mut params, Path::new("m")));
    assert!(e.contains("encoder.embedding_norm.weight") && e.contains("embedding LayerNorm"), "{e}");
}
