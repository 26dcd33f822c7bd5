//! One flat parameter buffer with named views.
//!
//! Names are d2l's state-dict keys (`encoder.blks.0.attention.W_q.weight`, …, `hidden.0.weight`,
//! `output.weight`). The order differs from d2l's state dict in one place: in each block the three
//! projection weights `W_q, W_k, W_v` are adjacent, then their three biases, so that one GEMM
//! computes Q, K and V: `qkv_weight` is a (3C, C) matrix and `qkv_bias` a (3C,) vector.

use crate::model::config::BertConfig;
use std::collections::HashMap;
use std::ops::Range;

/// One named tensor inside the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    /// d2l state-dict name.
    pub name: String,
    /// PyTorch shape (Linear weights `[out, in]`; the positional table `[1, P, C]`).
    pub shape: Vec<usize>,
    /// Offset of the first element in the flat buffer.
    pub offset: usize,
    /// Whether the optimizer updates it (false for d2l 0.17's detached positional embedding).
    pub trainable: bool,
}

impl ParamEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Range in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// Ranges of one encoder block's tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockRanges {
    /// (3C, C): W_q, W_k, W_v weights stacked.
    pub qkv_weight: Range<usize>,
    /// (3C,): their biases.
    pub qkv_bias: Range<usize>,
    /// (C, C) / (C,): W_o.
    pub o_weight: Range<usize>,
    /// (C,).
    pub o_bias: Range<usize>,
    /// (C,) / (C,): addnorm1.ln.
    pub ln1_weight: Range<usize>,
    /// (C,).
    pub ln1_bias: Range<usize>,
    /// (F, C) / (F,): ffn.dense1.
    pub fc1_weight: Range<usize>,
    /// (F,).
    pub fc1_bias: Range<usize>,
    /// (C, F) / (C,): ffn.dense2.
    pub fc2_weight: Range<usize>,
    /// (C,).
    pub fc2_bias: Range<usize>,
    /// (C,) / (C,): addnorm2.ln.
    pub ln2_weight: Range<usize>,
    /// (C,).
    pub ln2_bias: Range<usize>,
}

/// Ranges of every tensor of the classifier, for the model code.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranges {
    /// (1, P, C) positional table.
    pub wpe: Range<usize>,
    /// (V, C) token embedding.
    pub wte: Range<usize>,
    /// (S, C) segment embedding.
    pub wse: Range<usize>,
    /// (C,) embedding LayerNorm weight/bias (Hugging Face only).
    pub emb_ln: Option<(Range<usize>, Range<usize>)>,
    /// Encoder blocks.
    pub blocks: Vec<BlockRanges>,
    /// (C, C) / (C,): `hidden.0` (pooler Linear, followed by tanh).
    pub pool_weight: Range<usize>,
    /// (C,).
    pub pool_bias: Range<usize>,
    /// (K, C) / (K,): `output` (the new classifier layer).
    pub out_weight: Range<usize>,
    /// (K,).
    pub out_bias: Range<usize>,
}

/// The layout of the flat parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// All tensors in buffer order.
    pub entries: Vec<ParamEntry>,
    /// Total number of elements.
    pub total: usize,
    /// Named ranges for the model code.
    pub ranges: Ranges,
    index: HashMap<String, usize>,
}

/// The name of the embedding LayerNorm weight/bias (no d2l equivalent; HF maps here).
pub const EMB_LN_WEIGHT: &str = "encoder.embedding_norm.weight";
/// See [`EMB_LN_WEIGHT`].
pub const EMB_LN_BIAS: &str = "encoder.embedding_norm.bias";

