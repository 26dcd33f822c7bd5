#![no_main]
//! `cargo +nightly fuzz run torch_zip`: see nli_bert::fuzzing.

use libfuzzer_sys::fuzz_target;
use nli_bert::fuzzing::{check, Target};

fuzz_target!(|data: &[u8]| {
    if let Err(bug) = check(Target::TorchZip, data) {
        panic!("torch_zip: {bug}");
    }
});
