#![no_main]
//! `cargo +nightly fuzz run vocab_json`: see nli_bert::fuzzing.

use libfuzzer_sys::fuzz_target;
use nli_bert::fuzzing::{check, Target};

fuzz_target!(|data: &[u8]| {
    if let Err(bug) = check(Target::VocabJson, data) {
        panic!("vocab_json: {bug}");
    }
});
