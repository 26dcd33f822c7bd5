//! From token lists to model input: truncate a pair, build `<cls> p <sep> h <sep>` with segment
//! ids (d2l's `SNLIBERTDataset`), pack sequences into unpadded batches, and order batches per epoch.

use rayon::prelude::*;

use crate::data::snli::Dataset;
use crate::data::tokenizer::d2l_tokenize;
use crate::data::vocab::Vocab;
use crate::data::wordpiece::{truncate_longest_first, WordPiece};
use crate::error::{Error, Result};
use crate::rng::HostRng;

/// The smallest `max_len` accepted: `<cls>`, `<sep>`, `<sep>` plus one token of each sentence.
pub const MIN_MAX_LEN: usize = 5;

/// How to shorten a pair that does not fit in `max_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncate {
    /// d2l's rule: drop the last token of the longer sentence (the hypothesis on ties) until the
    /// pair fits.
    Longest,
    /// d2l's exercise 2: keep each sentence in proportion to its original length.
    Ratio,
}

/// Shortens `p` and `h` (by dropping tokens at their ends) until `p.len() + h.len() <=
/// max_len - 3`, the room left by `<cls>`, `<sep>`, `<sep>`.
///
/// - [`Truncate::Longest`] is d2l's `_truncate_pair_of_tokens`: while the pair is too long, pop
///   the premise if it is strictly longer, else the hypothesis.
/// - [`Truncate::Ratio`]: with budget `B = max_len - 3` and lengths `lp + lh > B`, the premise
///   keeps `kp = floor((2·B·lp + total) / (2·total))` tokens (`B·lp/total` rounded half up) and the
///   hypothesis `B - kp`; when both are non-empty and `B >= 2`, `kp` is clamped to `[1, B-1]` so
///   neither becomes empty. The result never lengthens a sentence. With `B < 2` it falls back to
///   `Longest`.
pub fn truncate_pair<T>(p: &mut Vec<T>, h: &mut Vec<T>, max_len: usize, how: Truncate) {
    let budget = max_len.saturating_sub(3);
    let (lp, lh) = (p.len(), h.len());
    let total = lp + lh;
    if total <= budget {
        return;
    }
    match how {
        Truncate::Ratio if budget >= 2 => {
            let mut kp = (2 * budget * lp + total) / (2 * total);
            if lp >= 1 && lh >= 1 {
                kp = kp.clamp(1, budget - 1);
            }
            let kp = kp.min(lp);
            let kh = (budget - kp).min(lh);
            p.truncate(kp);
            h.truncate(kh);
        }
        _ => {
            // Pop one at a time exactly as d2l does; equivalent closed form would also work but
            // this is the specification.
            while p.len() + h.len() > budget {
                if p.len() > h.len() {
                    p.pop();
                } else {
                    h.pop();
                }
            }
        }
    }
}

/// One encoded pair: `ids = [<cls>] p [<sep>] h [<sep>]`, `segments` 0 for `<cls>`, p and the
/// first `<sep>`, 1 for h and the last `<sep>`. Length L = `ids.len()` = `segments.len()` ≤ max_len.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, (L,).
    pub ids: Vec<u32>,
    /// Segment ids in {0, 1}, (L,).
    pub segments: Vec<u8>,
    /// Label id (see [`crate::data::snli::LABELS`]).
    pub label: u8,
}

/// The special-token ids an encoding needs, looked up once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    /// `<cls>`.
    pub cls: u32,
    /// `<sep>`.
    pub sep: u32,
}

impl SpecialIds {
    /// Looks up `<cls>` and `<sep>`, erroring if either is missing (d2l would silently use `<unk>`).
    pub fn from_vocab(vocab: &Vocab) -> Result<SpecialIds> {
        Ok(SpecialIds { cls: vocab.special("<cls>")?, sep: vocab.special("<sep>")? })
    }
}

fn check_max_len(max_len: usize) -> Result<()> {
    if max_len < MIN_MAX_LEN {
        return Err(Error::usage(format!(
            "max_len {max_len} is too small: a pair needs <cls>, <sep>, <sep> and at least one token of each \
             sentence, so max_len must be >= {MIN_MAX_LEN} (d2l uses 128)"
        )));
    }
    Ok(())
}

