//! Data pipeline: readers (SNLI txt / jsonl / TSV), Python-exact tokenisation, vocab building,
//! truncation, encoding, packing and epoch order. Expected values marked "python" were produced
//! by python3.11 and d2l 0.17.6 (`pip install --no-deps d2l==0.17.6`, imported with stub modules
//! for torchvision, PIL, pandas, requests, IPython, matplotlib, matplotlib_inline).

mod common;

use std::path::{Path, PathBuf};

use nli_bert::data::batch::{
    encode_dataset, encode_ids, encode_pair, epoch_batches, truncate_pair, Batch, SpecialIds, Truncate,
};
use nli_bert::data::snli::{
    clean_binary_parse, read_dataset, read_snli_dir, read_snli_jsonl, read_snli_txt, read_tsv, Dataset,
    Example,
};
use nli_bert::data::tokenizer::{d2l_tokenize, py_lower, py_split};
use nli_bert::data::vocab::{TieOrder, Vocab};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ex(p: &str, h: &str, label: u8) -> Example {
    Example { premise: p.into(), hypothesis: h.into(), label }
}

/// The real header of SNLI 1.0's `snli_1.0_*.txt`.
const SNLI_HEADER: &str = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t\
sentence2_parse\tsentence1\tsentence2\tcaptionID\tpairID\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5";

/// A small SNLI-format file mixing `\n`, `\r\n` and lone `\r` endings, a `-` row, a blank line,
/// runs of Unicode whitespace (NBSP, U+001C/U+001D, U+3000) and no final newline.
fn snli_fixture() -> String {
    let r1 = "neutral\t( ( ( A person ) ( on ( a horse ) ) ) ( ( jumps ( over ( a ( broken ( down airplane ) ) ) ) ) . ) )\t\
              ( ( A person ) ( ( is ( ( training ( his horse ) ) ( for ( a competition ) ) ) ) . ) )\t\
              (ROOT (S (NP (DT A) (NN person))))\t(ROOT (S))\tA person on a horse jumps over a broken down airplane.\t\
              A person is training his horse for a competition.\t3416050480.jpg#4\t3416050480.jpg#4r1n\tneutral\t\t\t\t";
    let r2 = "contradiction\t( ( A person ) ( on ( a horse ) ) )\t( ( A person ) ( ( is ( at ( a diner ) ) ) . ) )\t(ROOT)\t\
              (ROOT)\tA person on a horse.\tA person is at a diner.\t3416050480.jpg#4\t3416050480.jpg#4r1c\tcontradiction\t\t\t\t";
    let r3 = "-\t( Nobody agrees )\t( ( on this ) )\t(ROOT)\t(ROOT)\tNobody agrees\ton this\tx\ty\tneutral\tentailment\t\
              contradiction\t\t";
    let r4 = "entailment\t( ( Two  \u{a0} women ) ( are ( embracing\u{1c}\u{1d}now ) ) )\t(\u{3000}( ÉLAN  Σ ) )\t(ROOT)\t\
              (ROOT)\tTwo women\tÉlan\tc\tp\tentailment\t\t\t\t";
    let r6 = "neutral\tsingle\tword\t\t\t\t\t\t\t\t\t\t\t";
    format!("{SNLI_HEADER}\n{r1}\n{r2}\r\n{r3}\r{r4}\n\n{r6}")
}

#[test]
fn snli_txt_matches_d2l_read_snli() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "snli_1.0_train.txt", snli_fixture().as_bytes());
    let ds = read_snli_txt(&path).unwrap();
    // python: d2l.read_snli(dir, True) on the same bytes (written with newline='').
    let expected = vec![
        ex(
            "A person on a horse jumps over a broken down airplane .",
            "A person is training his horse for a competition .",
            2,
        ),
        ex("A person on a horse", "A person is at a diner .", 1),
        ex("Two women are embracing now", "ÉLAN Σ", 0),
        ex("single", "word", 2),
    ];
    assert_eq!(ds.examples, expected);
    assert_eq!(ds.skipped, 1);
    // The same through the directory reader and the dispatcher.
    assert_eq!(read_snli_dir(dir.path(), true).unwrap().examples, expected);
    assert_eq!(read_dataset(&path).unwrap().examples, expected);
    let sniffed = write(dir.path(), "snli_copy.data", snli_fixture().as_bytes());
    assert_eq!(read_dataset(&sniffed).unwrap().examples, expected);
    // Test split missing: an I/O error naming the file.
    let err = read_snli_dir(dir.path(), false).unwrap_err().to_string();
    assert!(err.contains("snli_1.0_test.txt"), "{err}");
}

