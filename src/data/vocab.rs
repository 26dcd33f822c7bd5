//! Word vocabularies, as d2l's `Vocab`: an id per token, unknown tokens map to `<unk>`.
//!
//! Two ways in: [`Vocab::from_json_file`] reads a pretrained model's `vocab.json` verbatim (what the
//! chapter does), [`Vocab::build`] counts a corpus the way d2l 0.17.6's `Vocab.__init__` does.

use std::collections::HashMap;
use std::io::Write;

use rayon::prelude::*;
use std::path::{Path, PathBuf};

use crate::data::tokenizer::for_each_d2l_token;
use crate::error::{Error, Result};

/// The hash map of token lookups: foldhash's fixed-seed hasher (several times faster than SipHash
/// on short words, and deterministic).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// The unknown-token name.
pub const UNK: &str = "<unk>";

/// How [`Vocab::build`] orders tokens of equal frequency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TieOrder {
    /// First occurrence in the corpus first: d2l 0.17.x (`sorted(Counter.items(), key=count,
    /// reverse=True)` is stable and a `Counter` keeps insertion order).
    FirstSeen,
    /// Alphabetical (by code point): d2l 0.14-0.16 sorted by token before the stable sort by count.
    Alphabetical,
}

/// A vocabulary: `idx_to_token[id]` and its inverse.
///
/// If a token occurs more than once in `idx_to_token` (possible in a `vocab.json`, or with
/// repeated reserved tokens), `id(token)` gives its **last** index, as Python's dict
/// comprehension `{tok: i for i, tok in enumerate(idx_to_token)}` does; every index still
/// decodes to its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    idx_to_token: Vec<String>,
    token_to_idx: FastMap<String, u32>,
    unk: u32,
    /// Where the vocab came from (a file path or "built"), for error messages.
    source: String,
}

impl Vocab {
    /// A vocab whose ids are the positions in `tokens`. `<unk>` must be among them.
    pub fn from_tokens(tokens: Vec<String>) -> Result<Vocab> {
        Self::from_tokens_named(tokens, "token list".to_string())
    }

    /// A vocab whose ids are the positions in `tokens`, with `unk` as its unknown token (it must be
    /// among them): Hugging Face's `vocab.txt` calls it `[UNK]`. `source` names it in messages.
    pub fn from_tokens_with_unk(tokens: Vec<String>, unk: &str, source: impl Into<String>) -> Result<Vocab> {
        Self::from_tokens_unk(tokens, unk, source.into())
    }

    fn from_tokens_named(idx_to_token: Vec<String>, source: String) -> Result<Vocab> {
        Self::from_tokens_unk(idx_to_token, UNK, source)
    }

    fn from_tokens_unk(idx_to_token: Vec<String>, unk_token: &str, source: String) -> Result<Vocab> {
        if idx_to_token.is_empty() {
            return Err(Error::msg(format!("vocab from {source} is empty: it needs at least `{unk_token}`")));
        }
        if idx_to_token.len() > u32::MAX as usize {
            return Err(Error::msg(format!(
                "vocab from {source} has {} tokens, more than u32 ids",
                idx_to_token.len()
            )));
        }
        let token_to_idx: FastMap<String, u32> =
            idx_to_token.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let unk = *token_to_idx.get(unk_token).ok_or_else(|| {
            Error::msg(format!(
                "vocab from {source} has no `{unk_token}` token ({} tokens); unknown words need it",
                idx_to_token.len()
            ))
        })?;
        Ok(Vocab { idx_to_token, token_to_idx, unk, source })
    }

