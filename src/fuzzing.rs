//! Entry points for fuzzing the readers of untrusted files, shared by the cargo-fuzz targets in
//! `fuzz/` (libFuzzer, nightly) and the stable smoke test `tests/fuzz_smoke.rs` (seed corpus plus
//! deterministic mutations), so both exercise exactly the same code.
//!
//! [`check`] feeds one input to one [`Target`] and judges the outcome:
//! - a parse error is fine as long as it is a proper [`Error`] that names the input
//!   ([`INPUT_NAME`]);
//! - a successful parse is then pushed further (tensors into a parameter layout, datasets through
//!   both tokenizers and the packer) and its invariants are checked;
//! - anything else (an error that does not say which file, a broken invariant) comes back as
//!   `Err(description)`: the fuzz targets panic on it, the smoke test fails.
//!
//! A panic, an abort, an allocation beyond the fuzzer's limit or a hang inside the library is a
//! finding by itself. Nothing here touches the file system.

use crate::data::batch::{encode_dataset_with, Batch, Encoded, TextEncoder, Truncate};
use crate::data::snli::{self, Dataset, Format};
use crate::data::tokenizer::d2l_tokenize;
use crate::data::vocab::Vocab;
use crate::data::wordpiece::{self, WordPiece};
use crate::error::Error;
use crate::model::checkpoint::names::load_into_params;
use crate::model::checkpoint::pickle::unpickle;
use crate::model::checkpoint::safetensors::parse_safetensors;
use crate::model::checkpoint::torch::{parse_torch_state_dict, TensorData};
use crate::model::config::BertConfig;
use crate::model::params::ParamLayout;
use std::path::Path;

/// The name every input is given; every error must mention it.
pub const INPUT_NAME: &str = "fuzz-input";

/// What is being fuzzed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The restricted unpickler on one pickle.
    Pickle,
    /// A whole `torch.save` file (zip or legacy container), then the name mapping.
    Torch,
    /// A torch zip assembled from the input's parts (see [`torch_zip_from_parts`]), so that
    /// mutated pickles and storages are not all stopped by the zip's CRC-32; then as `Torch`.
    TorchZip,
    /// A safetensors file, then the name mapping.
    Safetensors,
    /// A `config.json`, as this tool's and as Hugging Face's: validated, then laid out.
    Config,
    /// d2l's `vocab.json`.
    VocabJson,
    /// BERT's `vocab.txt`.
    VocabTxt,
    /// SNLI's `.txt`, then tokenising and packing.
    SnliTxt,
    /// SNLI's `.jsonl`, then tokenising and packing.
    Jsonl,
    /// The TSV format, then tokenising and packing.
    Tsv,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 10] = [
        Target::Pickle,
        Target::Torch,
        Target::TorchZip,
        Target::Safetensors,
        Target::Config,
        Target::VocabJson,
        Target::VocabTxt,
        Target::SnliTxt,
        Target::Jsonl,
        Target::Tsv,
    ];

    /// The name of the cargo-fuzz target and of its corpus folders.
    pub fn name(self) -> &'static str {
        match self {
            Target::Pickle => "pickle",
            Target::Torch => "torch",
            Target::TorchZip => "torch_zip",
            Target::Safetensors => "safetensors",
            Target::Config => "config",
            Target::VocabJson => "vocab_json",
            Target::VocabTxt => "vocab_txt",
            Target::SnliTxt => "snli_txt",
            Target::Jsonl => "jsonl",
            Target::Tsv => "tsv",
        }
    }
}

