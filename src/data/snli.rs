//! NLI datasets: SNLI's own `snli_1.0_*.txt`, SNLI's `.jsonl`, and the TSV of `../shared/data`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The longest line the readers accept (64 MiB): longer ones are an error naming the line,
/// so a file without line breaks cannot exhaust memory. Sentences this long are truncated to
/// `max_len` tokens anyway.
pub const MAX_LINE_BYTES: usize = 64 << 20;

use crate::data::tokenizer::{is_py_whitespace, py_strip};
use crate::error::{Error, Result};

/// Class names in label-id order: entailment 0, contradiction 1, neutral 2.
pub const LABELS: [&str; 3] = ["entailment", "contradiction", "neutral"];

/// The label id of a class name, if it is one of [`LABELS`].
pub fn label_id(s: &str) -> Option<u8> {
    LABELS.iter().position(|&l| l == s).map(|i| i as u8)
}

/// One premise/hypothesis pair with its gold label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Premise text, as read (d2l lower-cases later, at tokenisation).
    pub premise: String,
    /// Hypothesis text, as read.
    pub hypothesis: String,
    /// Label id (see [`LABELS`]).
    pub label: u8,
}

/// A dataset read from a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dataset {
    /// The labelled examples, in file order.
    pub examples: Vec<Example>,
    /// Rows skipped because their gold label is `-` (no annotator consensus), as d2l does.
    pub skipped: usize,
    /// Where the data came from (a path or a built-in name), for messages.
    pub source: String,
}

/// SNLI's train file inside the extracted `snli_1.0` folder.
pub const SNLI_TRAIN_FILE: &str = "snli_1.0_train.txt";
/// SNLI's test file inside the extracted `snli_1.0` folder.
pub const SNLI_TEST_FILE: &str = "snli_1.0_test.txt";
/// The header of the TSV format (`../shared/data/*.tsv`).
pub const TSV_HEADER: &str = "label\tpremise\thypothesis";

/// d2l's `read_snli(data_dir, is_train)`: reads `snli_1.0_train.txt` (train) or
/// `snli_1.0_test.txt` from an extracted SNLI folder.
pub fn read_snli_dir(dir: &Path, train: bool) -> Result<Dataset> {
    read_snli_txt(dir.join(if train { SNLI_TRAIN_FILE } else { SNLI_TEST_FILE }))
}

/// Reads a dataset, choosing the format by extension: `.txt` SNLI's own tab-separated file,
/// `.jsonl` SNLI's JSON lines, `.tsv` the `label<TAB>premise<TAB>hypothesis` format. Other
/// extensions are sniffed from the first line (`gold_label…` → SNLI txt, `label<TAB>…` → TSV,
/// `{` → JSON lines).
pub fn read_dataset(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("txt") => read_snli_txt(path),
        Some("jsonl") => read_snli_jsonl(path),
        Some("tsv") => read_tsv(path),
        _ => {
            let mut lines = LineReader::open(path)?;
            let first = match lines.next_line()? {
                Some((_, l)) => strip_bom(l).to_owned(),
                None => return Err(Error::parse(path, 1, "empty file: no header line")),
            };
            if first.starts_with("gold_label") {
                read_snli_txt(path)
            } else if first.starts_with("label\t") {
                read_tsv(path)
            } else if first.trim_start().starts_with('{') {
                read_snli_jsonl(path)
            } else {
                Err(Error::parse(
                    path,
                    1,
                    format!(
                        "unknown dataset format (first line {:?}): expected SNLI's .txt (header starting with \
                         `gold_label`), SNLI's .jsonl, or a TSV with header `label<TAB>premise<TAB>hypothesis`",
                        shorten(&first)
                    ),
                ))
            }
        }
    }
}

/// The three dataset formats (see [`read_dataset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// SNLI's own tab-separated `snli_1.0_*.txt`.
    SnliTxt,
    /// SNLI's JSON lines.
    Jsonl,
    /// `label<TAB>premise<TAB>hypothesis`.
    Tsv,
}