impl ParamLayout {
    /// The layout for a configuration.
    pub fn new(cfg: &BertConfig) -> Self {
        let (c, f, k) = (cfg.hidden, cfg.ffn, cfg.num_labels);
        let mut entries = Vec::new();
        let mut total = 0usize;
        let mut push = |name: String, shape: Vec<usize>, trainable: bool| -> Range<usize> {
            let n: usize = shape.iter().product();
            let r = total..total + n;
            entries.push(ParamEntry { name, shape, offset: total, trainable });
            total += n;
            r
        };
        let wpe =
            push("encoder.pos_embedding".into(), vec![1, cfg.max_positions, c], cfg.train_pos_embedding);
        let wte = push("encoder.token_embedding.weight".into(), vec![cfg.vocab_size, c], true);
        let wse = push("encoder.segment_embedding.weight".into(), vec![cfg.type_vocab_size, c], true);
        let emb_ln = if cfg.embedding_layernorm {
            let w = push(EMB_LN_WEIGHT.into(), vec![c], true);
            let b = push(EMB_LN_BIAS.into(), vec![c], true);
            Some((w, b))
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = |s: &str| format!("encoder.blks.{l}.{s}");
            let wq = push(p("attention.W_q.weight"), vec![c, c], true);
            push(p("attention.W_k.weight"), vec![c, c], true);
            let wv = push(p("attention.W_v.weight"), vec![c, c], true);
            let bq = push(p("attention.W_q.bias"), vec![c], true);
            push(p("attention.W_k.bias"), vec![c], true);
            let bv = push(p("attention.W_v.bias"), vec![c], true);
            let o_weight = push(p("attention.W_o.weight"), vec![c, c], true);
            let o_bias = push(p("attention.W_o.bias"), vec![c], true);
            let ln1_weight = push(p("addnorm1.ln.weight"), vec![c], true);
            let ln1_bias = push(p("addnorm1.ln.bias"), vec![c], true);
            let fc1_weight = push(p("ffn.dense1.weight"), vec![f, c], true);
            let fc1_bias = push(p("ffn.dense1.bias"), vec![f], true);
            let fc2_weight = push(p("ffn.dense2.weight"), vec![c, f], true);
            let fc2_bias = push(p("ffn.dense2.bias"), vec![c], true);
            let ln2_weight = push(p("addnorm2.ln.weight"), vec![c], true);
            let ln2_bias = push(p("addnorm2.ln.bias"), vec![c], true);
            blocks.push(BlockRanges {
                qkv_weight: wq.start..wv.end,
                qkv_bias: bq.start..bv.end,
                o_weight,
                o_bias,
                ln1_weight,
                ln1_bias,
                fc1_weight,
                fc1_bias,
                fc2_weight,
                fc2_bias,
                ln2_weight,
                ln2_bias,
            });
        }
        let pool_weight = push("hidden.0.weight".into(), vec![c, c], true);
        let pool_bias = push("hidden.0.bias".into(), vec![c], true);
        let out_weight = push("output.weight".into(), vec![k, c], true);
        let out_bias = push("output.bias".into(), vec![k], true);
        let index = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        ParamLayout {
            entries,
            total,
            ranges: Ranges { wpe, wte, wse, emb_ln, blocks, pool_weight, pool_bias, out_weight, out_bias },
            index,
        }
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Maximal runs of trainable elements, in buffer order (for the optimizer).
    pub fn trainable_ranges(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for e in self.entries.iter().filter(|e| e.trainable) {
            let r = e.range();
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    /// Number of trainable elements.
    pub fn trainable_count(&self) -> usize {
        self.entries.iter().filter(|e| e.trainable).map(|e| e.numel()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_small_counts_match_d2l() {
        // d2l bert.small: 527,104 parameters per block; encoder alone 16,547,072 with V = 60005.
        let cfg = BertConfig::d2l_small(60005);
        let l = ParamLayout::new(&cfg);
        let block: usize =
            l.entries.iter().filter(|e| e.name.starts_with("encoder.blks.0.")).map(|e| e.numel()).sum();
        assert_eq!(block, 527_104);
        let enc: usize = l.entries.iter().filter(|e| e.name.starts_with("encoder.")).map(|e| e.numel()).sum();
        assert_eq!(enc, 16_547_072);
        assert_eq!(l.entries.len(), 3 + 16 * 2 + 4);
        // frozen positional table is excluded from the optimizer's ranges
        assert_eq!(l.trainable_count(), l.total - 512 * 256);
        assert_eq!(l.trainable_ranges(), vec![l.ranges.wte.start..l.total]);
        let b = &l.ranges.blocks[1];
        assert_eq!(b.qkv_weight.len(), 3 * 256 * 256);
        assert_eq!(
            l.get("encoder.blks.1.attention.W_k.weight").unwrap().offset,
            b.qkv_weight.start + 256 * 256
        );
    }
}