/// Runs `target` on `data`: `Ok(())` when the library behaved (a proper error or a consistent
/// result), `Err(what went wrong)` otherwise.
pub fn check(target: Target, data: &[u8]) -> Result<(), String> {
    let path = Path::new(INPUT_NAME);
    match target {
        Target::Pickle => judge(unpickle(data, path, "data.pkl")).map(|_| ()),
        Target::Torch => match judge(parse_torch_state_dict(data, path))? {
            Some(t) => tensors(&t),
            None => Ok(()),
        },
        Target::TorchZip => match torch_zip_from_parts(data) {
            Some(zip) => match judge(parse_torch_state_dict(&zip, path))? {
                Some(t) => tensors(&t),
                None => Ok(()),
            },
            None => Ok(()),
        },
        Target::Safetensors => match judge(parse_safetensors(data, path))? {
            Some(t) => tensors(&t),
            None => Ok(()),
        },
        Target::Config => config(data),
        Target::VocabJson => vocab(judge(Vocab::from_json_bytes(data, path))?),
        Target::VocabTxt => vocab(judge(wordpiece::parse_vocab_txt(data.to_vec(), path))?),
        Target::SnliTxt => dataset(judge(snli::parse_dataset(data, path, Format::SnliTxt))?),
        Target::Jsonl => dataset(judge(snli::parse_dataset(data, path, Format::Jsonl))?),
        Target::Tsv => dataset(judge(snli::parse_dataset(data, path, Format::Tsv))?),
    }
}

/// Builds a torch zip from `data` laid out as: one flags byte (bit 0: `byteorder` is `big`, bit
/// 1: deflate the entries), a u16 LE pickle length, the pickle (`archive/data.pkl`), then up to
/// 64 storages `archive/data/0`, `archive/data/1`, … each as a u32 LE length and its bytes.
/// `None` if `data` is too short for its own lengths.
pub fn torch_zip_from_parts(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let (&flags, rest) = data.split_first()?;
    let (n, rest) = rest.split_first_chunk::<2>()?;
    let n = u16::from_le_bytes(*n) as usize;
    let pkl = rest.get(..n)?;
    let mut rest = rest.get(n..)?;
    let method =
        if flags & 2 != 0 { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = SimpleFileOptions::default().compression_method(method);
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut entry = |name: String, bytes: &[u8]| -> Option<()> {
        w.start_file(name, opts).ok()?;
        w.write_all(bytes).ok()
    };
    entry("archive/data.pkl".into(), pkl)?;
    entry("archive/byteorder".into(), if flags & 1 != 0 { b"big" } else { b"little" })?;
    for key in 0..64 {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else { break };
        let len = (u32::from_le_bytes(*len) as usize).min(tail.len());
        entry(format!("archive/data/{key}"), &tail[..len])?;
        rest = &tail[len..];
    }
    w.finish().ok().map(|c| c.into_inner())
}

/// `Ok(Some(v))` on success, `Ok(None)` on a proper error, `Err` on an error that does not name
/// the input.
fn judge<T>(r: crate::Result<T>) -> Result<Option<T>, String> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => proper(&e).map(|()| None),
    }
}

fn proper(e: &Error) -> Result<(), String> {
    let msg = e.to_string();
    if msg.contains(INPUT_NAME) {
        Ok(())
    } else {
        Err(format!("an error that does not name the file: {msg}"))
    }
}

/// A loaded state dict: shapes agree with value counts, and the name mapping into a small d2l
/// layout either works or fails with a proper error.
fn tensors(t: &[TensorData]) -> Result<(), String> {
    for x in t {
        let numel = x.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(x.values.len()) {
            return Err(format!("tensor `{}`: shape {:?} but {} values", x.name, x.shape, x.values.len()));
        }
        let _ = x.non_finite_count();
    }
    let cfg =
        BertConfig { hidden: 2, ffn: 3, heads: 1, layers: 2, max_positions: 3, ..BertConfig::d2l_small(5) };
    let layout = ParamLayout::new(&cfg);
    let mut params = vec![0.0; layout.total];
    judge(load_into_params(t, &layout, &mut params, Path::new(INPUT_NAME))).map(|_| ())
}