/// Parses a dataset held in memory in the given format; `path` only labels errors. The same
/// code as the file readers ([`read_snli_txt`], [`read_snli_jsonl`], [`read_tsv`]).
pub fn parse_dataset(bytes: &[u8], path: &Path, format: Format) -> Result<Dataset> {
    let lines = LineReader::new(Box::new(bytes), path);
    match format {
        Format::SnliTxt => snli_txt(lines),
        Format::Jsonl => snli_jsonl(lines),
        Format::Tsv => tsv(lines),
    }
}

/// Reads SNLI's own `snli_1.0_*.txt` exactly as d2l's `read_snli`: the first line is SNLI's
/// header (it must start with `gold_label`; d2l skips it unread, so a file without it would
/// silently lose its first pair); column 0 is the gold label, columns 1 and 2 the binary parses
/// of premise and hypothesis, cleaned by [`clean_binary_parse`]. Rows labelled `-` are counted
/// in `skipped`; blank lines are ignored (d2l drops them too).
///
/// Errors (with `file:line`): invalid UTF-8, empty file, another header, an unknown label, fewer
/// than 3 columns, a line over [`MAX_LINE_BYTES`].
pub fn read_snli_txt(path: impl AsRef<Path>) -> Result<Dataset> {
    snli_txt(LineReader::open(path.as_ref())?)
}

fn snli_txt(mut lines: LineReader<'_>) -> Result<Dataset> {
    let path = lines.path.clone();
    let path = path.as_path();
    match lines.next_line()? {
        None => {
            return Err(Error::parse(path, 1, "empty file: expected SNLI's header line `gold_label<TAB>…`"))
        }
        Some((_, h)) if !strip_bom(h).starts_with("gold_label") => {
            let hint = if strip_bom(h).starts_with("label\t") {
                "; this is the TSV format: give the file a .tsv extension"
            } else {
                ""
            };
            return Err(Error::parse(
                path,
                1,
                format!(
                    "expected SNLI's header line `gold_label<TAB>sentence1_binary_parse<TAB>…`, found {:?}{hint}",
                    shorten(strip_bom(h))
                ),
            ));
        }
        Some(_) => {}
    }
    let mut ds = Dataset { source: path.display().to_string(), ..Dataset::default() };
    while let Some((n, line)) = lines.next_line()? {
        if line.is_empty() {
            continue;
        }
        let mut cols = line.split('\t');
        let label = cols.next().unwrap_or_default();
        let Some(label) = parse_label(path, n, label)? else {
            ds.skipped += 1;
            continue;
        };
        let (Some(p), Some(h)) = (cols.next(), cols.next()) else {
            return Err(Error::parse(
                path,
                n,
                format!(
                    "expected at least 3 tab-separated columns (gold_label, sentence1_binary_parse, \
                     sentence2_binary_parse), found {}",
                    line.split('\t').count()
                ),
            ));
        };
        ds.examples.push(Example {
            premise: clean_binary_parse(p),
            hypothesis: clean_binary_parse(h),
            label,
        });
    }
    Ok(ds)
}

/// Reads SNLI's `snli_1.0_*.jsonl`: one JSON object per line with `gold_label`, and the premise
/// and hypothesis from `sentence1_binary_parse` / `sentence2_binary_parse` cleaned like
/// [`read_snli_txt`] when present, else the raw `sentence1` / `sentence2`. `-` labels are
/// skipped; blank lines ignored.
pub fn read_snli_jsonl(path: impl AsRef<Path>) -> Result<Dataset> {
    snli_jsonl(LineReader::open(path.as_ref())?)
}

