//! The stable-toolchain smoke of the fuzz targets (`fuzz/`, run for real by `scripts/fuzz.sh`):
//! every target replays its seed corpus (the fixtures named in `tests/fixtures/fuzz/seeds.txt`
//! plus `tests/fixtures/fuzz/<target>/`, which also holds every input a fuzzer ever crashed on)
//! and then a few thousand deterministic mutations of it, through the same
//! `nli_bert::fuzzing::check` the libFuzzer targets call. Each input must end in a proper error
//! naming the file, or in a result whose invariants hold; a panic fails the test.

use nli_bert::fuzzing::{check, Target};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The seed inputs of `t`: (name, bytes).
fn seeds(t: Target) -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let list = std::fs::read_to_string(root().join("tests/fixtures/fuzz/seeds.txt")).unwrap();
    for line in list.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (target, path) = line.split_once(' ').unwrap();
        if target == t.name() {
            paths.push(root().join(path.trim()));
        }
    }
    let dir = root().join("tests/fixtures/fuzz").join(t.name());
    let mut own: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    own.sort();
    paths.extend(own);
    let out: Vec<(String, Vec<u8>)> = paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.strip_prefix(root()).unwrap_or(&p).display().to_string(), bytes)
        })
        .collect();
    assert!(!out.is_empty(), "no seeds for {}", t.name());
    out
}

/// splitmix64: a small deterministic generator for the mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u64; 12] =
    [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 40, i64::MAX as u64, u64::MAX];

/// One to four stacked byte-level mutations of `seed` (libFuzzer's usual ones: bit flips,
/// interesting bytes and integers, inserted, erased and duplicated ranges, truncation, splices
/// from another seed).
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = INTERESTING[rng.below(INTERESTING.len())] as u8;
            }
            2 if len >= 8 => {
                // an interesting 2-, 4- or 8-byte integer, either endianness (sizes, offsets, counts)
                let w = [2, 4, 8][rng.below(3)];
                let i = rng.below(len - w + 1);
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                let src = if rng.below(2) == 0 { &bytes[..w] } else { &bytes[8 - w..] };
                b[i..i + w].copy_from_slice(src);
            }
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, ins);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                b.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let dup = b[i..i + n].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, dup);
            }
            6 => b.truncate(rng.below(len + 1)),
            7 if !other.is_empty() => {
                let i = rng.below(other.len());
                let n = 1 + rng.below((other.len() - i).min(256));
                let at = rng.below(len + 1);
                let end = (at + n).min(len);
                b.splice(at..end, other[i..i + n].iter().copied());
            }
            _ => {
                // a structural byte of the text formats, or a pickle opcode
                let i = rng.below(len + 1);
                let c = b"\t\n\r{}[]\",:-()\x80\x94\x93(.ReqhX"[rng.below(22)];
                b.insert(i, c);
            }
        }
    }
    b
}

/// Mutations per target (well under a second each at the test profile's opt-level).
const MUTATIONS: usize = 20_000;
/// Seeds above this size are replayed but not mutated (they only slow the smoke down).
const MUTATE_MAX_BYTES: usize = 64 << 10;

fn smoke(t: Target) {
    let seeds = seeds(t);
    for (name, bytes) in &seeds {
        if let Err(bug) = check(t, bytes) {
            panic!("{}: seed {name}: {bug}", t.name());
        }
    }
    let small: Vec<&(String, Vec<u8>)> = seeds.iter().filter(|(_, b)| b.len() <= MUTATE_MAX_BYTES).collect();
    assert!(!small.is_empty(), "{}: no seed small enough to mutate", t.name());
    let mut rng = Rng(0x5eed ^ t.name().len() as u64 ^ ((t.name().as_bytes()[0] as u64) << 8));
    let t0 = Instant::now();
    for i in 0..MUTATIONS {
        let (name, seed) = small[rng.below(small.len())];
        let other = &small[rng.below(small.len())].1;
        let input = mutate(&mut rng, seed, other);
        if let Err(bug) = check(t, &input) {
            let dump = std::env::temp_dir().join(format!("fuzz-smoke-{}-{i}", t.name()));
            let _ = std::fs::write(&dump, &input);
            panic!("{}: mutation {i} of {name} (saved to {}): {bug}", t.name(), dump.display());
        }
    }
    // A soft guard against a target becoming pathologically slow (a hang shows up here first).
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "{}: {MUTATIONS} mutations took {:?}",
        t.name(),
        t0.elapsed()
    );
}

#[test]
fn fuzz_smoke_pickle() {
    smoke(Target::Pickle);
}

#[test]
fn fuzz_smoke_torch() {
    smoke(Target::Torch);
}

#[test]
fn fuzz_smoke_torch_zip() {
    // the assembled zips are real checkpoints: the seeds reach the tensors, not only the CRC check
    let seed = std::fs::read(root().join("tests/fixtures/fuzz/torch_zip/d2l_tiny_zip.parts")).unwrap();
    let zip = nli_bert::fuzzing::torch_zip_from_parts(&seed).unwrap();
    let direct = nli_bert::model::checkpoint::torch::load_torch_state_dict(
        &root().join("tests/fixtures/torch/d2l_tiny_zip.pt"),
    );
    let assembled = nli_bert::model::checkpoint::torch::parse_torch_state_dict(&zip, Path::new("x.pt"));
    assert_eq!(assembled.unwrap(), direct.unwrap());
    smoke(Target::TorchZip);
}

#[test]
fn fuzz_smoke_safetensors() {
    smoke(Target::Safetensors);
}

#[test]
fn fuzz_smoke_config() {
    // the hand-made seeds are valid configurations (so mutations start from the deep paths)
    for f in ["saved.json", "saved_wordpiece.json"] {
        let text = std::fs::read_to_string(root().join("tests/fixtures/fuzz/config").join(f)).unwrap();
        let saved: nli_bert::model::store::SavedConfig = serde_json::from_str(&text).unwrap();
        saved.model.validate().unwrap();
    }
    smoke(Target::Config);
}

#[test]
fn fuzz_smoke_vocab_json() {
    smoke(Target::VocabJson);
}

#[test]
fn fuzz_smoke_vocab_txt() {
    smoke(Target::VocabTxt);
}

#[test]
fn fuzz_smoke_snli_txt() {
    smoke(Target::SnliTxt);
}

#[test]
fn fuzz_smoke_jsonl() {
    smoke(Target::Jsonl);
}

#[test]
fn fuzz_smoke_tsv() {
    smoke(Target::Tsv);
}

#[test]
fn every_target_has_a_smoke_test_and_a_fuzz_target() {
    // The list above and fuzz/Cargo.toml must cover Target::ALL.
    let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
    let me = std::fs::read_to_string(
        Path::new(file!()).file_name().map(|f| root().join("tests").join(f)).unwrap(),
    )
    .unwrap();
    for t in Target::ALL {
        assert!(me.contains(&format!("fn fuzz_smoke_{}()", t.name())), "no smoke test for {}", t.name());
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name())),
            "fuzz/Cargo.toml has no target {}",
            t.name()
        );
        let src = root().join(format!("fuzz/fuzz_targets/{}.rs", t.name()));
        assert!(src.is_file(), "{} missing", src.display());
    }
}