    /// Reads a d2l `vocab.json`: a JSON list of strings, index = id.
    ///
    /// Errors: unreadable file, not a JSON list of strings (naming the first bad element), empty,
    /// or no `<unk>`. Duplicate tokens are accepted (the last index wins in lookups, as in d2l).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Vocab> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_bytes(&bytes, path)
    }

    /// [`Vocab::from_json_file`] on bytes already in memory; `path` labels errors.
    pub fn from_json_bytes(bytes: &[u8], path: &Path) -> Result<Vocab> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::parse(path, e.line(), format!("not valid JSON: {e}")))?;
        let list = value.as_array().ok_or_else(|| {
            Error::parse(path, 1, "a vocab.json must be a JSON list of token strings (index = id)")
        })?;
        let mut tokens = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            match v.as_str() {
                Some(s) => tokens.push(s.to_owned()),
                None => {
                    return Err(Error::parse(
                        path,
                        1,
                        format!("element {i} of the token list is {v}, not a string"),
                    ))
                }
            }
        }
        Self::from_tokens_named(tokens, path.display().to_string())
    }

    /// Writes the vocab as a JSON list of strings (d2l's `vocab.json` format), atomically: a
    /// temporary file in the same directory, fsync, then rename.
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = serde_json::to_vec(&self.idx_to_token)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        let tmp = temp_sibling(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }

    /// Builds a vocab from tokenised sentences as d2l 0.17.6's `Vocab(tokens, min_freq,
    /// reserved_tokens)`: `<unk>` (id 0), then `reserved` in order, then every token with count
    /// ≥ `min_freq` by descending count, ties in first-seen order, skipping tokens already present.
    pub fn build<'a>(
        sentences: impl IntoIterator<Item = &'a [String]>,
        min_freq: usize,
        reserved: &[&str],
    ) -> Vocab {
        Self::build_with(sentences, min_freq, reserved, TieOrder::FirstSeen)
    }

    /// [`Vocab::build`] with a choice of tie order (see [`TieOrder`]).
    pub fn build_with<'a>(
        sentences: impl IntoIterator<Item = &'a [String]>,
        min_freq: usize,
        reserved: &[&str],
        ties: TieOrder,
    ) -> Vocab {
        // Counter: counts plus first-seen order.
        let mut counts: FastMap<&'a str, (usize, usize)> = FastMap::default();
        for sentence in sentences {
            for tok in sentence {
                let next = counts.len();
                counts.entry(tok.as_str()).or_insert((0, next)).0 += 1;
            }
        }
        let mut freqs: Vec<(&str, usize, usize)> =
            counts.into_iter().map(|(t, (c, first))| (t, c, first)).collect();
        freqs.sort_unstable_by_key(|&(_, _, first)| first);
        Self::from_counts(freqs.into_iter().map(|(t, c, _)| (t, c)), min_freq, reserved, ties)
    }

    /// d2l's `Vocab(d2l.tokenize(sentences, 'word'), min_freq, reserved_tokens)` after the
    /// chapter's lower-casing, straight from the text: each sentence is lower-cased and split as
    /// [`crate::data::tokenizer::d2l_tokenize`] does, counted in parallel chunks and merged in
    /// order, so the vocabulary equals [`Vocab::build`] on the tokenised sentences, without
    /// materialising a string per token.
    pub fn build_from_text<S: AsRef<str> + Sync>(
        sentences: &[S],
        min_freq: usize,
        reserved: &[&str],
    ) -> Vocab {
        let chunk = sentences.len().div_ceil(4 * rayon::current_num_threads().max(1)).clamp(1, 1 << 14);
        let parts: Vec<Vec<(String, usize)>> = sentences
            .par_chunks(chunk)
            .map(|part| {
                // counts, and the tokens in first-seen order (as indices into `seen`)
                let mut index: FastMap<String, usize> = FastMap::default();
                let mut seen: Vec<(String, usize)> = Vec::new();
                let mut buf = String::new();
                for s in part {
                    for_each_d2l_token(s.as_ref(), &mut buf, |tok| match index.get(tok) {
                        Some(&i) => seen[i].1 += 1,
                        None => {
                            index.insert(tok.to_owned(), seen.len());
                            seen.push((tok.to_owned(), 1));
                        }
                    });
                }
                seen
            })
            .collect();
        let mut index: FastMap<String, usize> = FastMap::default();
        let mut merged: Vec<(String, usize)> = Vec::new();
        for part in parts {
            for (tok, c) in part {
                match index.get(&tok) {
                    Some(&i) => merged[i].1 += c,
                    None => {
                        index.insert(tok.clone(), merged.len());
                        merged.push((tok, c));
                    }
                }
            }
        }
        Self::from_counts(
            merged.iter().map(|(t, c)| (t.as_str(), *c)),
            min_freq,
            reserved,
            TieOrder::FirstSeen,
        )
    }

    /// The vocabulary of tokens with their counts, given in first-seen order: `<unk>`, `reserved`,
    /// then the tokens with count ≥ `min_freq` by descending count, ties as `ties` says.
    fn from_counts<'a>(
        counts: impl Iterator<Item = (&'a str, usize)>,
        min_freq: usize,
        reserved: &[&str],
        ties: TieOrder,
    ) -> Vocab {
        let mut freqs: Vec<(&str, usize, usize)> =
            counts.enumerate().map(|(first, (t, c))| (t, c, first)).collect();
        match ties {
            TieOrder::FirstSeen => freqs.sort_by_key(|&(_, c, first)| (std::cmp::Reverse(c), first)),
            TieOrder::Alphabetical => freqs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0))),
        }
        let mut idx_to_token: Vec<String> =
            std::iter::once(UNK).chain(reserved.iter().copied()).map(String::from).collect();
        let mut token_to_idx: FastMap<String, u32> =
            idx_to_token.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        for (tok, count, _) in freqs {
            if count < min_freq {
                break;
            }
            if !token_to_idx.contains_key(tok) {
                token_to_idx.insert(tok.to_owned(), idx_to_token.len() as u32);
                idx_to_token.push(tok.to_owned());
            }
        }
        // d2l 0.17 fixes unk = 0 even if a reserved token repeats `<unk>`.
        Vocab { idx_to_token, token_to_idx, unk: 0, source: "built vocab".to_string() }
    }

    /// Number of ids (`len(idx_to_token)`).
    pub fn len(&self) -> usize {
        self.idx_to_token.len()
    }

    /// Whether the vocab has no tokens (never true for a constructed vocab).
    pub fn is_empty(&self) -> bool {
        self.idx_to_token.is_empty()
    }

    /// The id of `token`, or the `<unk>` id (d2l `vocab[token]`).
    pub fn id(&self, token: &str) -> u32 {
        self.token_to_idx.get(token).copied().unwrap_or(self.unk)
    }

    /// The id of `token` if the vocab has it (no `<unk>` fallback).
    pub fn get(&self, token: &str) -> Option<u32> {
        self.token_to_idx.get(token).copied()
    }

    /// Appends the ids of d2l's tokens of `s` ([`crate::data::tokenizer::d2l_tokenize`], unknown
    /// words → `<unk>`) to `out`; `buf` is scratch space reused between calls.
    pub fn push_d2l_ids(&self, s: &str, out: &mut Vec<u32>, buf: &mut String) {
        for_each_d2l_token(s, buf, |tok| out.push(self.id(tok)));
    }

    /// Ids of several tokens (d2l `vocab[list]`).
    pub fn ids<S: AsRef<str>>(&self, tokens: &[S]) -> Vec<u32> {
        tokens.iter().map(|t| self.id(t.as_ref())).collect()
    }

    /// The token of `id`, if it is in range (d2l `vocab.to_tokens`).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.idx_to_token.get(id as usize).map(String::as_str)
    }

    /// The id of a token the model cannot work without (`<cls>`, `<sep>`, `<pad>`): unlike
    /// [`Vocab::id`] it does not fall back to `<unk>`, and errors naming the token and the vocab.
    pub fn special(&self, token: &str) -> Result<u32> {
        self.token_to_idx.get(token).copied().ok_or_else(|| {
            Error::msg(format!(
                "vocab {} has no `{token}` token ({} tokens); use the vocab.json that came with the model",
                self.source,
                self.len()
            ))
        })
    }

    /// The `<unk>` id.
    pub fn unk(&self) -> u32 {
        self.unk
    }

    /// All tokens in id order.
    pub fn tokens(&self) -> &[String] {
        &self.idx_to_token
    }

    /// Where this vocab came from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// `<path>.tmp-<pid>` next to `path`, for atomic writes.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn lookups_and_duplicates() {
        let v = Vocab::from_tokens(s(&["<unk>", "a", "b", "a"])).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v.id("a"), 3);
        assert_eq!(v.id("zzz"), 0);
        assert_eq!(v.token(1), Some("a"));
        assert_eq!(v.token(9), None);
        assert!(v.special("<cls>").unwrap_err().to_string().contains("<cls>"));
        assert!(Vocab::from_tokens(s(&["a"])).is_err());
        assert!(Vocab::from_tokens(vec![]).is_err());
    }

    #[test]
    fn unk_resolved_by_name() {
        let v = Vocab::from_tokens(s(&["<pad>", "<unk>", "x"])).unwrap();
        assert_eq!(v.unk(), 1);
        assert_eq!(v.id("nope"), 1);
    }
}