/// Truncates a pair of id lists and assembles it (no vocabulary needed). `label` is stored as is.
pub fn encode_ids(
    mut p: Vec<u32>,
    mut h: Vec<u32>,
    sp: SpecialIds,
    max_len: usize,
    how: Truncate,
    label: u8,
) -> Result<Encoded> {
    check_max_len(max_len)?;
    truncate_pair(&mut p, &mut h, max_len, how);
    Ok(assemble(&p, &h, sp, label))
}

/// `[cls] p [sep] h [sep]` with its segments.
fn assemble(p: &[u32], h: &[u32], sp: SpecialIds, label: u8) -> Encoded {
    let mut ids = Vec::with_capacity(p.len() + h.len() + 3);
    ids.push(sp.cls);
    ids.extend_from_slice(p);
    ids.push(sp.sep);
    ids.extend_from_slice(h);
    ids.push(sp.sep);
    let mut segments = vec![0u8; p.len() + 2];
    segments.resize(ids.len(), 1);
    Encoded { ids, segments, label }
}

/// How sentences become token ids: d2l's words (lower-case, whitespace split, word vocabulary,
/// `<cls>`/`<sep>`) or BERT WordPiece (`[CLS]`/`[SEP]`, see [`crate::data::wordpiece`]).
#[derive(Clone, Debug)]
pub enum TextEncoder<'a> {
    /// d2l: [`d2l_tokenize`] then the word vocabulary (unknown words → `<unk>`).
    D2l(&'a Vocab),
    /// Hugging Face BERT WordPiece.
    WordPiece(WordPiece<'a>),
}

impl<'a> From<&'a Vocab> for TextEncoder<'a> {
    fn from(vocab: &'a Vocab) -> Self {
        TextEncoder::D2l(vocab)
    }
}

/// How text becomes tokens (a model's configuration says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// d2l: Python `str.lower()` then `str.split()`, a word vocabulary (`vocab.json`).
    D2lWords,
    /// BERT WordPiece (`vocab.txt`).
    WordPiece,
}

impl<'a> TextEncoder<'a> {
    /// The encoder of kind `kind` over `vocab`; `lowercase` applies to WordPiece (d2l always
    /// lower-cases).
    pub fn new(kind: TokenizerKind, lowercase: bool, vocab: &'a Vocab) -> Result<Self> {
        Ok(match kind {
            TokenizerKind::D2lWords => TextEncoder::D2l(vocab),
            TokenizerKind::WordPiece => TextEncoder::WordPiece(WordPiece::new(vocab, lowercase)?),
        })
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &'a Vocab {
        match self {
            TextEncoder::D2l(v) => v,
            TextEncoder::WordPiece(w) => w.vocab(),
        }
    }

    /// The ids of the class and separator tokens.
    pub fn special_ids(&self) -> Result<SpecialIds> {
        match self {
            TextEncoder::D2l(v) => SpecialIds::from_vocab(v),
            TextEncoder::WordPiece(w) => {
                let (cls, sep) = w.cls_sep();
                Ok(SpecialIds { cls, sep })
            }
        }
    }

    /// The token ids of one sentence (no class or separator tokens).
    pub fn sentence_ids(&self, s: &str) -> Vec<u32> {
        match self {
            TextEncoder::D2l(v) => v.ids(&d2l_tokenize(s)),
            TextEncoder::WordPiece(w) => w.encode(s),
        }
    }

    /// [`TextEncoder::sentence_ids`] appended to `ids`, with reused scratch space.
    fn push_sentence_ids(&self, s: &str, ids: &mut Vec<u32>, sc: &mut TextScratch) {
        match self {
            TextEncoder::D2l(v) => v.push_d2l_ids(s, ids, &mut sc.text),
            TextEncoder::WordPiece(w) => w.encode_into(s, ids, &mut sc.text, &mut sc.piece),
        }
    }

