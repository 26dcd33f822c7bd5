//! Data: downloads and cache ([`hub`]), dataset readers ([`snli`]), vocabularies ([`vocab`]),
//! tokenisation ([`tokenizer`]) and packed batches ([`batch`]).

pub mod batch;
pub mod hub;
pub mod snli;
pub mod tokenizer;
pub mod vocab;
