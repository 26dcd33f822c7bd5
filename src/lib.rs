//! # nli-bert
//!
//! Fine-tunes BERT for natural-language inference (premise + hypothesis → entailment /
//! contradiction / neutral). It re-implements d2l's chapter "Natural Language Inference:
//! Fine-Tuning BERT" exactly, with a hand-written forward and backward pass.
//!
//! ## Data flow (one direction)
//!
//! ```text
//! download (sha1, cache) -> read (SNLI txt / TSV / JSONL) -> tokenize (d2l words | WordPiece)
//!   -> pack (truncate pair, <cls> p <sep> h <sep>, segments) -> batches (packed tokens + cu_seqlens)
//!   -> model forward (Backend) -> loss + accuracy -> model backward (Backend) -> Adam (Backend)
//!   -> metrics (stdout line, metrics.jsonl) -> checkpoint (safetensors)
//! ```
//!
//! ## Dimension legend
//!
//! | name | meaning |
//! |---|---|
//! | `b` / B | sequences in a batch |
//! | `t` / T | tokens in a packed batch (Σ of the sequence lengths) |
//! | `c` / C | hidden size (d2l `num_hiddens`) |
//! | `nh` / NH | attention heads; `hs` / HS = C / NH, the head size |
//! | `f` / F | FFN inner size (d2l `ffn_num_hiddens`) |
//! | `v` / V | vocabulary size |
//! | P | rows of the positional table (d2l: 512) |
//! | K | classes (3: entailment 0, contradiction 1, neutral 2) |
//!
//! ## Reading order
//!
//! [`rng`] → [`backend`] (the trait) → [`backend::cpu`] (the reference ops) → [`model::params`] →
//! [`model::bert`] (forward/backward) → [`train`] → [`data`] → [`model::checkpoint`].

pub mod backend;
pub mod cli;
pub mod data;
pub mod error;
pub mod float;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod model;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
