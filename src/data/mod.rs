//! Data: downloads and cache ([`hub`]), dataset readers ([`snli`]), vocabularies ([`vocab`]),
//! tokenisation ([`tokenizer`]: d2l words, [`wordpiece`]: BERT WordPiece) and packed batches
//! ([`batch`]).

pub mod batch;
pub mod hub;
pub mod snli;
pub mod tokenizer;
pub mod vocab;
pub mod wordpiece;
