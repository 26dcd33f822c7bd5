//! BERT's WordPiece tokenisation, written here and checked id for id against Hugging Face's
//! fast tokenizer (`tokenizers`, what `transformers.AutoTokenizer` loads for BERT models).
//!
//! A sentence goes through four steps, exactly as in `tokenizers`:
//!
//! 1. **special tokens**: `[CLS]`, `[SEP]`, `[PAD]`, `[MASK]` and `[UNK]` written in the raw text
//!    are matched first (case-sensitive, leftmost) and become their own ids, as transformers does;
//! 2. **normalise** (`BertNormalizer`): delete NUL, U+FFFD and control/format/private-use
//!    characters but tab, LF and CR; turn whitespace into a space; put spaces around CJK
//!    ideographs; when lower-casing, also decompose (NFD), drop nonspacing marks (accents) and
//!    lower-case each character (`char::to_lowercase`, so `Σ` is always `σ`);
//! 3. **pre-tokenise** (`BertPreTokenizer`): split on whitespace, and split every punctuation
//!    character (ASCII 33–47, 58–64, 91–96, 123–126 or Unicode `P*`) off as its own word;
//! 4. **WordPiece**: greedy longest match from the left, continuations prefixed with `##`; a word
//!    longer than 100 characters, or one that cannot be covered, becomes `[UNK]`.
//!
//! A pair is `[CLS] a [SEP] b [SEP]` with token types 0 for `[CLS] a [SEP]` and 1 for `b [SEP]`,
//! truncated with `longest_first` ([`truncate_longest_first`]).
//!
//! The character classes are tables read off `tokenizers` itself (`wordpiece/tables.rs`, made by
//! `scripts/make_hf_fixtures.py`), since its Unicode data is older than Rust's or Python's.

mod tables;

use crate::data::vocab::{temp_sibling, Vocab};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

/// The unknown token of BERT vocabularies.
pub const UNK_TOKEN: &str = "[UNK]";
/// The classification token.
pub const CLS_TOKEN: &str = "[CLS]";
/// The separator token.
pub const SEP_TOKEN: &str = "[SEP]";
/// The special tokens recognised in raw text (the ones transformers registers for BERT).
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// Words longer than this many characters become `[UNK]` (`max_input_chars_per_word`).
pub const MAX_INPUT_CHARS_PER_WORD: usize = 100;
/// The continuation prefix.
pub const CONTINUATION: &str = "##";

fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    let i = table.partition_point(|&(first, _)| first <= c);
    i > 0 && c <= table[i - 1].1
}

/// Whether `clean_text` deletes `c` (NUL, U+FFFD, control, format and private-use characters,
/// but not tab, LF, CR).
pub fn is_deleted(c: char) -> bool {
    in_table(tables::DELETED, c)
}

/// Whether `clean_text` turns `c` into a space (tab, LF, CR and the Unicode spaces).
pub fn is_space(c: char) -> bool {
    in_table(tables::SPACE, c)
}

/// Whether the pre-tokenizer splits `c` off as punctuation.
pub fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return matches!(c as u8, 33..=47 | 58..=64 | 91..=96 | 123..=126);
    }
    in_table(tables::PUNCT, c)
}

/// Whether `c` is a nonspacing mark that accent stripping drops (after NFD).
pub fn is_nonspacing_mark(c: char) -> bool {
    in_table(tables::NONSPACING_MARKS, c)
}

/// Whether `c` is a CJK ideograph that gets spaces around it (the CJK Unified Ideographs blocks
/// and extensions A–E, and the compatibility ideographs; not Hangul, Hiragana or Katakana).
pub fn is_cjk(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// `BertNormalizer` with `clean_text` and CJK spacing on and `strip_accents` following
/// `lowercase` (the configuration of every BERT tokenizer): see the module docs.
pub fn normalize(text: &str, lowercase: bool) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    normalize_into(text, lowercase, &mut out);
    out
}