    /// Truncates the pair as this encoder's origin does: d2l's rule for d2l words; for WordPiece,
    /// [`Truncate::Longest`] is Hugging Face's `longest_first` ([`truncate_longest_first`]: on ties
    /// the *second* sentence keeps the odd token, unlike d2l) and [`Truncate::Ratio`] is as for d2l.
    pub fn truncate(&self, p: &mut Vec<u32>, h: &mut Vec<u32>, max_len: usize, how: Truncate) {
        match (self, how) {
            (TextEncoder::WordPiece(_), Truncate::Longest) => {
                truncate_longest_first(p, h, max_len.saturating_sub(3))
            }
            _ => truncate_pair(p, h, max_len, how),
        }
    }

    /// Encodes one pair of sentences (see [`Encoded`]).
    pub fn encode_pair(
        &self,
        premise: &str,
        hypothesis: &str,
        max_len: usize,
        how: Truncate,
        label: u8,
    ) -> Result<Encoded> {
        check_max_len(max_len)?;
        let sp = self.special_ids()?;
        Ok(self.encode_one(premise, hypothesis, sp, max_len, how, label, &mut EncodeScratch::default()).0)
    }

    /// One pair (`max_len` already checked) and whether it was truncated. With WordPiece an empty
    /// hypothesis is no second sentence, as in transformers: `[CLS] p [SEP]`, all segments 0.
    ///
    /// The ids go straight into one reused buffer, `[cls] p [sep] h`; only a pair that does not
    /// fit is taken apart and truncated.
    #[allow(clippy::too_many_arguments)]
    fn encode_one(
        &self,
        premise: &str,
        hypothesis: &str,
        sp: SpecialIds,
        max_len: usize,
        how: Truncate,
        label: u8,
        sc: &mut EncodeScratch,
    ) -> (Encoded, bool) {
        let ids = &mut sc.ids;
        ids.clear();
        ids.push(sp.cls);
        self.push_sentence_ids(premise, ids, &mut sc.text);
        let lp = ids.len() - 1;
        if hypothesis.is_empty() && matches!(self, TextEncoder::WordPiece(_)) {
            let cut = lp > max_len - 2;
            ids.truncate(max_len - 1);
            ids.push(sp.sep);
            return (Encoded { segments: vec![0; ids.len()], ids: ids.to_vec(), label }, cut);
        }
        ids.push(sp.sep);
        self.push_sentence_ids(hypothesis, ids, &mut sc.text);
        let lh = ids.len() - lp - 2;
        if lp + lh > max_len - 3 {
            let mut p = ids[1..1 + lp].to_vec();
            let mut h = ids[lp + 2..].to_vec();
            self.truncate(&mut p, &mut h, max_len, how);
            return (assemble(&p, &h, sp, label), true);
        }
        ids.push(sp.sep);
        let mut segments = vec![0u8; lp + 2];
        segments.resize(ids.len(), 1);
        (Encoded { ids: ids.to_vec(), segments, label }, false)
    }
}

/// Scratch space of the tokenizers, reused between sentences.
#[derive(Default)]
struct TextScratch {
    /// The lower-cased (d2l) or normalised (WordPiece) sentence.
    text: String,
    /// A WordPiece continuation being looked up.
    piece: String,
}

/// Scratch space of [`TextEncoder::encode_one`], one per worker.
#[derive(Default)]
struct EncodeScratch {
    ids: Vec<u32>,
    text: TextScratch,
}

/// Encodes one tokenised pair with `vocab` (unknown words → `<unk>`). The returned `label` is 0:
/// set it if the pair has one. Errors if `<cls>`/`<sep>` are missing or `max_len` < 5.
pub fn encode_pair(
    p_tokens: &[String],
    h_tokens: &[String],
    vocab: &Vocab,
    max_len: usize,
    how: Truncate,
) -> Result<Encoded> {
    encode_ids(vocab.ids(p_tokens), vocab.ids(h_tokens), SpecialIds::from_vocab(vocab)?, max_len, how, 0)
}

/// What [`encode_dataset`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeStats {
    /// Pairs that had to be truncated.
    pub truncated: usize,
    /// Pairs encoded.
    pub n: usize,
    /// Mean encoded length (with `<cls>`/`<sep>`); 0 for an empty dataset.
    pub mean_len: f64,
    /// Longest encoded length.
    pub max_len_seen: usize,
}