fn snli_jsonl(mut lines: LineReader<'_>) -> Result<Dataset> {
    let path = lines.path.clone();
    let path = path.as_path();
    let mut ds = Dataset { source: path.display().to_string(), ..Dataset::default() };
    let mut any = false;
    while let Some((n, line)) = lines.next_line()? {
        let line = if n == 1 { strip_bom(line) } else { line };
        if line.trim_matches(is_py_whitespace).is_empty() {
            continue;
        }
        any = true;
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::parse(path, n, format!("not a JSON object: {e}")))?;
        let label = v
            .get("gold_label")
            .and_then(|l| l.as_str())
            .ok_or_else(|| Error::parse(path, n, "no string field `gold_label`"))?;
        let Some(label) = parse_label(path, n, label)? else {
            ds.skipped += 1;
            continue;
        };
        let sentence = |k: usize| -> Result<String> {
            if let Some(s) = v.get(format!("sentence{k}_binary_parse")).and_then(|s| s.as_str()) {
                return Ok(clean_binary_parse(s));
            }
            v.get(format!("sentence{k}")).and_then(|s| s.as_str()).map(str::to_owned).ok_or_else(|| {
                Error::parse(
                    path,
                    n,
                    format!("neither `sentence{k}_binary_parse` nor `sentence{k}` is a string field"),
                )
            })
        };
        ds.examples.push(Example { premise: sentence(1)?, hypothesis: sentence(2)?, label });
    }
    if !any {
        return Err(Error::parse(path, 1, "empty file: no JSON lines"));
    }
    Ok(ds)
}

/// Reads the TSV format of `../shared/data`: header `label<TAB>premise<TAB>hypothesis`, then
/// exactly 3 tab-separated columns per line. Sentences are kept as written; `-` labels are
/// skipped; blank lines ignored.
pub fn read_tsv(path: impl AsRef<Path>) -> Result<Dataset> {
    tsv(LineReader::open(path.as_ref())?)
}

fn tsv(mut lines: LineReader<'_>) -> Result<Dataset> {
    let path = lines.path.clone();
    let path = path.as_path();
    let header = match lines.next_line()? {
        Some((_, h)) => strip_bom(h),
        None => return Err(Error::parse(path, 1, format!("empty file: expected the header {TSV_HEADER:?}"))),
    };
    if header != TSV_HEADER {
        return Err(Error::parse(
            path,
            1,
            format!("expected the header {TSV_HEADER:?}, found {:?}", shorten(header)),
        ));
    }
    let mut ds = Dataset { source: path.display().to_string(), ..Dataset::default() };
    while let Some((n, line)) = lines.next_line()? {
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 3 {
            return Err(Error::parse(
                path,
                n,
                format!(
                    "expected 3 tab-separated columns (label, premise, hypothesis), found {}",
                    cols.len()
                ),
            ));
        }
        match parse_label(path, n, cols[0])? {
            Some(label) => {
                ds.examples.push(Example { premise: cols[1].into(), hypothesis: cols[2].into(), label })
            }
            None => ds.skipped += 1,
        }
    }
    Ok(ds)
}

/// d2l's `extract_text`: deletes every `(` and `)`, replaces each run of two or more whitespace
/// characters (Python regex `\s`) by one space, and strips whitespace at both ends (Python
/// `str.strip()`). A single whitespace character inside is kept as is.
pub fn clean_binary_parse(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run: Option<char> = None; // first char of the pending whitespace run
    let mut run_len = 0usize;
    for c in s.chars().filter(|&c| c != '(' && c != ')') {
        if is_py_whitespace(c) {
            run.get_or_insert(c);
            run_len += 1;
            continue;
        }
        flush_run(&mut out, &mut run, &mut run_len);
        out.push(c);
    }
    flush_run(&mut out, &mut run, &mut run_len);
    py_strip(&out).to_owned()
}

fn flush_run(out: &mut String, run: &mut Option<char>, run_len: &mut usize) {
    if let Some(c) = run.take() {
        out.push(if *run_len >= 2 { ' ' } else { c });
    }
    *run_len = 0;
}

/// `Some(id)` for a class name, `None` for `-` (no annotator consensus), an error otherwise.
fn parse_label(path: &Path, line: usize, s: &str) -> Result<Option<u8>> {
    if s == "-" {
        return Ok(None);
    }
    label_id(s).map(Some).ok_or_else(|| {
        Error::parse(path, line, format!("unknown label {:?}: expected one of {LABELS:?} or `-`", shorten(s)))
    })
}

fn strip_bom(s: &str) -> &str {
    s.strip_prefix('\u{feff}').unwrap_or(s)
}

/// At most 60 characters of `s`, for messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Reads a file line by line with Python's universal newlines (`\n`, `\r\n` and a lone `\r` all
/// end a line; the terminator is not returned), checking UTF-8 and [`MAX_LINE_BYTES`] per line.
struct LineReader<'a> {
    r: Box<dyn BufRead + 'a>,
    path: PathBuf,
    buf: Vec<u8>,
    /// 1-based number of the line last returned.
    line_no: usize,
    max_line: usize,
}

