//! NLI datasets: SNLI's own `snli_1.0_*.txt`, SNLI's `.jsonl`, and the TSV of `../shared/data`.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

/// The longest line the readers accept (64 MiB): longer ones are an error naming the line,
/// so a file without line breaks cannot exhaust memory. Sentences this long are truncated to
/// `max_len` tokens anyway.
pub const MAX_LINE_BYTES: usize = 64 << 20;

use crate::data::tokenizer::{is_ascii_py_whitespace, is_py_whitespace, py_strip};
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
    // already in memory: one region, no blocks to copy
    let opts = ReadOptions::default();
    let parsed = match format {
        Format::SnliTxt => parse_region(bytes, 1, path, &opts, &|n, l| snli_txt_row(path, n, l))?,
        Format::Jsonl => parse_region(bytes, 1, path, &opts, &|n, l| jsonl_row(path, n, l))?,
        Format::Tsv => parse_region(bytes, 1, path, &opts, &|n, l| tsv_row(path, n, l))?,
    };
    finish(parsed, path, format)
}

/// How the readers split their work: the input is read in blocks of `block` bytes, each block's
/// complete lines are cut into chunks of about `chunk` bytes at line ends and parsed in parallel
/// (rayon), then joined in file order; lines longer than `max_line` bytes are refused. Every
/// setting gives the same dataset and the same first error (`file:line`) as reading line by line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Bytes read per block (at least 1).
    pub block: usize,
    /// Bytes per parallel chunk (at least 1).
    pub chunk: usize,
    /// The longest line accepted ([`MAX_LINE_BYTES`]).
    pub max_line: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { block: 8 << 20, chunk: 256 << 10, max_line: MAX_LINE_BYTES }
    }
}

/// Reads a dataset of the given format from `r` with explicit [`ReadOptions`]; `path` labels
/// errors. [`read_snli_txt`], [`read_snli_jsonl`], [`read_tsv`] and [`parse_dataset`] call it
/// with the defaults.
pub fn read_format(
    r: &mut (dyn Read + Send),
    path: &Path,
    format: Format,
    opts: &ReadOptions,
) -> Result<Dataset> {
    let parsed = match format {
        Format::SnliTxt => par_lines(r, path, opts, &|n, l| snli_txt_row(path, n, l))?,
        Format::Jsonl => par_lines(r, path, opts, &|n, l| jsonl_row(path, n, l))?,
        Format::Tsv => par_lines(r, path, opts, &|n, l| tsv_row(path, n, l))?,
    };
    finish(parsed, path, format)
}

/// The line-by-line reader the parallel one is checked against (tests): same rows, same errors.
#[doc(hidden)]
pub fn parse_dataset_sequential(bytes: &[u8], path: &Path, format: Format) -> Result<Dataset> {
    let mut lines = LineReader::new(Box::new(bytes), path);
    let mut parsed = Parsed::default();
    while let Some((n, line)) = lines.next_line()? {
        let row = match format {
            Format::SnliTxt => snli_txt_row(path, n, line)?,
            Format::Jsonl => jsonl_row(path, n, line)?,
            Format::Tsv => tsv_row(path, n, line)?,
        };
        parsed.add(row);
        parsed.lines = n;
    }
    finish(parsed, path, format)
}

/// The checks that need the whole file (empty files), and the dataset.
fn finish(parsed: Parsed, path: &Path, format: Format) -> Result<Dataset> {
    match format {
        Format::SnliTxt if parsed.lines == 0 => {
            return Err(Error::parse(path, 1, "empty file: expected SNLI's header line `gold_label<TAB>…`"))
        }
        Format::Jsonl if parsed.nonblank == 0 => {
            return Err(Error::parse(path, 1, "empty file: no JSON lines"))
        }
        Format::Tsv if parsed.lines == 0 => {
            return Err(Error::parse(path, 1, format!("empty file: expected the header {TSV_HEADER:?}")))
        }
        _ => {}
    }
    Ok(Dataset { examples: parsed.examples, skipped: parsed.skipped, source: path.display().to_string() })
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
    read_file(path.as_ref(), Format::SnliTxt)
}

