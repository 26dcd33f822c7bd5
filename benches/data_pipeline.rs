//! The data pipeline on a generated SNLI-format file of 50,000 rows (about 40 MB;
//! `nli_bert::data::synth`, the shape of `snli_1.0_train.txt`): reading and parsing (the parallel
//! reader from the file and from memory, and the line-by-line reference), d2l's vocabulary
//! (min_freq 5), tokenising + packing with d2l words and with WordPiece
//! (`tests/fixtures/hf/vocab.txt`), and the whole `--model scratch` path.
//!
//! Group `data_pipeline`; throughput in bytes of the file for the readers, in pairs otherwise.
//! Run: `cargo bench --bench data_pipeline`. For SNLI train's size (550,152 rows) use
//! `cargo run --release --example gen_snli -- FILE` and `nli-bert bench --data FILE`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nli_bert::data::batch::{encode_dataset_with, TextEncoder, Truncate};
use nli_bert::data::snli::{parse_dataset, parse_dataset_sequential, read_snli_txt, Dataset, Format};
use nli_bert::data::synth;
use nli_bert::data::vocab::Vocab;
use nli_bert::data::wordpiece::{read_vocab_txt, WordPiece};
use std::path::Path;
use std::time::Duration;

const ROWS: usize = 50_000;
const RESERVED: [&str; 4] = ["<pad>", "<mask>", "<cls>", "<sep>"];

fn sentences(ds: &Dataset) -> Vec<&str> {
    ds.examples.iter().flat_map(|e| [e.premise.as_str(), e.hypothesis.as_str()]).collect()
}

fn bench(c: &mut Criterion) {
    let text = synth::snli_txt(ROWS, 0, false);
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("snli_1.0_train.txt");
    std::fs::write(&path, &text).expect("writing the generated file");
    let bytes = text.len() as u64;
    let ds = read_snli_txt(&path).expect("generated file");
    let pairs = ds.examples.len() as u64;
    let wv = read_vocab_txt(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/vocab.txt"))
        .expect("tests/fixtures/hf/vocab.txt");
    let wp = WordPiece::new(&wv, true).expect("WordPiece");
    let vocab = Vocab::build_from_text(&sentences(&ds), 5, &RESERVED);
    eprintln!("{} rows, {:.1} MB, {pairs} pairs, vocabulary {}", ROWS, bytes as f64 / 1e6, vocab.len());

    let mut g = c.benchmark_group("data_pipeline");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("read_file", |b| b.iter(|| read_snli_txt(&path).expect("read")));
    g.bench_function("parse_parallel", |b| {
        b.iter(|| parse_dataset(text.as_bytes(), &path, Format::SnliTxt).expect("parse"))
    });
    g.bench_function("parse_sequential", |b| {
        b.iter(|| parse_dataset_sequential(text.as_bytes(), &path, Format::SnliTxt).expect("parse"))
    });
    g.throughput(Throughput::Elements(pairs));
    g.bench_function("vocab_min_freq5", |b| b.iter(|| Vocab::build_from_text(&sentences(&ds), 5, &RESERVED)));
    g.bench_function("encode_d2l", |b| {
        b.iter(|| {
            encode_dataset_with(&ds, &TextEncoder::D2l(&vocab), 128, Truncate::Longest).expect("encode")
        })
    });
    g.bench_function("encode_wordpiece", |b| {
        b.iter(|| {
            encode_dataset_with(&ds, &TextEncoder::WordPiece(wp.clone()), 128, Truncate::Longest)
                .expect("encode")
        })
    });
    g.bench_function("scratch_total", |b| {
        b.iter(|| {
            let ds = read_snli_txt(&path).expect("read");
            let v = Vocab::build_from_text(&sentences(&ds), 5, &RESERVED);
            encode_dataset_with(&ds, &TextEncoder::D2l(&v), 128, Truncate::Longest).expect("encode")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