impl<'a> LineReader<'a> {
    fn open(path: &Path) -> Result<LineReader<'static>> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(LineReader::new(Box::new(BufReader::with_capacity(1 << 20, f)), path))
    }

    fn new(r: Box<dyn BufRead + 'a>, path: &Path) -> Self {
        LineReader { r, path: path.to_path_buf(), buf: Vec::new(), line_no: 0, max_line: MAX_LINE_BYTES }
    }

    /// The next line and its 1-based number, or `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<(usize, &str)>> {
        let found = read_line_universal(&mut self.r, &mut self.buf, self.max_line)
            .map_err(|e| Error::io(&self.path, e))?;
        let Some(complete) = found else { return Ok(None) };
        self.line_no += 1;
        let n = self.line_no;
        if !complete {
            return Err(Error::parse(
                &self.path,
                n,
                format!(
                    "line longer than {} bytes (no line break): not a text dataset, or a corrupt one",
                    self.max_line
                ),
            ));
        }
        std::str::from_utf8(&self.buf).map(|s| Some((n, s))).map_err(|e| {
            Error::parse(
                &self.path,
                self.line_no,
                format!("invalid UTF-8 at byte {} of the line; the file must be UTF-8", e.valid_up_to()),
            )
        })
    }
}

/// Reads one line into `buf` (cleared first): `None` at end of input, `Some(false)` if the line
/// is longer than `max` bytes (the rest is not read), `Some(true)` otherwise.
fn read_line_universal(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<bool>> {
    buf.clear();
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok((!buf.is_empty()).then_some(true));
        }
        let end = avail.iter().position(|&b| b == b'\n' || b == b'\r');
        let take = end.unwrap_or(avail.len());
        if buf.len() + take > max {
            return Ok(Some(false));
        }
        buf.extend_from_slice(&avail[..take]);
        match end {
            Some(i) => {
                let cr = avail[i] == b'\r';
                r.consume(i + 1);
                if cr && r.fill_buf()?.first() == Some(&b'\n') {
                    r.consume(1);
                }
                return Ok(Some(true));
            }
            None => r.consume(take),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn universal_newlines() {
        let mut r = std::io::Cursor::new(b"a\r\nb\rc\n\nd".to_vec());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while read_line_universal(&mut r, &mut buf, 100).unwrap() == Some(true) {
            got.push(String::from_utf8(buf.clone()).unwrap());
        }
        assert_eq!(got, ["a", "b", "c", "", "d"]);
    }

    #[test]
    fn overlong_lines_are_refused_with_their_line_number() {
        let text = format!("{TSV_HEADER}\nneutral\ta\tb\nneutral\t{}\tb\n", "x".repeat(200));
        let mut lines = LineReader::new(Box::new(text.as_bytes()), Path::new("long.tsv"));
        lines.max_line = 100;
        let e = tsv(lines).unwrap_err().to_string();
        assert!(e.starts_with("long.tsv:3:") && e.contains("longer than 100 bytes"), "{e}");
        // exactly at the cap is fine
        let mut r = std::io::Cursor::new(vec![b'y'; 100]);
        let mut buf = Vec::new();
        assert_eq!(read_line_universal(&mut r, &mut buf, 100).unwrap(), Some(true));
        assert_eq!(buf.len(), 100);
    }

    #[test]
    fn clean_like_d2l() {
        // python3: import re; f=lambda s: re.sub('\\s{2,}',' ',re.sub('\\)','',re.sub('\\(','',s))).strip()
        // f('( ( A man ) ( is ( sleeping . ) ) )') == 'A man is sleeping .'
        assert_eq!(clean_binary_parse("( ( A man ) ( is ( sleeping . ) ) )"), "A man is sleeping .");
        // f('a\xa0b  \x1c c\x1f') == 'a\xa0b c'
        assert_eq!(clean_binary_parse("a\u{a0}b  \u{1c} c\u{1f}"), "a\u{a0}b c");
        assert_eq!(clean_binary_parse("()"), "");
    }
}