/// [`normalize`] into `out` (cleared first), reusing its allocation.
pub fn normalize_into(text: &str, lowercase: bool, out: &mut String) {
    out.clear();
    if text.is_ascii() {
        // fast path, byte by byte: ASCII controls are deleted (tab, LF, CR are spaces)
        let mut bytes = std::mem::take(out).into_bytes();
        bytes.extend(text.bytes().filter_map(|b| match b {
            b'\t' | b'\n' | b'\r' | b' ' => Some(b' '),
            0..=0x1f | 0x7f => None,
            _ => Some(if lowercase { b.to_ascii_lowercase() } else { b }),
        }));
        // ASCII in, ASCII out
        *out = String::from_utf8(bytes).unwrap_or_default();
        return;
    }
    let mut cleaned = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_ascii() {
            // fast path: ASCII controls are deleted (tab, LF, CR are spaces)
            match c {
                '\t' | '\n' | '\r' | ' ' => cleaned.push(' '),
                '\0'..='\x1f' | '\x7f' => {}
                _ => cleaned.push(if lowercase { c.to_ascii_lowercase() } else { c }),
            }
        } else if is_deleted(c) {
        } else if is_space(c) {
            cleaned.push(' ');
        } else if is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    if !lowercase || cleaned.is_ascii() {
        *out = cleaned;
        return;
    }
    // NFD runs between the characters `tokenizers` does not decompose (all are starters, so
    // canonical reordering never crosses them)
    let mut run = 0;
    for (i, c) in cleaned.char_indices() {
        if in_table(NFD_NEWER_THAN_TOKENIZERS, c) {
            strip_and_lower(&cleaned[run..i], out);
            out.extend(c.to_lowercase());
            run = i + c.len_utf8();
        }
    }
    strip_and_lower(&cleaned[run..], out);
}

/// NFD, drop nonspacing marks, lower-case: appends to `out`.
fn strip_and_lower(run: &str, out: &mut String) {
    for c in run.nfd().filter(|&c| !is_nonspacing_mark(c)) {
        out.extend(c.to_lowercase());
    }
}

/// Characters with a canonical decomposition in `unicode-normalization` (Unicode 16) that
/// `tokenizers`' older tables do not decompose (Dives Akuru, Todhri, Tulu-Tigalari, Gurung Khema,
/// Kirat Rai): left whole, as `tokenizers` leaves them. `tests/wordpiece.rs` checks every code
/// point, so a newer table shows up there.
const NFD_NEWER_THAN_TOKENIZERS: &[(u32, u32)] = &[
    (0x105C9, 0x105C9),
    (0x105E4, 0x105E4),
    (0x11383, 0x11383),
    (0x11385, 0x11385),
    (0x1138E, 0x1138E),
    (0x11391, 0x11391),
    (0x113C5, 0x113C5),
    (0x113C7, 0x113C8),
    (0x11938, 0x11938),
    (0x16121, 0x16128),
    (0x16D68, 0x16D6A),
];

/// `BertPreTokenizer`: the words of a normalised text, split on whitespace and with every
/// punctuation character on its own.
pub fn pre_tokenize(normalized: &str) -> Vec<&str> {
    let mut words = Vec::new();
    for_each_word(normalized, |w| words.push(w));
    words
}

