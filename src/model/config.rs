//! Model configuration: one architecture, flags for the d2l / Hugging Face variants.

use crate::backend::Activation;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

pub use crate::data::batch::TokenizerKind;

/// The most parameters a configuration may have (2^32: 17 GB in f32, far beyond BERT-large).
pub const MAX_PARAMS: usize = 1 << 32;

/// Architecture and run-independent settings of a BERT classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Hidden size C (d2l `num_hiddens`).
    pub hidden: usize,
    /// FFN inner size F (d2l `ffn_num_hiddens`).
    pub ffn: usize,
    /// Attention heads NH (not recorded in d2l weights: 4 for bert.small, 12 for bert.base).
    pub heads: usize,
    /// Encoder blocks L.
    pub layers: usize,
    /// Rows of the positional table P (d2l: 512).
    pub max_positions: usize,
    /// Rows of the segment table S (2).
    pub type_vocab_size: usize,
    /// FFN activation (d2l: ReLU).
    pub activation: Activation,
    /// LayerNorm ε (d2l: 1e-5).
    pub ln_eps: f64,
    /// LayerNorm after the embedding sum (Hugging Face), absent in d2l.
    pub embedding_layernorm: bool,
    /// Whether the positional embedding receives gradients (d2l 0.17: no; later d2l and HF: yes).
    pub train_pos_embedding: bool,
    /// Output classes K (3).
    pub num_labels: usize,
    /// Tokenizer kind.
    pub tokenizer: TokenizerKind,
    /// Lower-case input text (WordPiece `do_lower_case`; d2l always lower-cases).
    #[serde(default = "yes")]
    pub lowercase: bool,
    /// Dropout on the embeddings and before the classifier (Hugging Face), absent in d2l.
    #[serde(default)]
    pub hf_extra_dropout: bool,
}

fn yes() -> bool {
    true
}

impl BertConfig {
    /// d2l's `bert.small`: C 256, F 512, 4 heads, 2 blocks, 512 positions, ReLU, eps 1e-5.
    pub fn d2l_small(vocab_size: usize) -> Self {
        BertConfig {
            vocab_size,
            hidden: 256,
            ffn: 512,
            heads: 4,
            layers: 2,
            max_positions: 512,
            type_vocab_size: 2,
            activation: Activation::Relu,
            ln_eps: 1e-5,
            embedding_layernorm: false,
            train_pos_embedding: false,
            num_labels: 3,
            tokenizer: TokenizerKind::D2lWords,
            lowercase: true,
            hf_extra_dropout: false,
        }
    }

    /// d2l's `bert.base`: C 768, F 3072, 12 heads, 12 blocks.
    pub fn d2l_base(vocab_size: usize) -> Self {
        BertConfig { hidden: 768, ffn: 3072, heads: 12, layers: 12, ..Self::d2l_small(vocab_size) }
    }

    /// Head size HS = C / NH.
    pub fn head_size(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Checks the configuration is consistent and of a supported size; says which field is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::usage(format!("invalid model configuration: {m}")));
        if self.hidden == 0 || self.ffn == 0 || self.heads == 0 || self.layers == 0 {
            return bad(format!(
                "hidden ({}), ffn ({}), heads ({}) and layers ({}) must all be positive",
                self.hidden, self.ffn, self.heads, self.layers
            ));
        }
        if self.hidden % self.heads != 0 {
            return bad(format!("hidden size {} is not divisible by {} heads", self.hidden, self.heads));
        }
        if self.vocab_size == 0 || self.max_positions == 0 || self.type_vocab_size == 0 {
            return bad("vocab_size, max_positions and type_vocab_size must be positive".into());
        }
        if self.num_labels == 0 {
            return bad("num_labels must be positive".into());
        }
        if self.ln_eps.is_nan() || self.ln_eps <= 0.0 {
            return bad(format!("ln_eps must be positive, got {}", self.ln_eps));
        }
        // Far beyond any BERT, and small enough that sizes computed from them cannot overflow
        // (a hostile config.json must not make the layout's arithmetic wrap or loop for ever).
        for (name, v, max) in [
            ("hidden", self.hidden, 1 << 15),
            ("ffn", self.ffn, 1 << 17),
            ("layers", self.layers, 1 << 10),
            ("heads", self.heads, 1 << 10),
            ("vocab_size", self.vocab_size, 1 << 24),
            ("max_positions", self.max_positions, 1 << 20),
            ("type_vocab_size", self.type_vocab_size, 1 << 10),
            ("num_labels", self.num_labels, 1 << 10),
        ] {
            if v > max {
                return bad(format!("{name} {v} is beyond the supported {max}"));
            }
        }
        match self.param_count() {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            n => bad(format!(
                "{} parameters, more than the supported {MAX_PARAMS}",
                n.map_or("an overflowing number of".to_string(), |n| n.to_string())
            )),
        }
    }

    /// The number of parameters (all of [`crate::model::params::ParamLayout`]), `None` on
    /// overflow.
    pub fn param_count(&self) -> Option<usize> {
        let (c, f, k) = (self.hidden, self.ffn, self.num_labels);
        let table = (self.max_positions.checked_add(self.vocab_size)?.checked_add(self.type_vocab_size)?)
            .checked_mul(c)?;
        let emb_ln = if self.embedding_layernorm { 2 * c } else { 0 };
        // QKV + output projections with biases, FFN with biases, two LayerNorms
        let block = c.checked_mul(c)?.checked_mul(4)?.checked_add(c.checked_mul(f)?.checked_mul(2)?)?
            + 4 * c
            + f
            + c
            + 4 * c;
        let blocks = block.checked_mul(self.layers)?;
        let head = c.checked_mul(c)?.checked_add(c)?.checked_add(k.checked_mul(c)?.checked_add(k)?)?;
        table.checked_add(emb_ln)?.checked_add(blocks)?.checked_add(head)
    }
}

/// Numeric precision of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float64: the reference (gradient checks, parity with PyTorch to ~1e-10). CPU only.
    F64,
    /// float32: the fast trainer.
    F32,
    /// bf16 matrix products with fp32 accumulation; weights, Adam, LayerNorm, softmax and the
    /// loss in f32. GPU (or emulator) only.
    Bf16,
}
