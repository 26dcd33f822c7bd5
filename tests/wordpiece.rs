//! The hand-written WordPiece tokenizer against Hugging Face's own, id for id.
//!
//! Fixtures: `tests/fixtures/hf/`, made by `python3 scripts/make_hf_fixtures.py` with
//! transformers' fast BERT tokenizer (`tokenizers`) loaded from all-MiniLM-L6-v2's
//! `tokenizer.json` (bert-base-uncased's 30,522-token vocab.txt, lower-casing):
//! - `codepoints.txt`: what the normaliser does to every Unicode code point;
//! - `sentences.txt`: the ids of every premise and hypothesis of `../shared/data/*.tsv`
//!   (checked when that folder is there: `$NLI_BERT_SHARED_DATA` or `../shared/data`);
//! - `hard_cases.json`: accents, CJK, punctuation runs, control characters, long words, emoji,
//!   mixed scripts, special tokens written in the text; pairs truncated with `longest_first`;
//! - `pairs.txt`: the first 1000 snli_dev pairs encoded at max_length 128, 21 and 22.

mod common;

use nli_bert::data::batch::{encode_dataset_with, TextEncoder, Truncate};
use nli_bert::data::snli::read_dataset;
use nli_bert::data::vocab::Vocab;
use nli_bert::data::wordpiece::{self, is_punctuation, normalize, read_vocab_txt, WordPiece};
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

fn vocab() -> Vocab {
    read_vocab_txt(fixture_dir().join("vocab.txt")).unwrap()
}

fn lowercase() -> bool {
    wordpiece::read_lowercase(&fixture_dir()).unwrap().unwrap()
}

fn ids(s: &str) -> Vec<u32> {
    s.split_whitespace().map(|x| x.parse().unwrap()).collect()
}

#[test]
fn vocab_txt_and_config() {
    let v = vocab();
    assert_eq!(v.len(), 30522);
    assert_eq!(
        (v.get("[PAD]"), v.get("[UNK]"), v.get("[CLS]"), v.get("[SEP]")),
        (Some(0), Some(100), Some(101), Some(102))
    );
    assert_eq!(v.unk(), 100);
    assert!(lowercase());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.txt");
    wordpiece::save_vocab_txt(&v, &p).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(fixture_dir().join("vocab.txt")).unwrap());
}

#[test]
fn every_code_point_normalizes_like_tokenizers() {
    let text = std::fs::read_to_string(fixture_dir().join("codepoints.txt")).unwrap();
    let (mut checked, mut bad) = (0usize, Vec::new());
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut it = line.split(' ');
        let a = u32::from_str_radix(it.next().unwrap(), 16).unwrap();
        let b = u32::from_str_radix(it.next().unwrap(), 16).unwrap();
        let class = it.next().unwrap();
        for cp in a..=b {
            let c = char::from_u32(cp).unwrap();
            let got = normalize(&c.to_string(), true);
            let ok = match class {
                "del" => got.is_empty(),
                "ws" => got == " ",
                "cjk" => got == format!(" {c} "),
                "keep" => got == c.to_string() && !is_punctuation(c),
                "punct" => got == c.to_string() && is_punctuation(c),
                m => {
                    let want: String = m[1..]
                        .split(',')
                        .map(|h| char::from_u32(u32::from_str_radix(h, 16).unwrap()).unwrap())
                        .collect();
                    got == want
                }
            };
            checked += 1;
            if !ok {
                bad.push(format!("U+{cp:04X} {class}: got {got:?}"));
            }
        }
    }
    println!("{} of {checked} code points normalise as tokenizers does", checked - bad.len());
    assert_eq!(checked, 0x110000 - 0x800);
    assert!(bad.is_empty(), "{} code points differ, first: {:?}", bad.len(), &bad[..bad.len().min(20)]);
}

