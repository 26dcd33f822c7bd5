//! Pairs to predict on, labelled or not: what `nli-bert predict --input` reads. Unlike the
//! training readers ([`super::snli`]), no row is dropped: a `-`, empty or missing label is no
//! reason to skip a pair nobody asked to be labelled, so the output has one line per input pair,
//! in input order.
//!
//! Formats, recognised by the first non-blank line:
//! - a tab-separated header naming the premise and hypothesis columns (`premise`/`hypothesis`,
//!   `sentence1`/`sentence2`, or SNLI's `sentence1_binary_parse`/`sentence2_binary_parse`, which
//!   are cleaned as d2l does), any other columns (a label, ids) ignored: our TSV, SNLI's `.txt`,
//!   MNLI's `.tsv`;
//! - JSON lines (`{` first): the same field names, `gold_label` optional.
//!
//! Python's universal newlines apply (`\n`, `\r\n` and a lone `\r` end a line); a byte-order mark
//! is allowed; blank lines are ignored. `-` as the path reads standard input.

use super::snli::clean_binary_parse;
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// One pair to predict on, and its gold label when the input has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The premise.
    pub premise: String,
    /// The hypothesis.
    pub hypothesis: String,
    /// The input's label column or `gold_label` field, as written (may be `-` or empty).
    pub gold: Option<String>,
}

/// Field names of the premise, hypothesis and label, best first.
const PREMISE: [&str; 3] = ["sentence1_binary_parse", "premise", "sentence1"];
const HYPOTHESIS: [&str; 3] = ["sentence2_binary_parse", "hypothesis", "sentence2"];
const LABEL: [&str; 2] = ["gold_label", "label"];

/// Reads the pairs of `path` (`-`: standard input). An input with no pair is an error.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| Error::io(path, e))?;
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::parse(
            path,
            1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count(),
            "not UTF-8 text",
        )
    })?;
    parse_pairs(path, &text)
}

/// [`read_pairs`] on text already read; `path` names it in errors.
pub fn parse_pairs(path: &Path, text: &str) -> Result<Vec<Pair>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines =
        text.split('\n').enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim().is_empty());
    let Some((n0, first)) = lines.next() else {
        return Err(Error::parse(path, 1, "no pairs: the input is empty"));
    };
    let pairs = if first.trim_start().starts_with('{') {
        std::iter::once((n0, first))
            .chain(lines)
            .map(|(n, l)| json_pair(path, n, l))
            .collect::<Result<Vec<_>>>()?
    } else {
        let cols: Vec<&str> = first.split('\t').map(str::trim).collect();
        let find = |names: &[&str]| names.iter().find_map(|n| cols.iter().position(|c| c == n));
        let (Some(p), Some(h)) = (find(&PREMISE), find(&HYPOTHESIS)) else {
            return Err(Error::parse(
                path,
                n0,
                format!(
                    "expected a tab-separated header naming the premise and hypothesis columns (e.g. \
                     `premise<TAB>hypothesis`, with or without a `label` column), SNLI's .txt header, or JSON \
                     lines; found {:?}",
                    first.chars().take(80).collect::<String>()
                ),
            ));
        };
        let label = find(&LABEL);
        lines
            .map(|(n, l)| {
                let f: Vec<&str> = l.split('\t').collect();
                let need = p.max(h) + 1;
                if f.len() < need {
                    return Err(Error::parse(
                        path,
                        n,
                        format!("{} tab-separated fields, the header needs {need}", f.len()),
                    ));
                }
                let cell = |i: usize| {
                    if cols[i].ends_with("_binary_parse") {
                        clean_binary_parse(f[i])
                    } else {
                        f[i].to_string()
                    }
                };
                Ok(Pair {
                    premise: cell(p),
                    hypothesis: cell(h),
                    gold: label.and_then(|i| f.get(i)).map(|s| s.to_string()),
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    if pairs.is_empty() {
        return Err(Error::parse(path, n0, "no pairs: the input has a header and nothing else"));
    }
    Ok(pairs)
}

fn json_pair(path: &Path, n: usize, line: &str) -> Result<Pair> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::parse(path, n, format!("not a JSON object: {e}")))?;
    let field = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|k| {
            v.get(*k).and_then(|s| s.as_str()).map(|s| {
                if k.ends_with("_binary_parse") {
                    clean_binary_parse(s)
                } else {
                    s.to_string()
                }
            })
        })
    };
    let missing = |what: &str, names: &[&str]| {
        Error::parse(path, n, format!("no {what}: none of the string fields {names:?}"))
    };
    Ok(Pair {
        premise: field(&PREMISE).ok_or_else(|| missing("premise", &PREMISE))?,
        hypothesis: field(&HYPOTHESIS).ok_or_else(|| missing("hypothesis", &HYPOTHESIS))?,
        gold: field(&LABEL),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Pair>> {
        parse_pairs(Path::new("in.tsv"), text)
    }

    fn pp(v: &[Pair]) -> Vec<(&str, &str, Option<&str>)> {
        v.iter().map(|p| (p.premise.as_str(), p.hypothesis.as_str(), p.gold.as_deref())).collect()
    }

    #[test]
    fn tsv_with_or_without_labels_keeps_every_row_in_order() {
        let no_label = parse("premise\thypothesis\r\na b\tc\r\n\n d\te f\n").unwrap();
        assert_eq!(pp(&no_label), [("a b", "c", None), (" d", "e f", None)]);
        let labels = parse("\u{feff}label\tpremise\thypothesis\n-\ta\tb\n\tc\td\nneutral\te\tf").unwrap();
        assert_eq!(pp(&labels), [("a", "b", Some("-")), ("c", "d", Some("")), ("e", "f", Some("neutral"))]);
        let reordered = parse("id\thypothesis\tpremise\n7\th\tp\n").unwrap();
        assert_eq!(pp(&reordered), [("p", "h", None)]);
    }

    #[test]
    fn snli_txt_uses_the_cleaned_binary_parses_and_keeps_dash_rows() {
        let t = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tx\n-\t( ( A man ) runs )\t( A person )\t1\n";
        assert_eq!(pp(&parse(t).unwrap()), [("A man runs", "A person", Some("-"))]);
    }

    #[test]
    fn json_lines_with_or_without_gold_label() {
        let t = "{\"premise\": \"a\", \"hypothesis\": \"b\"}\n{\"sentence1\": \"c\", \"sentence2\": \"d\", \"gold_label\": \"-\"}\n";
        assert_eq!(pp(&parse(t).unwrap()), [("a", "b", None), ("c", "d", Some("-"))]);
    }

    #[test]
    fn what_cannot_be_read_is_an_error_with_the_line() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert!(e("").contains("no pairs"));
        assert!(e("premise\thypothesis\n\n").contains("no pairs"));
        assert!(e("a\tb\n").contains("in.tsv:1") && e("a\tb\n").contains("header naming the premise"));
        assert!(e("premise\thypothesis\nonly one field\n").contains("in.tsv:2"));
        assert!(e("{\"premise\": \"a\"}\n").contains("no hypothesis"));
        assert!(e("{\"premise\": \"a\", \"hypothesis\": \"b\"}\n{oops\n").contains("in.tsv:2"));
    }
}
