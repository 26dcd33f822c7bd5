//! The text work behind nli-bert's `build.rs`, as a library with tests of its own.
//!
//! `build.rs` lists `kernels/*.cu`, reads them, and calls this crate to:
//! - find every `extern "C" __global__ void NAME(PARAMS)` and the kind of each parameter
//!   ([`signature::parse_kernels`]; a kernel the launch code cannot call is an error naming
//!   `file:line`), and write them as a Rust table ([`generate::kernel_table`]);
//! - join the sources into one translation unit for NVRTC and nvcc ([`generate::combine`]);
//! - prepare the emulator's copy: `__shared__` arrays marked for NaN poisoning
//!   ([`emu::poison_shared`]) and a C++ trampoline per kernel ([`emu::trampolines`]);
//! - compile with one set of flags shared by nvcc (build time) and NVRTC (run time)
//!   ([`flags`]).
//!
//! It does no I/O and runs no compiler: `build.rs` does that.

pub mod emu;
pub mod flags;
pub mod generate;
pub mod lex;
pub mod signature;

/// One source file: its display path (`kernels/x.cu`) and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// The path shown in `#line` directives and error messages.
    pub path: String,
    /// The file's text.
    pub text: String,
}

impl Unit {
    /// A unit from its display path and text.
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        Unit { path: path.into(), text: text.into() }
    }
}
