//! Hostile and broken input files, each a clear error naming the file and the tensor or line, or
//! the documented d2l behaviour, never a panic and never code run. Complements
//! `tests/checkpoint.rs` (torch-written hostile fixtures, truncations, lying safetensors headers),
//! `tests/data_pipeline.rs` (reader basics) and `tests/download.rs` (network faults); the table of
//! every case and the test that proves it is RELIABILITY.md.

use nli_bert::data::batch::{encode_dataset, Truncate};
use nli_bert::data::snli::{read_dataset, read_snli_jsonl, read_snli_txt, read_tsv, Dataset};
use nli_bert::data::vocab::Vocab;
use nli_bert::data::wordpiece::read_vocab_txt;
use nli_bert::model::checkpoint::names::load_into_params;
use nli_bert::model::checkpoint::safetensors::{load_safetensors, save_params};
use nli_bert::model::checkpoint::torch::{load_torch_state_dict, parse_torch_state_dict};
use nli_bert::model::config::BertConfig;
use nli_bert::model::params::ParamLayout;
use nli_bert::model::store::load_model;
use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use zip::write::SimpleFileOptions;

const PWNED: &str = "/tmp/nli-bert-hostile-pwned-7f3a";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn err_of<T>(r: nli_bert::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

// ------------------------------------------------------------------------------- pickle builder

/// Writes pickle opcodes by hand (protocol 2, plus the protocol-4 ones torch uses).
#[derive(Clone, Default)]
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Pk {
        Pk(vec![0x80, 2])
    }
    fn op(mut self, b: &[u8]) -> Pk {
        self.0.extend_from_slice(b);
        self
    }
    fn global(self, module: &str, name: &str) -> Pk {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn s(mut self, s: &str) -> Pk {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(mut self, i: i32) -> Pk {
        self.0.push(b'J');
        self.0.extend_from_slice(&i.to_le_bytes());
        self
    }
    /// A big int (LONG1), for sizes beyond i32.
    fn long(mut self, i: i64) -> Pk {
        self.0.extend_from_slice(&[0x8a, 8]);
        self.0.extend_from_slice(&i.to_le_bytes());
        self
    }
    fn ints(self, v: &[i64]) -> Pk {
        let mut p = self.op(b"(");
        for &i in v {
            p = p.long(i);
        }
        p.op(b"t")
    }
    /// torch's persistent id for storage `key` of `numel` float32 elements.
    fn storage(self, key: &str, numel: i64) -> Pk {
        self.op(b"(").s("storage").global("torch", "FloatStorage").s(key).s("cpu").long(numel).op(b"tQ")
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(self, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Pk {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .storage(key, numel)
            .long(offset)
            .ints(size)
            .ints(stride)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

/// A torch zip container: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
fn torch_zip(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(pkl).unwrap();
    w.start_file("archive/byteorder", opts).unwrap();
    w.write_all(b"little").unwrap();
    for (k, b) in storages {
        w.start_file(format!("archive/data/{k}"), opts).unwrap();
        w.write_all(b).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A one-tensor state dict `{"w": <tensor>}` pickle built by `t`.
fn dict_of(t: impl FnOnce(Pk) -> Pk) -> Vec<u8> {
    t(Pk::new().op(b"}(").s("w")).op(b"u").stop()
}

/// Loads `bytes` as a torch file written to `dir/name`, expecting an error; returns it.
fn torch_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = write(dir, name, bytes);
    let e = err_of(load_torch_state_dict(&p));
    assert!(e.contains(p.to_str().unwrap()), "{name}: the error does not name the file: {e}");
    e
}

// ------------------------------------------------------------------------ checkpoints: code

#[test]
fn every_way_of_naming_code_in_a_pickle_is_refused_and_nothing_runs() {
    let _ = std::fs::remove_file(PWNED);
    let dir = tempfile::tempdir().unwrap();
    let touch = format!("touch {PWNED}");
    // GLOBAL + REDUCE on names torch's own weights_only unpickler refuses too
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("__builtin__", "eval"),
        ("subprocess", "Popen"),
        ("subprocess", "check_output"),
        ("torch", "load"),
        ("torch.storage", "_load_from_bytes"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("collections", "defaultdict"),
    ] {
        let pkl = Pk::new().global(module, name).op(b"(").s(&touch).op(b"tR").stop();
        for (file, bytes) in [("plain.pt", pkl.clone()), ("zip.pt", torch_zip(&pkl, &[]))] {
            let e = torch_err(dir.path(), file, &bytes);
            assert!(e.contains(&format!("refused global `{module}.{name}`")), "{module}.{name} {file}: {e}");
        }
        // the same name through STACK_GLOBAL (protocol 4), inside a valid-looking state dict
        let p4 =
            Pk(vec![0x80, 4]).op(b"}(").s("w").s(module).s(name).op(b"\x93(").s(&touch).op(b"tRu").stop();
        let e = torch_err(dir.path(), "p4.pt", &torch_zip(&p4, &[]));
        assert!(e.contains(&format!("`{module}.{name}`")) && e.contains("nothing was executed"), "{e}");
    }
    assert!(!Path::new(PWNED).exists(), "a payload ran");
}

#[test]
fn reduce_build_newobj_and_other_opcodes_outside_the_allowlist_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let od = || Pk::new().global("collections", "OrderedDict");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // REDUCE on something that is not an allowed global
        ("reduce-str", Pk::new().s("os.system").op(b")R").stop(), "REDUCE on a str"),
        ("reduce-args", od().s("x").op(b"R").stop(), "REDUCE arguments are a str"),
        ("reduce-storage", Pk::new().global("torch", "FloatStorage").op(b")R").stop(), "not callable"),
        ("reduce-dtype", Pk::new().global("torch", "float32").op(b")R").stop(), "not callable"),
        // NEWOBJ: the same rules as REDUCE
        ("newobj-args", od().s("k").int(1).op(b"\x86\x85\x81").stop(), "with arguments is not supported"),
        ("newobj-int", Pk::new().int(3).op(b")\x81").stop(), "REDUCE on a int"),
        // BUILD: state only on a dict (dropped) or a tensor
        ("build-list", Pk::new().op(b"]").s("__setstate__").op(b"b").stop(), "BUILD on a list"),
        ("build-str", Pk::new().s("x").op(b"}b").stop(), "BUILD on a str"),
        // opcodes that import or call by themselves
        ("inst", Pk::new().op(b"(ios\nsystem\n").stop(), "0x69 INST"),
        ("obj", Pk::new().op(b"(").global("collections", "OrderedDict").op(b"o").stop(), "0x6f OBJ"),
        ("ext1", Pk::new().op(b"\x82\x01").stop(), "EXT1/2/4"),
        ("persid", Pk::new().op(b"P0\n").stop(), "0x50 PERSID"),
        ("newobj_ex", Pk::new().op(b"\x92").stop(), "NEWOBJ_EX"),
        // a persistent id that is not a torch storage
        ("persid-bad", Pk::new().s("file:///etc/passwd").op(b"Q").stop(), "persistent id: not a tuple"),
        (
            "persid-type",
            Pk::new()
                .op(b"(")
                .s("storage")
                .global("collections", "OrderedDict")
                .s("0")
                .s("cpu")
                .int(1)
                .op(b"tQ")
                .stop(),
            "not a torch storage class",
        ),
        // _rebuild_tensor on something that is not a storage
        (
            "rebuild-nonstorage",
            Pk::new()
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b"(")
                .s("storage")
                .int(0)
                .ints(&[1])
                .ints(&[1])
                .op(b"\x89N")
                .op(b"tR")
                .stop(),
            "_rebuild_tensor on a str",
        ),
    ];
    for (name, pkl, needle) in cases {
        let e = torch_err(d, &format!("{name}.pt"), &torch_zip(&pkl, &[]));
        assert!(e.contains(needle), "{name}: `{needle}` not in: {e}");
        assert!(e.contains("archive/data.pkl: byte "), "{name}: the error does not say where: {e}");
    }
}

#[test]
fn deep_nesting_and_stack_bombs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 100,000 nested lists: [[[[…]]]]
    let mut lists = Pk::new();
    for _ in 0..100_000 {
        lists = lists.op(b"]");
    }
    for _ in 0..99_999 {
        lists = lists.op(b"a");
    }
    let e = torch_err(d, "lists.pt", &torch_zip(&lists.stop(), &[]));
    assert!(e.contains("nested deeper than 64"), "{e}");
    // nested dicts through SETITEM
    let mut dicts = Pk::new();
    for _ in 0..1000 {
        dicts = dicts.op(b"}").s("k");
    }
    dicts = dicts.op(b"}");
    for _ in 0..1000 {
        dicts = dicts.op(b"s");
    }
    let e = torch_err(d, "dicts.pt", &torch_zip(&dicts.stop(), &[]));
    assert!(e.contains("nested deeper than 64"), "{e}");
    // two million MARKs
    let marks = Pk::new().op(&vec![b'('; 2_000_000]).stop();
    let e = torch_err(d, "marks.pt", &torch_zip(&marks, &[]));
    assert!(e.contains("too many MARKs"), "{e}");
    // two million items on the stack
    let mut items = Pk::new();
    items.0.extend(std::iter::repeat_n(b'N', 2_000_000));
    let e = torch_err(d, "stack.pt", &torch_zip(&items.stop(), &[]));
    assert!(e.contains("stack exceeds"), "{e}");
    // memo doubling: x = (x, x) forty times would be 2^40 nodes
    let mut bomb = Pk::new().s("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    for _ in 0..40 {
        bomb = bomb.op(b"q\x00h\x00\x86");
    }
    let e = torch_err(d, "memo.pt", &torch_zip(&bomb.stop(), &[]));
    assert!(e.contains("memo copies exceed") || e.contains("nested deeper"), "{e}");
    // nested JSON in the vocabulary and configuration files
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let p = write(d, "vocab.json", deep.as_bytes());
    let e = err_of(Vocab::from_json_file(&p));
    assert!(e.contains(p.to_str().unwrap()) && e.contains("recursion limit"), "{e}");
}

#[test]
fn huge_declared_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let four = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // strings, bytes and ints declaring 4 GiB / 2^64 bytes
        ("binunicode", Pk::new().op(b"X\xff\xff\xff\xff").stop(), "exceeds the limit"),
        ("binunicode8", Pk::new().op(b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff").stop(), "exceeds the limit"),
        ("binbytes", Pk::new().op(b"B\xff\xff\xff\xff").stop(), "exceeds the limit"),
        ("long4", Pk::new().op(b"\x8b\xff\xff\xff\x7f").stop(), "exceeds the limit"),
        ("binstring", Pk::new().op(b"T\x00\x00\x00\x10abc").stop(), "exceeds the limit"),
        // a storage of 2^62 elements, a shape whose product overflows, a broadcast shape of
        // 2^40 elements over a 4-element storage
        ("storage", dict_of(|p| p.tensor("0", 1 << 62, 0, &[1 << 62], &[1])), "absurd"),
        (
            "shape-overflow",
            dict_of(|p| p.tensor("0", 4, 0, &[1 << 31, 1 << 31, 1 << 31], &[0, 0, 0])),
            "size overflows",
        ),
        ("broadcast", dict_of(|p| p.tensor("0", 4, 0, &[1 << 40], &[0])), "elements over a storage of 4"),
        ("negative", dict_of(|p| p.tensor("0", 4, 0, &[-4], &[1])), "not a non-negative int"),
        ("negative-stride", dict_of(|p| p.tensor("0", 4, 3, &[4], &[-1])), "not a non-negative int"),
        // a stride that steps past the end, an offset at the end
        ("stride", dict_of(|p| p.tensor("0", 4, 0, &[2, 2], &[3, 1])), "reaches element 4 of a storage of 4"),
        ("offset", dict_of(|p| p.tensor("0", 4, 4, &[1], &[1])), "reaches element 4"),
    ];
    for (name, pkl, needle) in cases {
        let bytes = torch_zip(&pkl, &[("0", four.clone())]);
        let e = torch_err(d, &format!("{name}.pt"), &bytes);
        assert!(e.contains(needle), "{name}: `{needle}` not in: {e}");
        if pkl.starts_with(b"\x80\x02}(") {
            assert!(e.contains("tensor `w`"), "{name}: the error does not name the tensor: {e}");
        }
    }
    // The storage entry itself is shorter than declared.
    let e = torch_err(
        d,
        "short.pt",
        &torch_zip(&dict_of(|p| p.tensor("0", 8, 0, &[8], &[1])), &[("0", four.clone())]),
    );
    assert!(e.contains("tensor `w`") && e.contains("declares 8 float32 elements (32 bytes)"), "{e}");

    // Many tensors viewing one storage (tied weights twice is normal; 5,000 times is an attempt
    // to expand a small file into gigabytes): refused once the views exceed 4x the storage.
    let big = f32_bytes(&vec![0.5; 4096]);
    let mut p = Pk::new().op(b"}(");
    for i in 0..5000 {
        p = p.s(&format!("t{i}")).tensor("0", 4096, 0, &[4096], &[1]);
    }
    let e = torch_err(d, "views.pt", &torch_zip(&p.op(b"u").stop(), &[("0", big)]));
    assert!(e.contains("refusing to expand") && e.contains("tensor `t"), "{e}");
    // ... while two views of one storage (tied weights) load.
    let two = Pk::new()
        .op(b"}(")
        .s("a")
        .tensor("0", 4, 0, &[4], &[1])
        .s("b")
        .tensor("0", 4, 0, &[2, 2], &[1, 2])
        .op(b"u")
        .stop();
    let t = parse_torch_state_dict(&torch_zip(&two, &[("0", four.clone())]), Path::new("tied.pt")).unwrap();
    assert_eq!(t[1].values, vec![1.0, 3.0, 2.0, 4.0]);

    // safetensors: a shape whose product overflows, a header length beyond the file
    let st = |header: &str, data: &[u8]| -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    };
    for (name, bytes) in [
        (
            "overflow.safetensors",
            st(r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#, &four),
        ),
        (
            "bigshape.safetensors",
            st(r#"{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,16]}}"#, &four),
        ),
        ("header.safetensors", {
            let mut b = (1u64 << 40).to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("offsets.safetensors", st(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#, &four)),
    ] {
        let p = write(d, name, &bytes);
        let e = err_of(load_safetensors(&p));
        assert!(e.contains(p.to_str().unwrap()), "{name}: {e}");
    }
}

#[test]
fn corrupt_zips_and_escaping_entry_names_are_errors_and_touch_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A flipped byte inside a stored storage: the zip's CRC-32 catches it (no silently wrong weights).
    let good = std::fs::read(fixture("torch/d2l_tiny_zip.pt")).unwrap();
    let data_at = {
        let mut z = zip::ZipArchive::new(Cursor::new(good.clone())).unwrap();
        let name = z.file_names().find(|n| n.ends_with("/data/0")).unwrap().to_string();
        let f = z.by_name(&name).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        f.data_start() as usize
    };
    let mut bad = good.clone();
    bad[data_at + 1] ^= 0x40;
    let e = torch_err(d, "flipped.pt", &bad);
    assert!(
        e.contains("tensor `") && e.contains("data/0: Invalid checksum (a corrupt or truncated zip entry)"),
        "{e}"
    );
    assert!(parse_torch_state_dict(&good, Path::new("ok.pt")).is_ok());

    // A zip without data.pkl, a zip whose data.pkl is not a pickle, a zip comment bomb.
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("archive/other.txt", SimpleFileOptions::default()).unwrap();
    w.write_all(b"x").unwrap();
    let e = torch_err(d, "nopkl.pt", &w.finish().unwrap().into_inner());
    assert!(e.contains("no `*/data.pkl` entry"), "{e}");
    let e = torch_err(d, "notpkl.pt", &torch_zip(b"hello world", &[]));
    assert!(e.contains("archive/data.pkl"), "{e}");

    // Storage keys that look like paths are only ever zip entry names: nothing outside the zip is
    // read (the error names the missing entry), and nothing is extracted anywhere.
    for key in ["../../../../etc/passwd", "/etc/passwd", "..\\..\\boot.ini"] {
        let pkl = dict_of(|p| p.tensor(key, 1, 0, &[1], &[1]));
        let e = torch_err(d, "escape.pt", &torch_zip(&pkl, &[("0", f32_bytes(&[1.0]))]));
        assert!(e.contains(&format!("storage entry archive/data/{key}")), "{key}: {e}");
    }
    // Entries named to escape, present in the zip: read from the zip, never from disk.
    let pkl = dict_of(|p| p.tensor("../../x", 1, 0, &[1], &[1]));
    let t = parse_torch_state_dict(&torch_zip(&pkl, &[("../../x", f32_bytes(&[2.5]))]), Path::new("z.pt"))
        .unwrap();
    assert_eq!(t[0].values, vec![2.5]);
    let listing: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(listing.iter().all(|n| n.to_string_lossy().ends_with(".pt")), "{listing:?}");
}

// ----------------------------------------------------------------- checkpoints: values, dtypes

/// A d2l-shaped directory from the tiny fixture with `edit` applied to its tensors.
fn tiny_d2l_dir(dir: &Path, edit: impl Fn(&str, &mut Vec<u8>)) -> PathBuf {
    let src = std::fs::read(fixture("torch/d2l_tiny_zip.pt")).unwrap();
    let mut zin = zip::ZipArchive::new(Cursor::new(src)).unwrap();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().to_string();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        edit(&name, &mut b);
        w.start_file(name, opts).unwrap();
        w.write_all(&b).unwrap();
    }
    let m = dir.join("d2l");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("pretrained.params"), w.finish().unwrap().into_inner()).unwrap();
    std::fs::write(m.join("vocab.json"), r#"["<unk>", "<pad>", "<cls>", "<sep>", "a"]"#).unwrap();
    m
}

#[test]
fn nan_and_inf_weights_are_reported_with_the_file_and_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    // the clean fixture loads (heads 1: C = 2)
    let clean = tiny_d2l_dir(dir.path(), |_, _| {});
    assert!(load_model(clean.to_str().unwrap(), Some(1), false, 0).is_ok());
    // torch.save file (d2l weights): a NaN in storage 0 and an inf in storage 5
    let bad = tiny_d2l_dir(&dir.path().join("bad"), |name, b| {
        if name.ends_with("/data/0") {
            b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        if name.ends_with("/data/5") {
            b[4..8].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
        }
    });
    let e = err_of(load_model(bad.to_str().unwrap(), Some(1), false, 0));
    assert!(e.contains(bad.join("pretrained.params").to_str().unwrap()), "{e}");
    assert!(e.contains("2 weights are NaN or infinite"), "{e}");
    let tensors = load_torch_state_dict(&bad.join("pretrained.params")).unwrap();
    for t in tensors.iter().filter(|t| t.non_finite_count() > 0) {
        assert!(e.contains(&format!("`{}` (1)", t.name)), "{} not named: {e}", t.name);
    }

    // a directory saved by this tool (safetensors), through the CLI
    let cfg =
        BertConfig { hidden: 4, ffn: 8, heads: 1, layers: 1, max_positions: 16, ..BertConfig::d2l_small(6) };
    let layout = ParamLayout::new(&cfg);
    let vocab = Vocab::from_tokens(["<unk>", "<pad>", "<cls>", "<sep>", "a", "b"].map(String::from).to_vec())
        .unwrap();
    let saved = dir.path().join("saved");
    let mut params: Vec<f32> = (0..layout.total).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
    nli_bert::model::store::save_model(&saved, &cfg, &vocab, &params, 16, Truncate::Longest).unwrap();
    assert!(load_model(saved.to_str().unwrap(), None, false, 0).is_ok());
    let e = layout.get("encoder.blks.0.ffn.dense1.weight").unwrap();
    params[e.offset + 3] = f32::INFINITY;
    save_params(&saved.join("model.safetensors"), &layout, &params, &BTreeMap::new()).unwrap();
    let tsv = write(dir.path(), "d.tsv", b"label\tpremise\thypothesis\nneutral\ta\tb\n");
    let o = Command::new(env!("CARGO_BIN_EXE_nli-bert"))
        .args(["eval", "--model", saved.to_str().unwrap(), "--data", tsv.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("model.safetensors")
            && stderr.contains("1 weights are NaN or infinite, in `encoder.blks.0.ffn.dense1.weight` (1)"),
        "{stderr}"
    );
}

#[test]
fn wrong_dtypes_are_errors_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        BertConfig { hidden: 2, ffn: 3, heads: 1, layers: 2, max_positions: 3, ..BertConfig::d2l_small(5) };
    let layout = ParamLayout::new(&cfg);
    let mut params = vec![0.0; layout.total];
    // an integer storage where a weight belongs (torch.save): LongStorage for the token embedding
    let pkl = Pk::new()
        .op(b"}(")
        .s("encoder.token_embedding.weight")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .s("storage")
        .global("torch", "LongStorage")
        .s("0")
        .s("cpu")
        .int(10)
        .op(b"tQ")
        .int(0)
        .ints(&[5, 2])
        .ints(&[2, 1])
        .op(b"\x89")
        .global("collections", "OrderedDict")
        .op(b")RtR")
        .op(b"u")
        .stop();
    let p = write(dir.path(), "long.pt", &torch_zip(&pkl, &[("0", vec![0u8; 80])]));
    let t = load_torch_state_dict(&p).unwrap();
    let e = err_of(load_into_params(&t, &layout, &mut params, &p));
    assert!(
        e.contains(p.to_str().unwrap()) && e.contains("`encoder.token_embedding.weight` is int64"),
        "{e}"
    );
    // a storage class torch does not have is a refused global, not a guess
    let pkl = Pk::new().op(b"(").s("storage").global("torch", "ComplexFloatStorage").op(b"t").stop();
    let e = torch_err(dir.path(), "complex.pt", &torch_zip(&pkl, &[]));
    assert!(e.contains("refused global `torch.ComplexFloatStorage`"), "{e}");
    // safetensors dtypes this tool cannot hold as weights
    for dt in ["C64", "F8_E4M3", "U64", "F6_E2M3"] {
        let header =
            format!(r#"{{"encoder.pos_embedding":{{"dtype":"{dt}","shape":[1],"data_offsets":[0,8]}}}}"#);
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&[0; 8]);
        let p = write(dir.path(), "dt.safetensors", &b);
        match load_safetensors(&p) {
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(p.to_str().unwrap()), "{dt}: {e}");
            }
            Ok(t) => {
                // read as an integer buffer: refused where a weight belongs
                let e = err_of(load_into_params(&t, &layout, &mut params, &p));
                assert!(e.contains("encoder.pos_embedding"), "{dt}: {e}");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------- data

fn data_err(r: nli_bert::Result<Dataset>, path: &Path, line: usize, needle: &str) {
    let e = err_of(r);
    assert!(e.starts_with(&format!("{}:{line}:", path.display())), "expected {}:{line}: {e}", path.display());
    assert!(e.contains(needle), "`{needle}` not in: {e}");
}

const SNLI_HEADER: &str = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tcaptionID\tpairID\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5";

#[test]
fn empty_files_wrong_headers_unknown_labels_and_missing_columns_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // empty files, in every format, and a file of blank lines
    for (name, read) in [
        ("e.txt", (|p: &Path| read_snli_txt(p)) as fn(&Path) -> nli_bert::Result<Dataset>),
        ("e.tsv", |p: &Path| read_tsv(p)),
        ("e.jsonl", |p: &Path| read_snli_jsonl(p)),
        ("e.data", |p: &Path| read_dataset(p)),
    ] {
        let p = write(d, name, b"");
        data_err(read(&p), &p, 1, "empty file");
    }
    let p = write(d, "blank.jsonl", b"\n\r\n   \n");
    data_err(read_snli_jsonl(&p), &p, 1, "empty file");
    // wrong headers
    let p = write(d, "hdr.txt", b"label\tpremise\thypothesis\nneutral\ta\tb\n");
    data_err(read_snli_txt(&p), &p, 1, "give the file a .tsv extension");
    let p = write(d, "nohdr.txt", b"neutral\t( a )\t( b )\n");
    data_err(read_snli_txt(&p), &p, 1, "expected SNLI's header line");
    let p = write(d, "hdr.tsv", b"label\tsentence1\tsentence2\n");
    data_err(read_tsv(&p), &p, 1, "expected the header");
    // unknown labels (with the d2l `-` rows skipped and counted first)
    let p = write(d, "lab.tsv", b"label\tpremise\thypothesis\n-\ta\tb\nNeutral\ta\tb\n");
    data_err(read_tsv(&p), &p, 3, "unknown label \"Neutral\"");
    let p = write(d, "lab.jsonl", b"{\"gold_label\": \"-\", \"sentence1\": \"a\", \"sentence2\": \"b\"}\n{\"gold_label\": \"entails\", \"sentence1\": \"a\", \"sentence2\": \"b\"}\n");
    data_err(read_snli_jsonl(&p), &p, 2, "unknown label \"entails\"");
    let p = write(d, "lab.txt", format!("{SNLI_HEADER}\nneutral \t( a )\t( b )\n").as_bytes());
    data_err(read_snli_txt(&p), &p, 2, "unknown label \"neutral \"");
    // missing columns / fields
    let p = write(d, "cols.tsv", b"label\tpremise\thypothesis\nneutral\ta b\n");
    data_err(read_tsv(&p), &p, 2, "found 2");
    let p = write(d, "cols.txt", format!("{SNLI_HEADER}\nneutral\n").as_bytes());
    data_err(read_snli_txt(&p), &p, 2, "found 1");
    let p = write(d, "nolabel.jsonl", b"{\"sentence1\": \"a\", \"sentence2\": \"b\"}\n");
    data_err(read_snli_jsonl(&p), &p, 1, "gold_label");
    let p = write(d, "nos2.jsonl", b"{\"gold_label\": \"neutral\", \"sentence1\": \"a\"}\n");
    data_err(read_snli_jsonl(&p), &p, 1, "sentence2");
    let p = write(d, "array.jsonl", b"[\"neutral\", \"a\", \"b\"]\n");
    data_err(read_snli_jsonl(&p), &p, 1, "gold_label");
}

#[test]
fn crlf_lone_cr_bom_and_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // CRLF, lone CR and a mix give the same dataset as LF; line numbers count every ending
    let lf = "label\tpremise\thypothesis\nneutral\ta b\tc\ncontradiction\td\te f\n";
    let want = read_tsv(write(d, "lf.tsv", lf.as_bytes())).unwrap();
    for (name, text) in [
        ("crlf.tsv", lf.replace('\n', "\r\n")),
        ("cr.tsv", lf.replace('\n', "\r")),
        (
            "mixed.tsv",
            "\u{feff}label\tpremise\thypothesis\r\nneutral\ta b\tc\rcontradiction\td\te f".to_string(),
        ),
    ] {
        let got = read_tsv(write(d, name, text.as_bytes())).unwrap();
        assert_eq!(got.examples, want.examples, "{name}");
    }
    let p = write(d, "cr-err.tsv", b"label\tpremise\thypothesis\rneutral\ta\tb\rneutral\ta\r");
    data_err(read_tsv(&p), &p, 3, "found 2");
    // invalid UTF-8: file:line in every reader, the vocabularies too
    let p = write(d, "u.tsv", b"label\tpremise\thypothesis\nneutral\ta\tb\nneutral\t\xc3\x28\tb\n");
    data_err(read_tsv(&p), &p, 3, "invalid UTF-8 at byte 8 of the line");
    let p = write(
        d,
        "u.jsonl",
        b"{\"gold_label\": \"neutral\", \"sentence1\": \"\xff\", \"sentence2\": \"b\"}\n",
    );
    data_err(read_snli_jsonl(&p), &p, 1, "invalid UTF-8 at byte 40 of the line");
    let p = write(
        d,
        "u.txt",
        format!("{SNLI_HEADER}\n")
            .into_bytes()
            .into_iter()
            .chain(*b"neutral\t( \xed\xa0\x80 )\t( b )\n")
            .collect::<Vec<u8>>()
            .as_slice(),
    );
    data_err(read_snli_txt(&p), &p, 2, "invalid UTF-8");
    let p = write(d, "vocab.txt", b"[PAD]\n[UNK]\n\xff\n");
    let e = err_of(read_vocab_txt(&p));
    assert!(e.starts_with(&format!("{}:3:", p.display())) && e.contains("UTF-8"), "{e}");
    let p = write(d, "vocab.json", b"[\"<unk>\", \"\xff\"]");
    let e = err_of(Vocab::from_json_file(&p));
    assert!(e.starts_with(&format!("{}:1:", p.display())) && e.contains("not valid JSON"), "{e}");
}

#[test]
fn a_10_mb_line_is_read_truncated_to_max_len_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long: String = "a man is playing a guitar on stage , ".repeat(10 * 1024 * 1024 / 37 + 1);
    assert!(long.len() >= 10 << 20);
    let mut tsv = String::from("label\tpremise\thypothesis\n");
    tsv += &format!("neutral\t{long}\ta man plays\n");
    tsv += "entailment\ta man is playing\ta man plays\n";
    tsv += &format!("contradiction\ta dog\t{}\n", &long[..100_000]);
    let p = write(d, "long.tsv", tsv.as_bytes());
    let ds = read_tsv(&p).unwrap();
    assert_eq!(ds.examples.len(), 3);
    assert_eq!(ds.examples[0].premise.len(), long.len());
    // d2l's truncation: the longer side loses its tail until the pair fits in max_len
    let words = [
        "<unk>", "<pad>", "<cls>", "<sep>", "a", "man", "is", "playing", "guitar", "on", "stage", ",",
        "plays",
    ];
    let vocab = Vocab::from_tokens(words.map(String::from).to_vec()).unwrap();
    let (enc, stats) = encode_dataset(&ds, &vocab, 128, Truncate::Longest).unwrap();
    assert_eq!(stats.truncated, 2);
    assert_eq!(enc[0].ids.len(), 128);
    assert_eq!(enc[1].ids.len(), 3 + 4 + 3);
    let sep = vocab.id("<sep>");
    assert_eq!(&enc[0].ids[123..], &[sep, vocab.id("a"), vocab.id("man"), vocab.id("plays"), sep]);
    // through the CLI: the user is told how many pairs were cut
    let out = d.join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_nli-bert"))
        .args([
            "finetune",
            "--model",
            "scratch",
            "--data",
            p.to_str().unwrap(),
            "--hidden",
            "8",
            "--ffn",
            "8",
        ])
        .args(["--heads", "1", "--layers", "1", "--epochs", "1", "--batch-size", "3", "--threads", "1"])
        .args(["--out", out.to_str().unwrap()])
        .env("NLI_BERT_HOME", d.join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("read 3 examples from {}, 2 truncated to 128 tokens", p.display())),
        "{stderr}"
    );
}

#[test]
fn a_line_beyond_64_mib_is_an_error_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(b"{\"gold_label\": \"neutral\", \"sentence1\": \"a\", \"sentence2\": \"b\"}\n").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..65 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    data_err(read_snli_jsonl(&p), &p, 2, "line longer than 67108864 bytes");
}

// ------------------------------------------------------------------------ configuration files

#[test]
fn configurations_declaring_huge_models_are_refused_before_allocating() {
    // param_count is the layout's exact size (it guards the layout's arithmetic)
    for cfg in [
        BertConfig::d2l_small(60005),
        BertConfig::d2l_base(30522),
        BertConfig { embedding_layernorm: true, num_labels: 2, ..BertConfig::d2l_small(7) },
    ] {
        assert_eq!(cfg.param_count(), Some(ParamLayout::new(&cfg).total));
    }
    let dir = tempfile::tempdir().unwrap();
    // a directory saved by this tool, then its config.json edited
    let cfg =
        BertConfig { hidden: 4, ffn: 8, heads: 1, layers: 1, max_positions: 16, ..BertConfig::d2l_small(6) };
    let layout = ParamLayout::new(&cfg);
    let vocab = Vocab::from_tokens(["<unk>", "<pad>", "<cls>", "<sep>", "a", "b"].map(String::from).to_vec())
        .unwrap();
    let saved = dir.path().join("saved");
    let params = vec![0.01f32; layout.total];
    nli_bert::model::store::save_model(&saved, &cfg, &vocab, &params, 16, Truncate::Longest).unwrap();
    let original = std::fs::read_to_string(saved.join("config.json")).unwrap();
    for (field, value, needle) in [
        ("hidden", "1000000000", "hidden 1000000000 is beyond the supported 32768"),
        ("layers", "18446744073709551615", "layers 18446744073709551615 is beyond"),
        ("ffn", "131072", "parameters, more than the supported"),
        ("max_positions", "1048576", "does not belong to these weights"),
        ("hidden", "1024", "does not belong to these weights"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
        v["model"][field] = serde_json::from_str(value).unwrap();
        if field == "ffn" {
            v["model"]["hidden"] = 32768.into();
            v["model"]["layers"] = 1024.into();
        }
        if field == "hidden" && value == "1024" {
            v["model"]["heads"] = 16.into();
        }
        std::fs::write(saved.join("config.json"), v.to_string()).unwrap();
        let e = err_of(load_model(saved.to_str().unwrap(), None, false, 0));
        assert!(e.contains(needle), "{field} = {value}: {e}");
        assert!(
            e.contains(saved.to_str().unwrap()),
            "{field} = {value}: the error does not name the file: {e}"
        );
    }
    // a Hugging Face directory whose config.json claims bert-large over a tiny model
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    for f in std::fs::read_dir(fixture("hf/tiny_safetensors")).unwrap().flatten() {
        std::fs::copy(f.path(), hf.join(f.file_name())).unwrap();
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert!(load_model(hf.to_str().unwrap(), None, false, 0).is_ok());
    v["hidden_size"] = 1024.into();
    v["num_attention_heads"] = 16.into();
    v["intermediate_size"] = 4096.into();
    v["num_hidden_layers"] = 24.into();
    std::fs::write(hf.join("config.json"), v.to_string()).unwrap();
    let e = err_of(load_model(hf.to_str().unwrap(), None, false, 0));
    assert!(e.contains("model.safetensors") && e.contains("does not belong to these weights"), "{e}");
    // and on the command line: a usage error, not an allocation failure
    let o = Command::new(env!("CARGO_BIN_EXE_nli-bert"))
        .args([
            "finetune",
            "--model",
            "scratch",
            "--data",
            write(dir.path(), "d.tsv", b"label\tpremise\thypothesis\nneutral\ta\tb\n").to_str().unwrap(),
        ])
        .args(["--hidden", "65536", "--heads", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("hidden 65536 is beyond the supported 32768"), "{stderr}");
}
