//! Data: downloads and cache ([`hub`]), dataset readers ([`snli`]), vocabularies ([`vocab`]),
//! tokenisation ([`tokenizer`]: d2l words, [`wordpiece`]: BERT WordPiece), packed batches
//! ([`batch`]) and synthetic SNLI-format data for benchmarks ([`synth`]).

pub mod batch;
pub mod hub;
pub mod pairs;
pub mod snli;
pub mod synth;
pub mod tokenizer;
pub mod vocab;
pub mod wordpiece;