fn read_file(path: &Path, format: Format) -> Result<Dataset> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    read_format(&mut f, path, format, &ReadOptions::default())
}

/// One line of SNLI's `.txt`: line 1 is the header.
fn snli_txt_row(path: &Path, n: usize, line: &str) -> Result<Row> {
    if n == 1 {
        let h = strip_bom(line);
        if !h.starts_with("gold_label") {
            let hint = if h.starts_with("label\t") {
                "; this is the TSV format: give the file a .tsv extension"
            } else {
                ""
            };
            return Err(Error::parse(
                path,
                1,
                format!(
                    "expected SNLI's header line `gold_label<TAB>sentence1_binary_parse<TAB>…`, found {:?}{hint}",
                    shorten(h)
                ),
            ));
        }
        return Ok(Row::Blank);
    }
    if line.is_empty() {
        return Ok(Row::Blank);
    }
    let mut cols = line.split('\t');
    let label = cols.next().unwrap_or_default();
    let Some(label) = parse_label(path, n, label)? else {
        return Ok(Row::Skipped);
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
    Ok(Row::Example(Example { premise: clean_binary_parse(p), hypothesis: clean_binary_parse(h), label }))
}

/// Reads SNLI's `snli_1.0_*.jsonl`: one JSON object per line with `gold_label`, and the premise
/// and hypothesis from `sentence1_binary_parse` / `sentence2_binary_parse` cleaned like
/// [`read_snli_txt`] when present, else the raw `sentence1` / `sentence2`. `-` labels are
/// skipped; blank lines ignored.
pub fn read_snli_jsonl(path: impl AsRef<Path>) -> Result<Dataset> {
    read_file(path.as_ref(), Format::Jsonl)
}

/// One line of SNLI's `.jsonl` (a byte-order mark allowed on line 1).
fn jsonl_row(path: &Path, n: usize, line: &str) -> Result<Row> {
    let line = if n == 1 { strip_bom(line) } else { line };
    if line.trim_matches(is_py_whitespace).is_empty() {
        return Ok(Row::Blank);
    }
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::parse(path, n, format!("not a JSON object: {e}")))?;
    let label = v
        .get("gold_label")
        .and_then(|l| l.as_str())
        .ok_or_else(|| Error::parse(path, n, "no string field `gold_label`"))?;
    let Some(label) = parse_label(path, n, label)? else {
        return Ok(Row::Skipped);
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
    Ok(Row::Example(Example { premise: sentence(1)?, hypothesis: sentence(2)?, label }))
}

/// Reads the TSV format of `../shared/data`: header `label<TAB>premise<TAB>hypothesis`, then
/// exactly 3 tab-separated columns per line. Sentences are kept as written; `-` labels are
/// skipped; blank lines ignored.
pub fn read_tsv(path: impl AsRef<Path>) -> Result<Dataset> {
    read_file(path.as_ref(), Format::Tsv)
}

/// One line of the TSV format: line 1 is the header.
fn tsv_row(path: &Path, n: usize, line: &str) -> Result<Row> {
    if n == 1 {
        let header = strip_bom(line);
        if header != TSV_HEADER {
            return Err(Error::parse(
                path,
                1,
                format!("expected the header {TSV_HEADER:?}, found {:?}", shorten(header)),
            ));
        }
        return Ok(Row::Blank);
    }
    if line.is_empty() {
        return Ok(Row::Blank);
    }
    let mut cols = line.split('\t');
    let (Some(label), Some(p), Some(h), None) = (cols.next(), cols.next(), cols.next(), cols.next()) else {
        return Err(Error::parse(
            path,
            n,
            format!(
                "expected 3 tab-separated columns (label, premise, hypothesis), found {}",
                line.split('\t').count()
            ),
        ));
    };
    Ok(match parse_label(path, n, label)? {
        Some(label) => Row::Example(Example { premise: p.into(), hypothesis: h.into(), label }),
        None => Row::Skipped,
    })
}

/// d2l's `extract_text`: deletes every `(` and `)`, replaces each run of two or more whitespace
/// characters (Python regex `\s`) by one space, and strips whitespace at both ends (Python
/// `str.strip()`). A single whitespace character inside is kept as is.
pub fn clean_binary_parse(s: &str) -> String {
    if !s.is_ascii() {
        return clean_binary_parse_chars(s);
    }
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut out = scratch.borrow_mut();
        out.clear();
        out.resize(s.len() + 2, 0);
        // whitespace other than spaces: `\t`..`\r` and U+001C..U+001F (a branch-free fold)
        let other_ws = s.bytes().fold(false, |acc, b| acc | (b.wrapping_sub(9) < 5) | (b & 0xfc == 0x1c));
        let out: &mut [u8] = &mut out[..];
        if !other_ws {
            // Only spaces (SNLI's parses): every run, of one space or more, becomes one space,
            // so a byte is kept unless it is a bracket or a space after a space (brackets
            // aside); leading spaces go, and at most one trailing space is left.
            let mut w = 0usize;
            let mut prev_space = true;
            for &b in s.as_bytes() {
                let class = ASCII_CLASS[b as usize];
                let bracket = class == BRACKET;
                let space = class == SPACE;
                out[w] = b;
                w += usize::from(!bracket & !(space & prev_space));
                prev_space = if bracket { prev_space } else { space };
            }
            if w > 0 && out[w - 1] == b' ' {
                w -= 1;
            }
            return std::str::from_utf8(&out[..w]).map(str::to_owned).unwrap_or_default();
        }
        // Branch-free over the bytes, with the pending whitespace run in registers: brackets
        // change nothing; whitespace extends the run; any other byte writes the run (its first
        // byte if it is one long, else a space) and itself.
        let mut w = 0usize;
        let mut run = 0u8; // length of the pending run, saturated at 2
        let mut first = b' ';
        for &b in s.as_bytes() {
            let class = ASCII_CLASS[b as usize];
            let keep = class == 0;
            let ws = class == SPACE;
            let pending = usize::from(run > 0);
            out[w] = if run >= 2 { b' ' } else { first };
            out[w + pending] = b;
            w += if keep { pending + 1 } else { 0 };
            first = if ws & (run == 0) { b } else { first };
            run = if keep {
                0
            } else if ws {
                (run + 1).min(2)
            } else {
                run
            };
        }
        if run > 0 {
            out[w] = if run >= 2 { b' ' } else { first };
            w += 1;
        }
        let text = &out[..w];
        let start = text.iter().position(|&b| !is_ascii_py_whitespace(b)).unwrap_or(w);
        let end = text.iter().rposition(|&b| !is_ascii_py_whitespace(b)).map_or(start, |i| i + 1);
        // ASCII in, ASCII out
        std::str::from_utf8(&text[start..end]).map(str::to_owned).unwrap_or_default()
    })
}