/// Tokenises (d2l: lower-case + whitespace split) and encodes every example, in parallel and in
/// order, as d2l's `SNLIBERTDataset` does (without padding).
pub fn encode_dataset(
    ds: &Dataset,
    vocab: &Vocab,
    max_len: usize,
    how: Truncate,
) -> Result<(Vec<Encoded>, EncodeStats)> {
    encode_dataset_with(ds, &TextEncoder::D2l(vocab), max_len, how)
}

/// [`encode_dataset`] with any [`TextEncoder`] (d2l words or WordPiece).
pub fn encode_dataset_with(
    ds: &Dataset,
    text: &TextEncoder<'_>,
    max_len: usize,
    how: Truncate,
) -> Result<(Vec<Encoded>, EncodeStats)> {
    check_max_len(max_len)?;
    let sp = text.special_ids()?;
    let out: Vec<(Encoded, bool)> = ds
        .examples
        .par_iter()
        .map_init(EncodeScratch::default, |sc, ex| {
            text.encode_one(&ex.premise, &ex.hypothesis, sp, max_len, how, ex.label, sc)
        })
        .collect();
    let n = out.len();
    let truncated = out.iter().filter(|(_, cut)| *cut).count();
    let total: usize = out.iter().map(|(e, _)| e.ids.len()).sum();
    let max_len_seen = out.iter().map(|(e, _)| e.ids.len()).max().unwrap_or(0);
    let mean_len = if n == 0 { 0.0 } else { total as f64 / n as f64 };
    let encoded = out.into_iter().map(|(e, _)| e).collect();
    Ok((encoded, EncodeStats { truncated, n, mean_len, max_len_seen }))
}

/// A packed (unpadded) batch of B sequences with T = Σ lens tokens in total.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, (T,): the sequences one after another.
    pub tokens: Vec<i32>,
    /// Segment ids, (T,).
    pub segments: Vec<i32>,
    /// Position of each token inside its sequence, (T,): 0..len per sequence.
    pub positions: Vec<i32>,
    /// Sequence lengths (d2l's `valid_lens`), (B,).
    pub lens: Vec<usize>,
    /// Labels, (B,).
    pub labels: Vec<i32>,
}

impl Batch {
    /// The same batch with `pad` more tokens after its sequences (token 0, segment 0, positions
    /// 0..pad): the padding sequence of `BatchLayout::padded`, which is no example (its lengths
    /// and labels are this batch's). `pad` must not exceed the positional table.
    pub fn with_padding_sequence(&self, pad: usize) -> Batch {
        let mut b = self.clone();
        b.tokens.resize(b.tokens.len() + pad, 0);
        b.segments.resize(b.segments.len() + pad, 0);
        b.positions.extend(0..pad as i32);
        b
    }

    /// Packs `items` in order.
    pub fn from_encoded(items: &[&Encoded]) -> Batch {
        let t: usize = items.iter().map(|e| e.ids.len()).sum();
        let mut b = Batch {
            tokens: Vec::with_capacity(t),
            segments: Vec::with_capacity(t),
            positions: Vec::with_capacity(t),
            lens: Vec::with_capacity(items.len()),
            labels: Vec::with_capacity(items.len()),
        };
        for e in items {
            b.tokens.extend(e.ids.iter().map(|&x| x as i32));
            b.segments.extend(e.segments.iter().map(|&x| x as i32));
            b.positions.extend(0..e.ids.len() as i32);
            b.lens.push(e.ids.len());
            b.labels.push(e.label as i32);
        }
        b
    }

    /// Total tokens T.
    pub fn t(&self) -> usize {
        self.tokens.len()
    }

    /// Sequences B.
    pub fn b(&self) -> usize {
        self.lens.len()
    }

    /// Sequence start offsets, (B+1,): `cu_seqlens[i]..cu_seqlens[i+1]` is sequence i.
    pub fn cu_seqlens(&self) -> Vec<i32> {
        let mut cu = Vec::with_capacity(self.lens.len() + 1);
        let mut acc = 0i32;
        cu.push(0);
        for &l in &self.lens {
            acc += l as i32;
            cu.push(acc);
        }
        cu
    }