#[test]
fn clean_binary_parse_like_d2l() {
    // python: re.sub('\\s{2,}', ' ', re.sub('\\)', '', re.sub('\\(', '', s))).strip()
    assert_eq!(clean_binary_parse("( ( A man ) ( is ( sleeping . ) ) )"), "A man is sleeping .");
    assert_eq!(clean_binary_parse("a\u{a0}b  \u{1c} c\u{1f}"), "a\u{a0}b c");
    assert_eq!(clean_binary_parse("\u{85}x\u{2028}y\u{3000}"), "x\u{2028}y");
    assert_eq!(clean_binary_parse("( )"), "");
}

fn err_of(r: nli_bert::Result<Dataset>) -> String {
    match r {
        Ok(ds) => panic!("expected an error, got {} examples", ds.examples.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn snli_txt_malformed_lines_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let row = "neutral\t( a b )\t( c d )\t\t\t\t\t\t\t\t\t\t\t";

    let p = write(d, "label.txt", format!("{SNLI_HEADER}\n{row}\nentailed\ta\tb\n").as_bytes());
    let e = err_of(read_snli_txt(&p));
    assert!(e.starts_with(&format!("{}:3:", p.display())) && e.contains("entailed"), "{e}");

    // Lone-CR endings: line numbers follow Python's universal newlines.
    let p = write(d, "cols.txt", format!("{SNLI_HEADER}\r{row}\rneutral\tonly two\r").as_bytes());
    let e = err_of(read_snli_txt(&p));
    assert!(e.starts_with(&format!("{}:3:", p.display())) && e.contains("found 2"), "{e}");

    let mut bytes = format!("{SNLI_HEADER}\r\n{row}\r\n{row}\r\n").into_bytes();
    bytes.extend_from_slice(b"neutral\t\xff\tb\r\n");
    let p = write(d, "utf8.txt", &bytes);
    let e = err_of(read_snli_txt(&p));
    assert!(e.starts_with(&format!("{}:4:", p.display())) && e.contains("UTF-8"), "{e}");

    let p = write(d, "empty.txt", b"");
    let e = err_of(read_snli_txt(&p));
    assert!(e.contains("empty"), "{e}");

    // `-` rows need no columns; unknown labels are errors even with few columns.
    let p = write(d, "dash.txt", format!("{SNLI_HEADER}\n-\n{row}\n").as_bytes());
    let ds = read_snli_txt(&p).unwrap();
    assert_eq!((ds.examples.len(), ds.skipped), (1, 1));
}

#[test]
fn jsonl_reader() {
    let dir = tempfile::tempdir().unwrap();
    let l1 = r#"{"annotator_labels": ["neutral"], "captionID": "3416050480.jpg#4", "gold_label": "neutral", "pairID": "3416050480.jpg#4r1n", "sentence1": "A person on a horse jumps over a broken down airplane.", "sentence1_binary_parse": "( ( ( A person ) ( on ( a horse ) ) ) ( ( jumps ( over ( a ( broken ( down airplane ) ) ) ) ) . ) )", "sentence1_parse": "(ROOT)", "sentence2": "A person is training his horse for a competition.", "sentence2_binary_parse": "( ( A person ) ( ( is ( ( training ( his horse ) ) ( for ( a competition ) ) ) ) . ) )", "sentence2_parse": "(ROOT)"}"#;
    let l2 = r#"{"gold_label": "-", "sentence1": "x", "sentence2": "y"}"#;
    let l3 = r#"{"gold_label": "entailment", "sentence1": "Raw (text) here.", "sentence2": "Kept  as is."}"#;
    let p = write(dir.path(), "snli.jsonl", format!("{l1}\r\n{l2}\n\n{l3}").as_bytes());
    let ds = read_snli_jsonl(&p).unwrap();
    assert_eq!(
        ds.examples,
        vec![
            ex(
                "A person on a horse jumps over a broken down airplane .",
                "A person is training his horse for a competition .",
                2
            ),
            ex("Raw (text) here.", "Kept  as is.", 0),
        ]
    );
    assert_eq!(ds.skipped, 1);
    assert_eq!(read_dataset(&p).unwrap(), ds);

    let p = write(
        dir.path(),
        "bad.jsonl",
        format!("{l1}\n{{\"gold_label\": \"neutral\", \"sentence1\": 3}}\n").as_bytes(),
    );
    let e = err_of(read_snli_jsonl(&p));
    assert!(e.starts_with(&format!("{}:2:", p.display())) && e.contains("sentence1"), "{e}");
    let p = write(dir.path(), "bad2.jsonl", format!("{l1}\n{l2}\nnot json\n").as_bytes());
    let e = err_of(read_snli_jsonl(&p));
    assert!(e.starts_with(&format!("{}:3:", p.display())), "{e}");
}

#[test]
fn tsv_reader_and_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = write(
        d,
        "a.tsv",
        "label\tpremise\thypothesis\nneutral\tA b\tc  d\r\n-\tx\ty\n\ncontradiction\tq\tr".as_bytes(),
    );
    let ds = read_tsv(&p).unwrap();
    assert_eq!(ds.examples, vec![ex("A b", "c  d", 2), ex("q", "r", 1)]);
    assert_eq!(ds.skipped, 1);
    let sniffed = write(d, "a.data", &std::fs::read(&p).unwrap());
    assert_eq!(read_dataset(&sniffed).unwrap().examples, ds.examples);

    let p = write(d, "hdr.tsv", b"gold\tpremise\thypothesis\n");
    let e = err_of(read_tsv(&p));
    assert!(
        e.starts_with(&format!("{}:1:", p.display())) && e.contains("\"gold\\tpremise\\thypothesis\""),
        "{e}"
    );
    let p = write(d, "cols.tsv", b"label\tpremise\thypothesis\nneutral\ta\tb\tc\n");
    let e = err_of(read_tsv(&p));
    assert!(e.starts_with(&format!("{}:2:", p.display())) && e.contains("found 4"), "{e}");
    let p = write(d, "empty.tsv", b"");
    assert!(err_of(read_tsv(&p)).contains("empty"));

    let p = write(d, "what.csv", b"a,b,c\n");
    let e = err_of(read_dataset(&p));
    assert!(e.starts_with(&format!("{}:1:", p.display())) && e.contains("unknown dataset format"), "{e}");
}

#[test]
fn real_snli_dev_counts_and_lengths() {
    let Some(dir) = common::shared_data("real_snli_dev_counts_and_lengths") else { return };
    let ds = read_dataset(dir.join("snli_dev.tsv")).unwrap();
    assert_eq!(ds.examples.len(), 9842);
    assert_eq!(ds.skipped, 0);
    let mut counts = [0usize; 3];
    for e in &ds.examples {
        counts[e.label as usize] += 1;
    }
    assert_eq!(counts, [3329, 3278, 3235]);

    // python: lengths len(p.lower().split()) + len(h.lower().split()) + 3 sum to 241069 (mean
    // 24.4939), max 99; 1297 exceed 32 and the lengths capped at 32 sum to 232588.
    let vocab = Vocab::from_tokens(strings(&["<unk>", "<pad>", "<cls>", "<sep>"])).unwrap();
    let (enc, st) = encode_dataset(&ds, &vocab, 128, Truncate::Longest).unwrap();
    assert_eq!((st.n, st.truncated, st.max_len_seen), (9842, 0, 99));
    assert_eq!(enc.iter().map(|e| e.ids.len()).sum::<usize>(), 241069);
    assert!((st.mean_len - 24.4939).abs() < 1e-4, "{}", st.mean_len);
    assert_eq!(enc[0].label, 2);
    for how in [Truncate::Longest, Truncate::Ratio] {
        let (enc, st) = encode_dataset(&ds, &vocab, 32, how).unwrap();
        assert_eq!((st.truncated, st.max_len_seen), (1297, 32));
        assert_eq!(enc.iter().map(|e| e.ids.len()).sum::<usize>(), 232588);
    }
    // python: the longest pair (row 5134, 48 + 48 tokens) truncated by d2l to max_len 32 keeps
    // 15 premise and 14 hypothesis tokens.
    let p = d2l_tokenize(&ds.examples[5134].premise);
    let h = d2l_tokenize(&ds.examples[5134].hypothesis);
    assert_eq!((p.len(), h.len()), (48, 48));
    let e = encode_pair(&p, &h, &vocab, 32, Truncate::Longest).unwrap();
    assert_eq!(e.segments.iter().filter(|&&s| s == 0).count(), 15 + 2);
    assert_eq!(e.segments.iter().filter(|&&s| s == 1).count(), 14 + 1);

    if dir.join("sick_train.tsv").is_file() {
        let (_, st) = encode_dataset(
            &read_dataset(dir.join("sick_train.tsv")).unwrap(),
            &vocab,
            128,
            Truncate::Longest,
        )
        .unwrap();
        assert_eq!((st.n, st.max_len_seen), (4439, 51));
    }
}

#[test]
fn tokenize_matches_python() {
    // python: json.dumps(s.lower().split())
    let cases: &[(&str, &[&str])] = &[
        (
            "A  Man\tis\u{a0}HERE\u{1c}now\u{2028}ok\u{200b}zw",
            &["a", "man", "is", "here", "now", "ok\u{200b}zw"],
        ),
        ("ΟΔΥΣΣΕΥΣ ΣΑΣ. Σ", &["οδυσσευς", "σας.", "σ"]),
        ("İstanbul ẞ Ǆ ﬁ", &["i\u{307}stanbul", "ß", "ǆ", "ﬁ"]),
        ("\u{85}lead trail\u{3000}", &["lead", "trail"]),
        ("", &[]),
        ("  \u{1f} ", &[]),
    ];
    for (s, want) in cases {
        assert_eq!(d2l_tokenize(s), strings(want), "{s:?}");
    }
    // python: 'ΑΣ'.lower() == 'ας'
    assert_eq!(py_lower("ΑΣ"), "ας");
    assert_eq!(py_split(" a\u{1e}b "), vec!["a", "b"]);
}

#[test]
fn vocab_build_matches_d2l_0_17() {
    let corpus: Vec<Vec<String>> = [
        "the cat sat on the mat",
        "the dog sat on the log",
        "a cat and a dog <sep> b b",
        "zeta alpha zeta alpha mu mu",
    ]
    .iter()
    .map(|s| s.split(' ').map(String::from).collect())
    .collect();
    let reserved = ["<pad>", "<mask>", "<cls>", "<sep>"];
    let build = |mf, res: &[&str]| Vocab::build(corpus.iter().map(Vec::as_slice), mf, res).tokens().to_vec();
    // python: d2l.Vocab(corpus, min_freq=mf, reserved_tokens=[...]).idx_to_token
    let specials = ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>"];
    let freq2 = ["the", "cat", "sat", "on", "dog", "a", "b", "zeta", "alpha", "mu"];
    assert_eq!(build(2, &reserved), strings(&[&specials[..], &freq2[..]].concat()));
    assert_eq!(build(0, &reserved), strings(&[&specials[..], &freq2[..], &["mat", "log", "and"]].concat()));
    assert_eq!(build(3, &reserved), strings(&[&specials[..], &["the"]].concat()));
    assert_eq!(build(1, &[]), strings(&[&["<unk>"], &freq2[..], &["mat", "log", "and", "<sep>"]].concat()));
    // The older (d2l <= 0.16) alphabetical tie order.
    let alpha = Vocab::build_with(corpus.iter().map(Vec::as_slice), 2, &reserved, TieOrder::Alphabetical);
    assert_eq!(
        &alpha.tokens()[5..],
        &strings(&["the", "a", "alpha", "b", "cat", "dog", "mu", "on", "sat", "zeta"])[..]
    );

    let v = Vocab::build(corpus.iter().map(Vec::as_slice), 2, &reserved);
    assert_eq!((v.unk(), v.id("the"), v.id("mat"), v.special("<cls>").unwrap()), (0, 5, 0, 3));
}

#[test]
fn vocab_json_roundtrip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = Vocab::from_tokens(strings(&["<unk>", "<pad>", "<cls>", "<sep>", "héllo", "a\"b"])).unwrap();
    let p = d.join("vocab.json");
    v.save_json(&p).unwrap();
    let back = Vocab::from_json_file(&p).unwrap();
    assert_eq!(back.tokens(), v.tokens());
    assert_eq!(back.id("héllo"), 4);
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 1, "no temporary file left");

    // Duplicates: the last index wins, as Python's dict comprehension.
    let p = write(d, "dup.json", br#"["<unk>", "x", "y", "x"]"#);
    let v = Vocab::from_json_file(&p).unwrap();
    assert_eq!((v.len(), v.id("x"), v.token(1)), (4, 3, Some("x")));

    for (name, body, needle) in [
        ("obj.json", &br#"{"a": 1}"#[..], "list"),
        ("num.json", br#"["<unk>", 3]"#, "element 1"),
        ("empty.json", b"[]", "empty"),
        ("nounk.json", br#"["a", "b"]"#, "<unk>"),
        ("broken.json", b"[\"<unk>\",\n", "JSON"),
    ] {
        let p = write(d, name, body);
        let e = Vocab::from_json_file(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains(needle), "{name}: {e}");
    }
    let e = v.special("<cls>").unwrap_err().to_string();
    assert!(e.contains("<cls>") && e.contains("dup.json"), "{e}");
}

#[test]
fn truncate_longest_matches_d2l() {
    // python: d2l's _truncate_pair_of_tokens on lists of lengths (lp, lh), max_len → kept lengths.
    let cases = [
        ((10, 3, 8), (3, 2)),
        ((3, 10, 8), (3, 2)),
        ((5, 5, 8), (3, 2)),
        ((6, 5, 8), (3, 2)),
        ((130, 2, 128), (123, 2)),
        ((2, 130, 128), (2, 123)),
        ((70, 70, 128), (63, 62)),
        ((0, 10, 5), (0, 2)),
        ((10, 0, 5), (2, 0)),
        ((4, 4, 5), (1, 1)),
        ((1, 1, 5), (1, 1)),
    ];
    for ((lp, lh, ml), want) in cases {
        let mut p: Vec<u32> = (0..lp).collect();
        let mut h: Vec<u32> = (100..100 + lh).collect();
        truncate_pair(&mut p, &mut h, ml as usize, Truncate::Longest);
        assert_eq!((p.len() as u32, h.len() as u32), want, "{lp} {lh} {ml}");
        assert_eq!(p, (0..want.0).collect::<Vec<_>>(), "keeps the beginning");
        assert_eq!(h, (100..100 + want.1).collect::<Vec<_>>());
    }
}

#[test]
fn truncate_ratio_properties() {
    // Documented rounding: kp = B·lp/total rounded half up.
    for ((lp, lh, ml), want) in
        [((10, 3, 8), (4, 1)), ((3, 10, 8), (1, 4)), ((5, 5, 8), (3, 2)), ((60, 2, 13), (9, 1))]
    {
        let mut p = vec![0u8; lp];
        let mut h = vec![0u8; lh];
        truncate_pair(&mut p, &mut h, ml, Truncate::Ratio);
        assert_eq!((p.len(), h.len()), want, "{lp} {lh} {ml}");
    }
    for ml in 5..40usize {
        for lp in 0..45usize {
            for lh in 0..45usize {
                let (mut p, mut h): (Vec<usize>, Vec<usize>) = ((0..lp).collect(), (0..lh).collect());
                truncate_pair(&mut p, &mut h, ml, Truncate::Ratio);
                let b = ml - 3;
                let (kp, kh) = (p.len(), h.len());
                assert!(kp <= lp && kh <= lh);
                assert_eq!(p, (0..kp).collect::<Vec<_>>());
                if lp + lh <= b {
                    assert_eq!((kp, kh), (lp, lh));
                    continue;
                }
                assert_eq!(kp + kh, b, "{lp} {lh} {ml}");
                if lp > 0 && lh > 0 {
                    assert!(kp >= 1 && kh >= 1, "{lp} {lh} {ml}");
                }
                let ideal = b as f64 * lp as f64 / (lp + lh) as f64;
                if kp > 1 && kh > 1 {
                    assert!((kp as f64 - ideal).abs() <= 0.5 + 1e-9, "{lp} {lh} {ml}: {kp} vs {ideal}");
                }
            }
        }
    }
}

#[test]
fn encode_and_batch() {
    let vocab =
        Vocab::from_tokens(strings(&["<unk>", "<pad>", "<mask>", "<cls>", "<sep>", "a", "dog", "runs"]))
            .unwrap();
    let e =
        encode_pair(&strings(&["a", "dog", "runs"]), &strings(&["a", "cat"]), &vocab, 128, Truncate::Longest)
            .unwrap();
    assert_eq!(e.ids, vec![3, 5, 6, 7, 4, 5, 0, 4]);
    assert_eq!(e.segments, vec![0, 0, 0, 0, 0, 1, 1, 1]);
    let e2 = encode_ids(
        vec![6],
        vec![7, 7, 7, 7, 7],
        SpecialIds::from_vocab(&vocab).unwrap(),
        6,
        Truncate::Longest,
        1,
    )
    .unwrap();
    assert_eq!(e2.ids, vec![3, 6, 4, 7, 7, 4]);
    let err = encode_pair(&[], &[], &vocab, 4, Truncate::Longest).unwrap_err().to_string();
    assert!(err.contains("max_len 4") && err.contains(">= 5"), "{err}");
    let no_cls = Vocab::from_tokens(strings(&["<unk>", "<sep>"])).unwrap();
    assert!(encode_pair(&[], &[], &no_cls, 128, Truncate::Longest)
        .unwrap_err()
        .to_string()
        .contains("<cls>"));

    let b = Batch::from_encoded(&[&e, &e2]);
    assert_eq!((b.b(), b.t()), (2, 14));
    assert_eq!(b.lens, vec![8, 6]);
    assert_eq!(b.positions, vec![0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5]);
    assert_eq!(b.labels, vec![0, 1]);
    let pad = vocab.special("<pad>").unwrap() as i32;
    let (t, s, v) = b.padded(10, pad);
    assert_eq!(&t[..10], &[3, 5, 6, 7, 4, 5, 0, 4, 1, 1]);
    assert_eq!(&t[10..], &[3, 6, 4, 7, 7, 4, 1, 1, 1, 1]);
    assert_eq!(&s[..10], &[0, 0, 0, 0, 0, 1, 1, 1, 0, 0]);
    assert_eq!(v, vec![8, 6]);

    // encode_dataset keeps order and labels.
    let ds = Dataset {
        examples: vec![ex("A DOG", "runs", 2), ex("x", "A  dog", 1)],
        skipped: 0,
        source: "t".into(),
    };
    let (enc, st) = encode_dataset(&ds, &vocab, 128, Truncate::Longest).unwrap();
    assert_eq!(enc[0].ids, vec![3, 5, 6, 4, 7, 4]);
    assert_eq!(enc[1].ids, vec![3, 0, 4, 5, 6, 4]);
    assert_eq!((enc[0].label, enc[1].label), (2, 1));
    assert_eq!((st.n, st.truncated, st.max_len_seen, st.mean_len), (2, 0, 6, 6.0));
}

#[test]
fn epoch_batches_like_dataloader() {
    // d2l: 549367 training pairs, batch 512 → 1073 batches, the last one 503.
    let b = epoch_batches(549_367, 512, true, 42, 0);
    assert_eq!(b.len(), 1073);
    assert_eq!(b.last().unwrap().len(), 503);
    let t = epoch_batches(9824, 512, false, 0, 0);
    assert_eq!((t.len(), t.last().unwrap().len()), (20, 96));
    assert_eq!(t[0][..3], [0, 1, 2]);
    assert_eq!(epoch_batches(100, 7, true, 1, 3), epoch_batches(100, 7, true, 1, 3));
    assert_ne!(epoch_batches(100, 7, true, 1, 3), epoch_batches(100, 7, true, 1, 4));
}
