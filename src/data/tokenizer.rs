//! d2l's word tokenisation, bit-exact with Python: `line.lower().split()`.
//!
//! Python and Rust disagree on three points, all handled here:
//! - whitespace: Python's `str.isspace` (used by `str.split()`, `str.strip()` and regex `\s`) also
//!   counts U+001C..U+001F as whitespace; Rust's `char::is_whitespace` does not ([`is_py_whitespace`]);
//! - Unicode version: Python 3.11 lower-cases with Unicode 14.0, Rust with a newer version that maps
//!   some characters Python leaves alone (e.g. U+A7CB, the Garay script); [`py_lower`] only maps the
//!   characters Python 3.11 maps;
//! - final sigma: both map `Σ` to `ς` at the end of a word, but decide "word" with their own
//!   Unicode tables; [`py_lower`] uses Python 3.11's.
//!
//! The tables live in `tokenizer/tables.rs`, generated from Python 3.11 `str.lower()` itself.

mod tables;

/// Whether `c` is whitespace for Python's `str.isspace()` (and so for `str.split()`,
/// `str.strip()` and the regex class `\s` on `str` patterns).
///
/// The set: `\t \n \v \f \r`, U+001C..U+001F, space, U+0085, U+00A0, U+1680, U+2000..U+200A,
/// U+2028, U+2029, U+202F, U+205F, U+3000.
pub fn is_py_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{b}'
            | '\u{c}'
            | '\r'
            | '\u{1c}'..='\u{1f}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// [`is_py_whitespace`] on an ASCII byte: `\t \n \v \f \r`, U+001C..U+001F and space.
pub(crate) fn is_ascii_py_whitespace(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | 0x1c..=0x1f | b' ')
}

/// Python's `s.split()` with no argument: the maximal runs of non-whitespace, with leading and
/// trailing whitespace ignored (an empty or all-whitespace `s` gives no pieces).
pub fn py_split(s: &str) -> Vec<&str> {
    s.split(is_py_whitespace).filter(|w| !w.is_empty()).collect()
}

/// Python's `s.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_whitespace)
}

/// Whether `c` is in a sorted list of inclusive ranges.
fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    let i = ranges.partition_point(|&(first, _)| first <= c);
    i > 0 && c <= ranges[i - 1].1
}

/// Whether Python 3.11's `c.lower()` differs from `c`.
fn py_lowers(c: char) -> bool {
    let x = c as u32;
    if x < 0x80 {
        return c.is_ascii_uppercase();
    }
    let runs = tables::LOWER_CHANGES;
    let i = runs.partition_point(|&(first, _, _)| first <= x);
    i > 0 && {
        let (first, last, stride) = runs[i - 1];
        x <= last && (x - first) % stride == 0
    }
}

/// Python's `handle_capital_sigma`: the capital sigma at `chars[i]` is word-final when a cased
/// character precedes it and none follows it, skipping case-ignorable characters both ways.
fn sigma_is_final(chars: &[char], i: usize) -> bool {
    let before = chars[..i].iter().rev().find(|&&c| !in_ranges(tables::CASE_IGNORABLE, c));
    let after = chars[i + 1..].iter().find(|&&c| !in_ranges(tables::CASE_IGNORABLE, c));
    matches!(before, Some(&c) if in_ranges(tables::CASED, c))
        && !matches!(after, Some(&c) if in_ranges(tables::CASED, c))
}

/// Python 3.11's `s.lower()`: full Unicode lower-casing (`'İ'` → `"i\u{307}"`), with the
/// final-sigma rule (`"ΑΣ"` → `"ας"`), using Unicode 14.0 as Python 3.11 does.
pub fn py_lower(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == 'Σ' {
            out.push(if sigma_is_final(&chars, i) { 'ς' } else { 'σ' });
        } else if py_lowers(c) {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// d2l's word tokenisation of one sentence: `s.lower().split()` (`d2l.tokenize(lines, 'word')`
/// after the chapter lower-cases each sentence).
pub fn d2l_tokenize(s: &str) -> Vec<String> {
    py_split(&py_lower(s)).into_iter().map(str::to_owned).collect()
}

/// Calls `f` on each token of [`d2l_tokenize`]`(s)`, in order, without allocating a string per
/// token: the lower-cased text goes into `buf` (reused between calls).
pub fn for_each_d2l_token(s: &str, buf: &mut String, mut f: impl FnMut(&str)) {
    buf.clear();
    if !s.is_ascii() {
        buf.push_str(&py_lower(s));
        buf.split(is_py_whitespace).filter(|w| !w.is_empty()).for_each(f);
        return;
    }
    buf.push_str(s);
    buf.make_ascii_lowercase();
    let b = buf.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && is_ascii_py_whitespace(b[i]) {
            i += 1;
        }
        let start = i;
        while i < b.len() && !is_ascii_py_whitespace(b[i]) {
            i += 1;
        }
        if i > start {
            f(&buf[start..i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::{Digest, Sha1};

    /// Exhaustive check against Python 3.11 over every scalar value, bare and in sigma contexts.
    /// The digest was produced by:
    /// `python3.11 -c "import hashlib; h=hashlib.sha1()
    ///  [h.update((c.lower()+(c+'Σ').lower()+('AΣ'+c).lower()+('A'+c+'Σ').lower()+'\n').encode())
    ///   for c in map(chr, range(0x110000)) if not 0xD800 <= ord(c) <= 0xDFFF]; print(h.hexdigest())"`
    #[test]
    fn lower_matches_python_on_every_char() {
        let mut h = Sha1::new();
        let mut buf = String::new();
        for c in (0..0x11_0000u32).filter_map(char::from_u32) {
            buf.clear();
            buf.push_str(&py_lower(c.encode_utf8(&mut [0; 4])));
            buf.push_str(&py_lower(&format!("{c}Σ")));
            buf.push_str(&py_lower(&format!("AΣ{c}")));
            buf.push_str(&py_lower(&format!("A{c}Σ")));
            buf.push('\n');
            h.update(buf.as_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "e47c19ba11f28e33d49b299805aafb070a0c0db8");
    }

    #[test]
    fn whitespace_matches_python() {
        // python3 -c "print([hex(i) for i in range(0x110000) if chr(i).isspace()])"
        let py = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001,
            0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f,
            0x205f, 0x3000,
        ];
        let ours: Vec<u32> = (0..0x11_0000u32)
            .filter_map(char::from_u32)
            .filter(|&c| is_py_whitespace(c))
            .map(|c| c as u32)
            .collect();
        assert_eq!(ours, py);
    }
}