    /// d2l's padded layout: tokens (B·max_len,) padded with `pad_id`, segments (B·max_len,) padded
    /// with 0, and valid lengths (B,). A sequence longer than `max_len` (only if the items were
    /// encoded with a larger `max_len`) is cut to `max_len` and its valid length clamped.
    pub fn padded(&self, max_len: usize, pad_id: i32) -> (Vec<i32>, Vec<i32>, Vec<usize>) {
        let b = self.b();
        let mut tokens = vec![pad_id; b * max_len];
        let mut segments = vec![0; b * max_len];
        let mut valid = Vec::with_capacity(b);
        let mut start = 0;
        for (i, &len) in self.lens.iter().enumerate() {
            let l = len.min(max_len);
            tokens[i * max_len..i * max_len + l].copy_from_slice(&self.tokens[start..start + l]);
            segments[i * max_len..i * max_len + l].copy_from_slice(&self.segments[start..start + l]);
            valid.push(l);
            start += len;
        }
        (tokens, segments, valid)
    }
}

/// Salt mixed into the seed for shuffling, so the shuffle stream differs from other uses of the
/// same seed.
const SHUFFLE_SALT: u64 = 0x5348_5546_464c_4521; // "SHUFFLE!"

/// The batches of one epoch, as index lists into a dataset of `n` items, like a PyTorch
/// `DataLoader(batch_size, shuffle, drop_last=False)`: the last batch may be short.
///
/// With `shuffle` the order is a Fisher-Yates permutation from `HostRng::new(seed ^ salt,
/// stream = epoch folded to 32 bits)`, so each (seed, epoch) gives the same batches on every run.
/// `batch_size` 0 is treated as 1.
pub fn epoch_batches(n: usize, batch_size: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let stream = (epoch as u32) ^ ((epoch >> 32) as u32);
        HostRng::new(seed ^ SHUFFLE_SALT, stream).shuffle(&mut order);
    }
    order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_packing() {
        let sp = SpecialIds { cls: 3, sep: 4 };
        let e = encode_ids(vec![10, 11], vec![12], sp, 128, Truncate::Longest, 2).unwrap();
        assert_eq!(e.ids, vec![3, 10, 11, 4, 12, 4]);
        assert_eq!(e.segments, vec![0, 0, 0, 0, 1, 1]);
        let f = encode_ids(vec![], vec![], sp, 128, Truncate::Longest, 1).unwrap();
        assert_eq!(f.ids, vec![3, 4, 4]);
        assert_eq!(f.segments, vec![0, 0, 1]);
        let b = Batch::from_encoded(&[&e, &f]);
        assert_eq!((b.t(), b.b()), (9, 2));
        assert_eq!(b.positions, vec![0, 1, 2, 3, 4, 5, 0, 1, 2]);
        assert_eq!(b.cu_seqlens(), vec![0, 6, 9]);
        assert_eq!(b.labels, vec![2, 1]);
        let (t, s, v) = b.padded(7, 1);
        assert_eq!(t, vec![3, 10, 11, 4, 12, 4, 1, 3, 4, 4, 1, 1, 1, 1]);
        assert_eq!(s, vec![0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(v, vec![6, 3]);
        assert!(encode_ids(vec![1], vec![2], sp, 4, Truncate::Longest, 0).is_err());
    }

    #[test]
    fn epochs() {
        let a = epoch_batches(10, 4, false, 0, 0);
        assert_eq!(a, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        let s0 = epoch_batches(1000, 512, true, 7, 0);
        assert_eq!(s0.iter().map(Vec::len).collect::<Vec<_>>(), vec![512, 488]);
        assert_eq!(s0, epoch_batches(1000, 512, true, 7, 0));
        assert_ne!(s0, epoch_batches(1000, 512, true, 7, 1));
        assert_ne!(s0, epoch_batches(1000, 512, true, 8, 0));
        let mut all: Vec<usize> = s0.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert!(epoch_batches(0, 4, true, 1, 1).is_empty());
    }
}