/// Calls `f` on each word of [`pre_tokenize`], in order.
fn for_each_word<'t>(normalized: &'t str, mut f: impl FnMut(&'t str)) {
    let mut start = None;
    for (i, c) in normalized.char_indices() {
        let punct = is_punctuation(c);
        if punct || c.is_whitespace() {
            if let Some(s) = start.take() {
                f(&normalized[s..i]);
            }
            if punct {
                f(&normalized[i..i + c.len_utf8()]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        f(&normalized[s..]);
    }
}

/// HF `longest_first` truncation of a pair to `budget` tokens (`max_len - 3`): if both fit, nothing;
/// if the shorter one fits in half the budget, the longer keeps the rest; otherwise each keeps half,
/// the longer one (the second on ties) getting the odd token. This is `tokenizers`'
/// `truncate_encodings`, which differs from d2l's pop-one-at-a-time on ties and odd budgets.
pub fn truncate_longest_first<T>(a: &mut Vec<T>, b: &mut Vec<T>, budget: usize) {
    if a.len() + b.len() <= budget {
        return;
    }
    let swap = a.len() > b.len();
    let mut n_short = a.len().min(b.len());
    // the longer keeps what the shorter leaves (`truncate` never lengthens)
    let mut n_long = if n_short > budget { n_short } else { n_short.max(budget - n_short) };
    if n_short + n_long > budget {
        n_short = budget / 2;
        n_long = n_short + budget % 2;
    }
    let (na, nb) = if swap { (n_long, n_short) } else { (n_short, n_long) };
    a.truncate(na);
    b.truncate(nb);
}

/// A WordPiece tokenizer over a borrowed vocabulary (`vocab.txt`).
#[derive(Clone, Debug)]
pub struct WordPiece<'a> {
    vocab: &'a Vocab,
    lowercase: bool,
    cls: u32,
    sep: u32,
    unk: u32,
    /// The special tokens present in the vocabulary, with their ids.
    specials: Vec<(&'static str, u32)>,
}

impl<'a> WordPiece<'a> {
    /// A tokenizer for `vocab`, lower-casing (and stripping accents) when `lowercase` (the
    /// `do_lower_case` of uncased models). Errors if `[CLS]`, `[SEP]` or `[UNK]` is missing.
    pub fn new(vocab: &'a Vocab, lowercase: bool) -> Result<Self> {
        let need = |t: &str| {
            vocab.get(t).ok_or_else(|| {
                Error::msg(format!(
                    "vocabulary {} has no `{t}` token ({} tokens): not a BERT WordPiece vocab.txt",
                    vocab.source(),
                    vocab.len()
                ))
            })
        };
        let (cls, sep, unk) = (need(CLS_TOKEN)?, need(SEP_TOKEN)?, need(UNK_TOKEN)?);
        let specials = SPECIAL_TOKENS.iter().filter_map(|&t| vocab.get(t).map(|id| (t, id))).collect();
        Ok(WordPiece { vocab, lowercase, cls, sep, unk, specials })
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &'a Vocab {
        self.vocab
    }

    /// Whether text is lower-cased (and accents stripped).
    pub fn lowercase(&self) -> bool {
        self.lowercase
    }

    /// `[CLS]` and `[SEP]` ids.
    pub fn cls_sep(&self) -> (u32, u32) {
        (self.cls, self.sep)
    }

    /// The token ids of one sentence, without `[CLS]`/`[SEP]`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 4 + 2);
        self.encode_into(text, &mut ids, &mut String::new(), &mut String::new());
        ids
    }

    /// [`WordPiece::encode`] appending to `ids`; `norm` and `buf` are scratch space reused
    /// between calls.
    pub fn encode_into(&self, text: &str, ids: &mut Vec<u32>, norm: &mut String, buf: &mut String) {
        let mut rest = text;
        while !rest.is_empty() {
            let (before, special) = self.next_special(rest);
            self.encode_plain(before, ids, norm, buf);
            match special {
                Some((len, id)) => {
                    ids.push(id);
                    rest = &rest[before.len() + len..];
                }
                None => break,
            }
        }
    }

    /// The tokens (strings) of one sentence, for display and tests.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        self.encode(text)
            .into_iter()
            .map(|id| self.vocab.token(id).unwrap_or(UNK_TOKEN).to_string())
            .collect()
    }

    /// The text before the first special token of `text`, and that token's byte length and id.
    fn next_special<'t>(&self, text: &'t str) -> (&'t str, Option<(usize, u32)>) {
        if !text.contains('[') {
            return (text, None);
        }
        let mut best: Option<(usize, usize, u32)> = None;
        for &(tok, id) in &self.specials {
            if let Some(pos) = text.find(tok) {
                if best.is_none_or(|(p, l, _)| pos < p || (pos == p && tok.len() > l)) {
                    best = Some((pos, tok.len(), id));
                }
            }
        }
        match best {
            Some((pos, len, id)) => (&text[..pos], Some((len, id))),
            None => (text, None),
        }
    }

    /// Normalise, pre-tokenise and WordPiece a text without special tokens, appending to `ids`.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>, norm: &mut String, buf: &mut String) {
        if text.is_empty() {
            return;
        }
        normalize_into(text, self.lowercase, norm);
        for_each_word(norm, |word| self.wordpiece(word, ids, buf));
    }

    /// Greedy longest-match-first WordPiece of one word.
    fn wordpiece(&self, word: &str, ids: &mut Vec<u32>, buf: &mut String) {
        if word.len() > MAX_INPUT_CHARS_PER_WORD && word.chars().count() > MAX_INPUT_CHARS_PER_WORD {
            ids.push(self.unk);
            return;
        }
        let mark = ids.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                let piece = &word[start..end];
                let id = if start == 0 {
                    self.vocab.get(piece)
                } else {
                    buf.clear();
                    buf.push_str(CONTINUATION);
                    buf.push_str(piece);
                    self.vocab.get(buf)
                };
                if let Some(id) = id {
                    found = Some(id);
                    break;
                }
                // step back one character
                end -= piece.chars().next_back().map_or(1, char::len_utf8);
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(mark);
                    ids.push(self.unk);
                    return;
                }
            }
        }
    }

    /// `[CLS] a [SEP] b [SEP]` and its token types, `a` and `b` truncated with
    /// [`truncate_longest_first`] to fit `max_len` (≥ 3) tokens in all. As in transformers, an
    /// empty `b` counts as no second sentence: `[CLS] a [SEP]`, `a` cut to `max_len - 2`.
    pub fn encode_pair(&self, a: &str, b: &str, max_len: usize) -> (Vec<u32>, Vec<u8>) {
        let mut a = self.encode(a);
        if b.is_empty() {
            a.truncate(max_len.saturating_sub(2));
            let ids: Vec<u32> = std::iter::once(self.cls).chain(a).chain(std::iter::once(self.sep)).collect();
            let types = vec![0; ids.len()];
            return (ids, types);
        }
        let mut b = self.encode(b);
        truncate_longest_first(&mut a, &mut b, max_len.saturating_sub(3));
        let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
        ids.push(self.cls);
        ids.extend_from_slice(&a);
        ids.push(self.sep);
        ids.extend_from_slice(&b);
        ids.push(self.sep);
        let mut types = vec![0u8; a.len() + 2];
        types.resize(ids.len(), 1);
        (ids, types)
    }
}

