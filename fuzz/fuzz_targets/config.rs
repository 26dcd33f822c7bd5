#![no_main]
//! `cargo +nightly fuzz run config`: see nli_bert::fuzzing.

use libfuzzer_sys::fuzz_target;
use nli_bert::fuzzing::{check, Target};

fuzz_target!(|data: &[u8]| {
    if let Err(bug) = check(Target::Config, data) {
        panic!("config: {bug}");
    }
});
