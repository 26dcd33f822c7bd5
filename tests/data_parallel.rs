//! The parallel data pipeline against sequential references, on generated files with awkward
//! cases (`\r\n` and lone `\r` endings, blank lines, a byte-order mark, `-` rows, accented, Greek,
//! CJK and upper-case words, Unicode whitespace inside the parses): the readers (every block and
//! chunk size, all three formats, the first error and its `file:line`), the vocabulary counted
//! in parallel, and encoding (d2l words and WordPiece, with truncation).

use std::path::{Path, PathBuf};

use nli_bert::data::batch::{encode_dataset_with, encode_ids, SpecialIds, TextEncoder, Truncate};
use nli_bert::data::snli::{
    clean_binary_parse, parse_dataset, parse_dataset_sequential, read_dataset, read_format, read_snli_txt,
    Dataset, Format, ReadOptions, LABELS,
};
use nli_bert::data::synth;
use nli_bert::data::tokenizer::{d2l_tokenize, is_py_whitespace};
use nli_bert::data::vocab::Vocab;
use nli_bert::data::wordpiece::{read_vocab_txt, WordPiece};
use nli_bert::rng::HostRng;

const OPTIONS: [(usize, usize); 7] =
    [(1, 1), (2, 1), (7, 3), (64, 16), (1000, 1), (4096, 700), (32 << 20, 512 << 10)];

fn opts(block: usize, chunk: usize) -> ReadOptions {
    ReadOptions { block, chunk, ..ReadOptions::default() }
}

fn parallel(bytes: &[u8], format: Format, o: &ReadOptions) -> nli_bert::Result<Dataset> {
    let mut r = bytes;
    read_format(&mut r, Path::new("gen.data"), format, o)
}

fn sequential(bytes: &[u8], format: Format) -> nli_bert::Result<Dataset> {
    parse_dataset_sequential(bytes, Path::new("gen.data"), format)
}

/// Same dataset, or the same error message (`file:line: …`).
fn same(bytes: &[u8], format: Format, o: &ReadOptions) {
    let want = sequential(bytes, format).map_err(|e| e.to_string());
    let got = parallel(bytes, format, o).map_err(|e| e.to_string());
    assert_eq!(got, want, "{format:?} with {o:?}");
    let in_memory = parse_dataset(bytes, Path::new("gen.data"), format).map_err(|e| e.to_string());
    assert_eq!(in_memory, want, "{format:?} in memory");
}

fn awkward_txt(rows: usize, seed: u64) -> String {
    synth::snli_txt(rows, seed, true)
}

#[test]
fn generated_snli_txt_reads_the_same_in_parallel() {
    for seed in 0..4 {
        let text = awkward_txt(400 + 50 * seed as usize, seed);
        assert!(text.contains("\r\n") && text.contains("\n\n") && text.contains("\n-\t"), "seed {seed}");
        let want = sequential(text.as_bytes(), Format::SnliTxt).unwrap();
        assert!(want.skipped > 0 && want.examples.len() > 300);
        assert!(want.examples.iter().any(|e| !e.premise.is_ascii()));
        for (block, chunk) in OPTIONS {
            same(text.as_bytes(), Format::SnliTxt, &opts(block, chunk));
        }
        // the file readers and the in-memory reader
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gen.txt");
        std::fs::write(&p, &text).unwrap();
        let from_file = read_snli_txt(&p).unwrap();
        assert_eq!((from_file.examples, from_file.skipped), (want.examples.clone(), want.skipped));
        assert_eq!(read_dataset(&p).unwrap().examples, want.examples);
        let mem = parse_dataset(text.as_bytes(), &p, Format::SnliTxt).unwrap();
        assert_eq!(mem.examples, want.examples);
    }
}

/// The generated examples as TSV and JSON lines, with `-` rows, blank lines and mixed endings.
fn other_formats(seed: u64) -> (String, String) {
    let ds = sequential(awkward_txt(300, seed).as_bytes(), Format::SnliTxt).unwrap();
    let mut r = HostRng::new(seed, 9);
    let mut tsv = String::from(if seed % 2 == 0 { "\u{feff}" } else { "" });
    tsv.push_str("label\tpremise\thypothesis");
    let mut jsonl = String::new();
    let endings = ["\n", "\r\n", "\r", "\n\n"];
    for (i, e) in ds.examples.iter().enumerate() {
        let end = endings[r.below(4) as usize];
        let label = if i % 17 == 3 { "-" } else { LABELS[e.label as usize] };
        tsv.push_str(end);
        tsv.push_str(&format!(
            "{label}\t{}\t{}",
            e.premise.replace('\t', " "),
            e.hypothesis.replace('\t', " ")
        ));
        let obj = if i % 3 == 0 {
            serde_json::json!({"gold_label": label, "sentence1_binary_parse": format!("( {} )", e.premise),
                               "sentence2_binary_parse": format!("( ( {} ) )", e.hypothesis)})
        } else {
            serde_json::json!({"gold_label": label, "sentence1": e.premise, "sentence2": e.hypothesis})
        };
        jsonl.push_str(&obj.to_string());
        jsonl.push_str(if i % 11 == 5 { "\r\n \u{a0}\n" } else { end });
    }
    (tsv, jsonl)
}