/// A configuration file read both ways; a valid configuration must lay out exactly
/// `param_count` parameters (the bound every loader checks before allocating).
fn config(data: &[u8]) -> Result<(), String> {
    let layout = |cfg: &BertConfig| -> Result<(), String> {
        if cfg.validate().is_err() {
            return Ok(());
        }
        let total = ParamLayout::new(cfg).total;
        match cfg.param_count() {
            Some(n) if n == total => Ok(()),
            n => Err(format!("param_count {n:?} but the layout holds {total}")),
        }
    };
    if let Ok(saved) = serde_json::from_slice::<crate::model::store::SavedConfig>(data) {
        layout(&saved.model)?;
    }
    if let Ok(hf) = serde_json::from_slice::<crate::model::hf::HfConfig>(data) {
        if let Some(cfg) = judge(hf.to_bert_config(true, Path::new(INPUT_NAME)))? {
            layout(&cfg)?;
        }
    }
    Ok(())
}

/// A vocabulary: ids and tokens round-trip.
fn vocab(v: Option<Vocab>) -> Result<(), String> {
    let Some(v) = v else { return Ok(()) };
    for (i, t) in v.tokens().iter().enumerate().take(1000) {
        if v.token(i as u32) != Some(t.as_str()) {
            return Err(format!("token {i} does not decode to {t:?}"));
        }
        let id = v.id(t) as usize;
        if v.tokens().get(id) != Some(t) {
            return Err(format!("token {t:?} maps to id {id}, which is another token"));
        }
    }
    Ok(())
}

/// A dataset: encoded with d2l words (a vocabulary built from it) and with WordPiece (a fixed
/// small vocabulary), at a tight `max_len`, both truncation rules; every sequence must fit and
/// be well formed, and batches must pack.
fn dataset(ds: Option<Dataset>) -> Result<(), String> {
    let Some(ds) = ds else { return Ok(()) };
    for e in &ds.examples {
        if usize::from(e.label) >= snli::LABELS.len() {
            return Err(format!("label id {} out of range", e.label));
        }
    }
    let toks: Vec<Vec<String>> =
        ds.examples.iter().flat_map(|e| [d2l_tokenize(&e.premise), d2l_tokenize(&e.hypothesis)]).collect();
    let words = Vocab::build(toks.iter().map(|v| v.as_slice()), 1, &["<pad>", "<mask>", "<cls>", "<sep>"]);
    let pieces: Vec<String> = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "play", "##ing", "##s", "the", "dog",
        ".", ",", "!", "e", "##e", "é", "中",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let wp_vocab =
        Vocab::from_tokens_with_unk(pieces, "[UNK]", "fuzz word pieces").map_err(|e| e.to_string())?;
    let wp = WordPiece::new(&wp_vocab, true).map_err(|e| e.to_string())?;
    for (enc, v) in [(TextEncoder::D2l(&words), words.len()), (TextEncoder::WordPiece(wp), wp_vocab.len())] {
        for (max_len, how) in [(5, Truncate::Longest), (9, Truncate::Ratio), (12, Truncate::Longest)] {
            let (out, stats) = encode_dataset_with(&ds, &enc, max_len, how).map_err(|e| e.to_string())?;
            if out.len() != ds.examples.len() || stats.n != out.len() {
                return Err(format!("{} examples encoded into {}", ds.examples.len(), out.len()));
            }
            for e in &out {
                sequence(e, max_len, v)?;
            }
            let items: Vec<&Encoded> = out.iter().take(64).collect();
            let b = Batch::from_encoded(&items);
            if b.tokens.len() != b.lens.iter().sum::<usize>() || b.tokens.len() != b.segments.len() {
                return Err("a packed batch whose lengths disagree".into());
            }
        }
    }
    Ok(())
}

fn sequence(e: &Encoded, max_len: usize, vocab_len: usize) -> Result<(), String> {
    if e.ids.len() > max_len || e.ids.len() < 2 || e.ids.len() != e.segments.len() {
        return Err(format!(
            "encoded pair of {} ids, {} segments, max_len {max_len}",
            e.ids.len(),
            e.segments.len()
        ));
    }
    if e.ids.iter().any(|&i| i as usize >= vocab_len) || e.segments.iter().any(|&s| s > 1) {
        return Err(format!("encoded pair with an id or segment out of range: {:?} {:?}", e.ids, e.segments));
    }
    Ok(())
}
