//! A small C++ lexer: enough to find kernel signatures and `__shared__` declarations. Comments and
//! preprocessor lines (with their continuations) are skipped; line numbers are kept.

/// A token kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// An identifier or keyword.
    Ident(String),
    /// A string or character literal's contents (without quotes).
    Str(String),
    /// A number.
    Num,
    /// Any other character.
    Punct(char),
}

/// A token and where it is.
#[derive(Clone, Debug)]
pub struct Token {
    /// What it is.
    pub tok: Tok,
    /// 1-based line of its start.
    pub line: usize,
    /// Byte offset just past it.
    pub end: usize,
}

/// Tokens of `src` without comments and preprocessor lines.
pub fn lex(src: &str) -> Vec<Token> {
    let b = src.as_bytes();
    let (mut i, mut line, mut line_start) = (0usize, 1usize, true);
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            line_start = true;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' && line_start {
            // Preprocessor line, with backslash continuations.
            while i < b.len() && b[i] != b'\n' {
                if b[i] == b'\\' && i + 1 < b.len() && b[i + 1] == b'\n' {
                    line += 1;
                    i += 1;
                }
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                line += usize::from(b[i] == b'\n');
                i += 1;
            }
            i += 2;
        } else {
            line_start = false;
            let start = i;
            let tok = if c.is_ascii_alphabetic() || c == b'_' {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                Tok::Ident(src[start..i].to_string())
            } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    let exp = matches!(b[i], b'e' | b'E' | b'p' | b'P');
                    i += 1;
                    if exp && i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                        i += 1;
                    }
                }
                Tok::Num
            } else if c == b'"' || c == b'\'' {
                i += 1;
                while i < b.len() && b[i] != c && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                Tok::Str(src[start + 1..i.saturating_sub(1).max(start + 1)].to_string())
            } else {
                i += 1;
                Tok::Punct(c as char)
            };
            out.push(Token { tok, line, end: i });
        }
    }
    out
}

pub fn is_ident(t: &Token, s: &str) -> bool {
    matches!(&t.tok, Tok::Ident(x) if x == s)
}

pub fn is_punct(t: &Token, c: char) -> bool {
    t.tok == Tok::Punct(c)
}

/// Index of the token closing the bracket opened at `open` (or the last token).
pub fn matching(toks: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    toks.len().saturating_sub(1)
}

/// `toks` split at commas outside brackets.
pub fn split_commas(toks: &[Token]) -> Vec<&[Token]> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (j, t) in toks.iter().enumerate() {
        match t.tok {
            Tok::Punct('(' | '[' | '{' | '<') => depth += 1,
            Tok::Punct(')' | ']' | '}' | '>') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                parts.push(&toks[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(src: &str) -> Vec<(String, usize)> {
        lex(src)
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Ident(s) => Some((s, t.line)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_and_preprocessor_lines_are_skipped_and_lines_kept() {
        let src = "#define X(a) \\\n  a + 1\nint a; // b c\n/* d\n e */ float f;\n  # pragma once\nchar g;";
        assert_eq!(
            idents(src),
            [
                ("int".into(), 3),
                ("a".into(), 3),
                ("float".into(), 5),
                ("f".into(), 5),
                ("char".into(), 7),
                ("g".into(), 7)
            ]
        );
    }

    #[test]
    fn strings_numbers_and_punctuation() {
        let toks = lex(r#"extern "C" x = 1.5e-3f + 'q' - 0x1f;"#);
        let kinds: Vec<Tok> = toks.into_iter().map(|t| t.tok).collect();
        assert_eq!(
            kinds,
            [
                Tok::Ident("extern".into()),
                Tok::Str("C".into()),
                Tok::Ident("x".into()),
                Tok::Punct('='),
                Tok::Num,
                Tok::Punct('+'),
                Tok::Str("q".into()),
                Tok::Punct('-'),
                Tok::Num,
                Tok::Punct(';'),
            ]
        );
    }

    #[test]
    fn brackets_match_and_commas_split_outside_them() {
        let toks = lex("f(a, g(b, c), d[1, 2]) e");
        assert_eq!(matching(&toks, 1), toks.len() - 2);
        let parts = split_commas(&toks[2..toks.len() - 2]);
        assert_eq!(parts.len(), 3);
        assert!(is_ident(&parts[1][0], "g") && is_punct(&parts[2][1], '['));
    }
}