/// Reads a BERT `vocab.txt`: one token per line, id = line number (0-based); a trailing `\r` is
/// dropped. `[UNK]` must be present. A token listed twice keeps its last id, as in transformers.
pub fn read_vocab_txt(path: impl AsRef<Path>) -> Result<Vocab> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_vocab_txt(bytes, path)
}

/// [`read_vocab_txt`] on bytes already in memory; `path` labels errors.
pub fn parse_vocab_txt(bytes: Vec<u8>, path: &Path) -> Result<Vocab> {
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        Error::parse(path, line, "vocab.txt is not valid UTF-8")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let body = text.strip_suffix('\n').unwrap_or(text);
    let tokens: Vec<String> = if body.is_empty() {
        Vec::new()
    } else {
        body.split('\n').map(|l| l.trim_end_matches('\r').to_string()).collect()
    };
    if tokens.is_empty() {
        return Err(Error::parse(path, 1, "vocab.txt is empty: expected one token per line"));
    }
    Vocab::from_tokens_with_unk(tokens, UNK_TOKEN, path.display().to_string())
}

/// Writes `vocab` as a `vocab.txt` (one token per line), atomically (temporary file, fsync,
/// rename). Errors if a token contains a line break (it could not be read back).
pub fn save_vocab_txt(vocab: &Vocab, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut text = String::with_capacity(vocab.len() * 8);
    for (i, t) in vocab.tokens().iter().enumerate() {
        if t.contains(['\n', '\r']) {
            return Err(Error::msg(format!(
                "cannot write {}: token {i} ({t:?}) contains a line break",
                path.display()
            )));
        }
        text.push_str(t);
        text.push('\n');
    }
    let tmp = temp_sibling(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// `do_lower_case` of a `tokenizer_config.json` (or, failing that, the `lowercase` of the
/// `BertNormalizer` in a `tokenizer.json`) in `dir`; `None` when neither says. Errors on files
/// that exist but are not JSON, and on settings this tokenizer does not implement
/// (`strip_accents` different from `do_lower_case`, `tokenize_chinese_chars: false`).
pub fn read_lowercase(dir: &Path) -> Result<Option<bool>> {
    let read = |name: &str| -> Result<Option<serde_json::Value>> {
        let p = dir.join(name);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::parse(&p, e.line(), format!("not valid JSON: {e}")))
    };
    if let Some(v) = read("tokenizer_config.json")? {
        let p = dir.join("tokenizer_config.json");
        let lower = v.get("do_lower_case").and_then(|x| x.as_bool());
        if let Some(strip) = v.get("strip_accents").and_then(|x| x.as_bool()) {
            if Some(strip) != lower.or(Some(true)) {
                return Err(Error::checkpoint(
                    &p,
                    format!("strip_accents {strip} with do_lower_case {lower:?} is not supported: accents are stripped exactly when lower-casing"),
                ));
            }
        }
        if v.get("tokenize_chinese_chars").and_then(|x| x.as_bool()) == Some(false) {
            return Err(Error::checkpoint(&p, "tokenize_chinese_chars false is not supported"));
        }
        if lower.is_some() {
            return Ok(lower);
        }
    }
    if let Some(v) = read("tokenizer.json")? {
        let n = &v["normalizer"];
        if n["type"] == "BertNormalizer" {
            return Ok(n["lowercase"].as_bool());
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(words: &[&str]) -> Vocab {
        Vocab::from_tokens_with_unk(words.iter().map(|s| s.to_string()).collect(), UNK_TOKEN, "test").unwrap()
    }

    #[test]
    fn greedy_longest_match() {
        let v =
            vocab(&["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "unaff", "aff", "!", "##a"]);
        let wp = WordPiece::new(&v, true).unwrap();
        assert_eq!(wp.tokenize("UNAFFABLE!"), ["unaff", "##able", "!"]);
        assert_eq!(wp.tokenize("unaffa"), ["unaff", "##a"]);
        assert_eq!(wp.tokenize("unx aff"), ["[UNK]", "aff"]);
        assert_eq!(wp.tokenize("un[SEP]aff"), ["un", "[SEP]", "aff"]);
        assert_eq!(wp.tokenize(&"a".repeat(101)), ["[UNK]"]);
        let (ids, types) = wp.encode_pair("un", "aff aff", 128);
        assert_eq!(ids, [2, 4, 3, 8, 8, 3]);
        assert_eq!(types, [0, 0, 0, 1, 1, 1]);
        assert!(WordPiece::new(&vocab(&["[UNK]", "[CLS]"]), true).is_err());
    }

    #[test]
    fn ascii_punctuation_rule_matches_the_table() {
        for c in (0u8..128).map(char::from) {
            assert_eq!(is_punctuation(c), in_table(tables::PUNCT, c), "{c:?}");
        }
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize("Héllo\u{0}\tW\u{301}ORLD 北京", true), "hello world  北  京 ");
        assert_eq!(normalize("Héllo", false), "Héllo");
        assert_eq!(pre_tokenize(" a.b,,c  d "), ["a", ".", "b", ",", ",", "c", "d"]);
    }

    #[test]
    fn longest_first_like_tokenizers() {
        // tokenizers' own unit test: max_length 7 with lengths 0, 2, 4, 8
        let cases = [
            (0, 0, 0, 0),
            (0, 2, 0, 2),
            (0, 4, 0, 4),
            (0, 8, 0, 7),
            (2, 0, 2, 0),
            (2, 2, 2, 2),
            (2, 4, 2, 4),
            (2, 8, 2, 5),
            (4, 0, 4, 0),
            (4, 2, 4, 2),
            (4, 4, 3, 4),
            (4, 8, 3, 4),
            (8, 0, 7, 0),
            (8, 2, 5, 2),
            (8, 4, 4, 3),
            (8, 8, 3, 4),
        ];
        for (la, lb, wa, wb) in cases {
            let (mut a, mut b) = (vec![0; la], vec![0; lb]);
            truncate_longest_first(&mut a, &mut b, 7);
            assert_eq!((a.len(), b.len()), (wa, wb), "lengths {la}, {lb}");
        }
    }
}