const BRACKET: u8 = 1;
const SPACE: u8 = 2;

/// [`BRACKET`] for `(` and `)`, [`SPACE`] for Python's ASCII whitespace, 0 otherwise.
static ASCII_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b == b'(' || b == b')' {
            BRACKET
        } else if matches!(b, b'\t'..=b'\r' | 0x1c..=0x1f | b' ') {
            SPACE
        } else {
            0
        };
        i += 1;
    }
    t
};

/// [`clean_binary_parse`] for any text, character by character.
fn clean_binary_parse_chars(s: &str) -> String {
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

/// What one line gives.
enum Row {
    /// A labelled pair.
    Example(Example),
    /// A pair labelled `-`.
    Skipped,
    /// A blank line or the header.
    Blank,
}

/// Rows of a file (or of a chunk of it), in order.
#[derive(Default)]
struct Parsed {
    examples: Vec<Example>,
    skipped: usize,
    /// Lines that are neither blank nor the header.
    nonblank: usize,
    /// Lines seen.
    lines: usize,
}

impl Parsed {
    fn add(&mut self, row: Row) {
        match row {
            Row::Example(e) => {
                self.examples.push(e);
                self.nonblank += 1;
            }
            Row::Skipped => {
                self.skipped += 1;
                self.nonblank += 1;
            }
            Row::Blank => {}
        }
    }

    fn append(&mut self, mut other: Parsed) {
        self.examples.append(&mut other.examples);
        self.skipped += other.skipped;
        self.nonblank += other.nonblank;
        self.lines += other.lines;
    }
}

/// A line's parser: 1-based line number and text (without its ending) to a row or an error.
type RowFn<'a> = dyn Fn(usize, &str) -> Result<Row> + Sync + 'a;

/// The position after the line ending that starts at `i` (`\n`, `\r\n` or a lone `\r`).
fn after_ending(buf: &[u8], i: usize) -> usize {
    if buf[i] == b'\r' && buf.get(i + 1) == Some(&b'\n') {
        i + 2
    } else {
        i + 1
    }
}

/// Where the complete lines of `buf` end, when more input may follow: after the last `\n`, or
/// after the last `\r` that is not the final byte (a final `\r` may be the first half of `\r\n`).
fn complete_lines_end(buf: &[u8]) -> Option<usize> {
    let i = memchr::memrchr2(b'\n', b'\r', buf)?;
    if buf[i] == b'\r' && i + 1 == buf.len() {
        return memchr::memrchr2(b'\n', b'\r', &buf[..i]).map(|j| after_ending(buf, j));
    }
    Some(i + 1)
}

/// Parses the lines of `text` (complete lines, or the end of the input), the first being line
/// `first`; stops at the first error.
fn parse_chunk(text: &[u8], first: usize, path: &Path, max_line: usize, row: &RowFn<'_>) -> Result<Parsed> {
    let mut out = Parsed::default();
    let mut pos = 0;
    let mut n = first;
    while pos < text.len() {
        let (end, next) = match memchr::memchr2(b'\n', b'\r', &text[pos..]) {
            Some(i) => (pos + i, after_ending(text, pos + i)),
            None => (text.len(), text.len()),
        };
        let line = &text[pos..end];
        if line.len() > max_line {
            return Err(Error::parse(
                path,
                n,
                format!(
                    "line longer than {max_line} bytes (no line break): not a text dataset, or a corrupt one"
                ),
            ));
        }
        let line = std::str::from_utf8(line).map_err(|e| {
            Error::parse(
                path,
                n,
                format!("invalid UTF-8 at byte {} of the line; the file must be UTF-8", e.valid_up_to()),
            )
        })?;
        out.add(row(n, line)?);
        out.lines += 1;
        n += 1;
        pos = next;
    }
    Ok(out)
}

/// Cuts `text` (complete lines) into chunks of about `chunk` bytes, each ending at a line end.
fn chunk_bounds(text: &[u8], chunk: usize) -> Vec<(usize, usize)> {
    let mut bounds = Vec::with_capacity(text.len() / chunk.max(1) + 1);
    let mut start = 0;
    while start < text.len() {
        let target = start.saturating_add(chunk.max(1)).min(text.len());
        let end = match memchr::memchr2(b'\n', b'\r', &text[target - 1..]) {
            Some(i) => after_ending(text, target - 1 + i).min(text.len()),
            None => text.len(),
        };
        bounds.push((start, end));
        start = end;
    }
    bounds
}

/// Parses `text` (complete lines, or the end of the input) in parallel chunks whose first line is
/// `first`; the result and the first error are those of a line-by-line pass.
///
/// Only the first chunk knows its line numbers up front; the others number their lines from 2
/// (never the header's 1) and an error's line is shifted once the chunks before it are counted.
fn parse_region(
    text: &[u8],
    first: usize,
    path: &Path,
    opts: &ReadOptions,
    row: &RowFn<'_>,
) -> Result<Parsed> {
    const PROVISIONAL: usize = 2;
    let bounds = chunk_bounds(text, opts.chunk);
    let parts: Vec<Result<Parsed>> = bounds
        .par_iter()
        .enumerate()
        .map(|(i, &(a, b))| {
            parse_chunk(&text[a..b], if i == 0 { first } else { PROVISIONAL }, path, opts.max_line, row)
        })
        .collect();
    let mut out = Parsed::default();
    for (i, p) in parts.into_iter().enumerate() {
        match p {
            Ok(p) => out.append(p),
            Err(mut e) => {
                if let (true, Error::Parse { line, .. }) = (i > 0, &mut e) {
                    *line = *line - PROVISIONAL + first + out.lines;
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Appends up to `block` bytes of `r` to `buf`; `true` at the end of the input.
fn read_block(r: &mut (dyn Read + Send), buf: &mut Vec<u8>, block: usize, path: &Path) -> Result<bool> {
    buf.reserve(block);
    let got = r.take(block as u64).read_to_end(buf).map_err(|e| Error::io(path, e))?;
    Ok(got < block)
}

/// Reads `r` block by block and parses its lines in parallel (see [`ReadOptions`]), reading the
/// next block while the current one is parsed. Memory stays within two blocks plus one line: a
/// line over `max_line` bytes is refused as soon as it is seen.
fn par_lines(r: &mut (dyn Read + Send), path: &Path, opts: &ReadOptions, row: &RowFn<'_>) -> Result<Parsed> {
    let block = opts.block.max(1);
    let mut out = Parsed::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut spare: Vec<u8> = Vec::new();
    let mut eof = read_block(r, &mut buf, block, path)?;
    loop {
        let end = if eof { buf.len() } else { complete_lines_end(&buf).unwrap_or(0) };
        let first = out.lines + 1;
        // the incomplete last line goes first into the next buffer
        spare.clear();
        spare.extend_from_slice(&buf[end..]);
        let (read, parsed) = if eof {
            (Ok(true), parse_region(&buf, first, path, opts, row))
        } else if end < OVERLAP_BYTES {
            let parsed = parse_region(&buf[..end], first, path, opts, row);
            let read = if parsed.is_ok() { read_block(r, &mut spare, block, path) } else { Ok(false) };
            (read, parsed)
        } else {
            rayon::join(
                || read_block(r, &mut spare, block, path),
                || parse_region(&buf[..end], first, path, opts, row),
            )
        };
        out.append(parsed?);
        if eof {
            return Ok(out);
        }
        let pending = buf.len() - end - usize::from(buf.last() == Some(&b'\r'));
        if pending > opts.max_line {
            return Err(Error::parse(
                path,
                out.lines + 1,
                format!(
                    "line longer than {} bytes (no line break): not a text dataset, or a corrupt one",
                    opts.max_line
                ),
            ));
        }
        eof = read?;
        std::mem::swap(&mut buf, &mut spare);
    }
}

/// Complete lines worth reading the next block in parallel with (1 MiB).
const OVERLAP_BYTES: usize = 1 << 20;

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
        for (block, chunk) in [(1 << 20, 1 << 20), (7, 5), (100, 1), (150, 40)] {
            let opts = ReadOptions { block, chunk, max_line: 100 };
            let mut r = text.as_bytes();
            let e = read_format(&mut r, Path::new("long.tsv"), Format::Tsv, &opts).unwrap_err().to_string();
            assert!(
                e.starts_with("long.tsv:3:") && e.contains("longer than 100 bytes"),
                "{block} {chunk}: {e}"
            );
        }
        let mut lines = LineReader::new(Box::new(text.as_bytes()), Path::new("long.tsv"));
        lines.max_line = 100;
        assert!(lines.next_line().is_ok() && lines.next_line().is_ok() && lines.next_line().is_err());
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