#[test]
fn hard_cases_match_transformers() {
    let v = vocab();
    let wp = WordPiece::new(&v, lowercase()).unwrap();
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("hard_cases.json")).unwrap())
            .unwrap();
    let as_ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let mut bad = Vec::new();
    let singles = fx["singles"].as_array().unwrap();
    for s in singles {
        let text = s["text"].as_str().unwrap();
        let (got, want) = (wp.encode(text), as_ids(&s["ids"]));
        if got != want {
            bad.push(format!("{text:?}: got {:?}, want {:?}", wp.tokenize(text), s["tokens"]));
        }
    }
    let pairs = fx["pairs"].as_array().unwrap();
    let text = TextEncoder::WordPiece(wp.clone());
    for p in pairs {
        let (a, b, n) =
            (p["a"].as_str().unwrap(), p["b"].as_str().unwrap(), p["max_len"].as_u64().unwrap() as usize);
        let want_types: Vec<u8> = as_ids(&p["type_ids"]).into_iter().map(|x| x as u8).collect();
        let (got, types) = wp.encode_pair(a, b, n);
        if got != as_ids(&p["ids"]) || types != want_types {
            bad.push(format!(
                "pair {a:?} / {b:?} at {n}: got {got:?} {types:?}, want {} {}",
                p["ids"], p["type_ids"]
            ));
        }
        if n >= 5 {
            let e = text.encode_pair(a, b, n, Truncate::Longest, 0).unwrap();
            assert_eq!((e.ids, e.segments), (got, types), "TextEncoder::encode_pair on {a:?} / {b:?}");
        }
    }
    println!(
        "{} of {} hard texts and pairs match transformers",
        singles.len() + pairs.len() - bad.len(),
        singles.len() + pairs.len()
    );
    assert!(bad.is_empty(), "{} mismatches:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn every_shared_data_sentence_matches_transformers() {
    let Some(dir) = common::shared_data("every_shared_data_sentence_matches_transformers") else { return };
    let golden: HashMap<String, Vec<u32>> = std::fs::read_to_string(fixture_dir().join("sentences.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, rest) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_string(), ids(rest))
        })
        .collect();
    let v = vocab();
    let wp = WordPiece::new(&v, lowercase()).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tsv"))
        .collect();
    files.sort();
    let (mut total, mut matched, mut missing, mut bad) = (0usize, 0usize, 0usize, Vec::new());
    for f in &files {
        let ds = read_dataset(f).unwrap();
        for ex in &ds.examples {
            for s in [&ex.premise, &ex.hypothesis] {
                total += 1;
                let key: String =
                    Sha1::digest(s.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
                match golden.get(&key) {
                    None => missing += 1,
                    Some(want) if *want == wp.encode(s) => matched += 1,
                    Some(want) => bad.push(format!("{s:?}: got {:?}, want {want:?}", wp.tokenize(s))),
                }
            }
        }
    }
    println!(
        "{matched} of {total} sentences of {} files match transformers id for id ({} unique in the fixture, {missing} not in it)",
        files.len(),
        golden.len()
    );
    assert!(total >= 39_000, "only {total} sentences read");
    assert_eq!(missing, 0, "sentences missing from the fixture: regenerate it");
    assert!(bad.is_empty(), "{} mismatches, first: {:?}", bad.len(), &bad[..bad.len().min(10)]);
}

#[test]
fn snli_pairs_encode_like_transformers_with_truncation() {
    let Some(dir) = common::shared_data("snli_pairs_encode_like_transformers_with_truncation") else {
        return;
    };
    let ds = read_dataset(dir.join("snli_dev.tsv")).unwrap();
    let v = vocab();
    let text = TextEncoder::WordPiece(WordPiece::new(&v, lowercase()).unwrap());
    let lines: Vec<String> = std::fs::read_to_string(fixture_dir().join("pairs.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(String::from)
        .collect();
    let first = nli_bert::data::snli::Dataset {
        examples: ds.examples[..1000].to_vec(),
        skipped: 0,
        source: "snli_dev".into(),
    };
    let mut checked = 0;
    let mut truncated = 0;
    for (k, max_len) in [128usize, 21, 22].into_iter().enumerate() {
        let (enc, stats) = encode_dataset_with(&first, &text, max_len, Truncate::Longest).unwrap();
        truncated += stats.truncated;
        for (i, e) in enc.iter().enumerate() {
            let cols: Vec<&str> = lines[3 * i + k].split('\t').collect();
            assert_eq!(cols[0].parse::<usize>().unwrap(), max_len);
            let types: Vec<u8> = cols[2].bytes().map(|b| b - b'0').collect();
            assert_eq!(e.ids, ids(cols[1]), "pair {i} at max_len {max_len}");
            assert_eq!(e.segments, types, "token types of pair {i} at max_len {max_len}");
            checked += 1;
        }
    }
    println!("{checked} pair encodings match transformers ({truncated} truncated)");
    assert!(truncated > 500);
}
