#![no_main]
//! `cargo +nightly fuzz run vocab_txt`: see nli_bert::fuzzing.

use libfuzzer_sys::fuzz_target;
use nli_bert::fuzzing::{check, Target};

fuzz_target!(|data: &[u8]| {
    if let Err(bug) = check(Target::VocabTxt, data) {
        panic!("vocab_txt: {bug}");
    }
});