#[test]
fn generated_tsv_and_jsonl_read_the_same_in_parallel() {
    for seed in 0..3 {
        let (tsv, jsonl) = other_formats(seed);
        let t = sequential(tsv.as_bytes(), Format::Tsv).unwrap();
        let j = sequential(jsonl.as_bytes(), Format::Jsonl).unwrap();
        assert!(t.skipped > 0 && t.examples.len() > 200 && j.examples.len() == t.examples.len());
        for (block, chunk) in OPTIONS {
            same(tsv.as_bytes(), Format::Tsv, &opts(block, chunk));
            same(jsonl.as_bytes(), Format::Jsonl, &opts(block, chunk));
        }
    }
}

/// Replaces line `n` (1-based, universal newlines) of `text` by `with`.
fn replace_line(text: &[u8], n: usize, with: &[u8]) -> Vec<u8> {
    let mut starts = vec![0];
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                starts.push(i + 2);
                i += 2;
            }
            b'\n' | b'\r' => {
                starts.push(i + 1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    let a = starts[n - 1];
    let mut b = a;
    while b < text.len() && text[b] != b'\n' && text[b] != b'\r' {
        b += 1;
    }
    [&text[..a], with, &text[b..]].concat()
}

#[test]
fn the_first_error_and_its_line_are_the_same_in_parallel() {
    let text = awkward_txt(300, 7);
    let lines = text.split(['\n', '\r']).count() - text.matches("\r\n").count();
    let bad: [&[u8]; 5] = [
        b"entailed\t( a )\t( b )",
        b"neutral\tonly two",
        b"neutral\t( \xff )\t( b )",
        b"neutral\t( a )\t( \xed\xa0\x80 )",
        b"label\tpremise\thypothesis",
    ];
    let mut r = HostRng::new(1, 2);
    for k in 0..24 {
        let mut bytes = text.clone().into_bytes();
        // one or two bad lines (the earlier one must win), sometimes on the header
        let mut at: Vec<usize> = (0..1 + k % 2).map(|_| 1 + r.below(lines as u64) as usize).collect();
        if k % 8 == 0 {
            at.push(1);
        }
        for &n in &at {
            bytes = replace_line(&bytes, n, bad[r.below(bad.len() as u64) as usize]);
        }
        let want = sequential(&bytes, Format::SnliTxt).map(|_| ()).map_err(|e| e.to_string());
        assert!(want.is_err(), "lines {at:?}");
        for (block, chunk) in OPTIONS {
            same(&bytes, Format::SnliTxt, &opts(block, chunk));
        }
    }
    // an overlong line is refused at its number, wherever it falls in the blocks
    let long = format!("neutral\t( {} )\t( b )", "x".repeat(3000));
    let bytes = replace_line(text.as_bytes(), 40, long.as_bytes());
    for (block, chunk) in OPTIONS {
        let o = ReadOptions { block, chunk, max_line: 2000 };
        let e = parallel(&bytes, Format::SnliTxt, &o).unwrap_err().to_string();
        assert!(e.starts_with("gen.data:40:") && e.contains("longer than 2000 bytes"), "{o:?}: {e}");
    }
    let at_end = [&bytes[..], b"\nneutral\t", "y".repeat(2500).as_bytes()].concat();
    let cut = replace_line(&at_end, 40, b"");
    for (block, chunk) in OPTIONS {
        let o = ReadOptions { block, chunk, max_line: 2000 };
        let e = parallel(&cut, Format::SnliTxt, &o).unwrap_err().to_string();
        assert!(e.contains("longer than 2000 bytes"), "{o:?}: {e}");
    }
}

/// Python's `re.sub('\s{2,}', ' ', s.replace('(', '').replace(')', '')).strip()`, written plainly.
fn clean_reference(s: &str) -> String {
    let chars: Vec<char> = s.chars().filter(|&c| c != '(' && c != ')').collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if is_py_whitespace(chars[i]) {
            let mut j = i;
            while j < chars.len() && is_py_whitespace(chars[j]) {
                j += 1;
            }
            if j - i >= 2 {
                out.push(' ');
            } else {
                out.push(chars[i]);
            }
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out.trim_matches(is_py_whitespace).to_string()
}

#[test]
fn clean_binary_parse_fast_path_matches_the_definition() {
    let alphabet: Vec<char> = "( )\t\n\u{b}\u{c}\r\u{1c}\u{1f}ab.,".chars().collect();
    let unicode: Vec<char> = "( )\u{a0}\u{3000}\u{85}éΣ北".chars().collect();
    let spaces: Vec<char> = "(  )ab.".chars().collect();
    let mut r = HostRng::new(3, 4);
    for k in 0..30_000 {
        let set = [&alphabet, &spaces, &unicode][k % 3];
        let n = r.below(24) as usize;
        let s: String = (0..n).map(|_| set[r.below(set.len() as u64) as usize]).collect();
        assert_eq!(clean_binary_parse(&s), clean_reference(&s), "{s:?}");
    }
}

fn sentences(ds: &Dataset) -> Vec<&str> {
    ds.examples.iter().flat_map(|e| [e.premise.as_str(), e.hypothesis.as_str()]).collect()
}

#[test]
fn vocab_counted_in_parallel_equals_vocab_build() {
    let mut text = awkward_txt(2000, 11);
    text.push_str("\nneutral\tİstanbul ΑΣ  Σ\tǅ ß\n");
    let ds = sequential(text.as_bytes(), Format::SnliTxt).unwrap();
    let s = sentences(&ds);
    let toks: Vec<Vec<String>> = s.iter().map(|x| d2l_tokenize(x)).collect();
    for min_freq in [0, 1, 2, 5, 50] {
        let reserved = ["<pad>", "<mask>", "<cls>", "<sep>"];
        let want = Vocab::build(toks.iter().map(|v| v.as_slice()), min_freq, &reserved);
        for threads in [1, 2, 3, 5] {
            // the chunk size follows the thread count
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = pool.install(|| Vocab::build_from_text(&s, min_freq, &reserved));
            assert_eq!(got.tokens(), want.tokens(), "min_freq {min_freq}");
            assert_eq!(got, want);
        }
    }
}

/// The encoding of one pair the way the code before the parallel pipeline did it.
fn d2l_reference(
    v: &Vocab,
    p: &str,
    h: &str,
    max_len: usize,
    how: Truncate,
    label: u8,
) -> (Vec<u32>, Vec<u8>) {
    let sp = SpecialIds::from_vocab(v).unwrap();
    let e = encode_ids(v.ids(&d2l_tokenize(p)), v.ids(&d2l_tokenize(h)), sp, max_len, how, label).unwrap();
    (e.ids, e.segments)
}

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
}

#[test]
fn encoding_in_parallel_equals_the_pair_by_pair_reference() {
    let mut text = awkward_txt(1500, 5);
    // empty sentences (a WordPiece pair with an empty hypothesis is one sentence), specials in text
    text.push_str("\nneutral\t( )\t( a [SEP] b )\nentailment\t( x y z )\t( )\n");
    let ds = sequential(text.as_bytes(), Format::SnliTxt).unwrap();
    let reserved = ["<pad>", "<mask>", "<cls>", "<sep>"];
    let vocab = Vocab::build_from_text(&sentences(&ds), 2, &reserved);
    let wv = read_vocab_txt(fixture("hf/vocab.txt")).unwrap();
    let wp = WordPiece::new(&wv, true).unwrap();
    for max_len in [5, 12, 20, 128] {
        for how in [Truncate::Longest, Truncate::Ratio] {
            let (enc, stats) = encode_dataset_with(&ds, &TextEncoder::D2l(&vocab), max_len, how).unwrap();
            let mut cut = 0;
            for (e, x) in enc.iter().zip(&ds.examples) {
                let want = d2l_reference(&vocab, &x.premise, &x.hypothesis, max_len, how, x.label);
                assert_eq!((&e.ids, &e.segments, e.label), (&want.0, &want.1, x.label));
                let full = d2l_tokenize(&x.premise).len() + d2l_tokenize(&x.hypothesis).len();
                cut += usize::from(full > max_len - 3);
            }
            assert_eq!((stats.n, stats.truncated), (ds.examples.len(), cut), "{max_len} {how:?}");
        }
        let (enc, _) =
            encode_dataset_with(&ds, &TextEncoder::WordPiece(wp.clone()), max_len, Truncate::Longest)
                .unwrap();
        for (e, x) in enc.iter().zip(&ds.examples) {
            let want = wp.encode_pair(&x.premise, &x.hypothesis, max_len);
            assert_eq!((&e.ids, &e.segments), (&want.0, &want.1), "{x:?}");
        }
    }
}
