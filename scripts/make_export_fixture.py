#!/usr/bin/env python3
"""Fixture for `nli-bert export --to hf`, made with the REAL transformers.

WHAT
    Loads a directory written by
        nli-bert export --model tests/fixtures/hf/tiny_safetensors --to hf --out DIR
    with AutoModelForSequenceClassification.from_pretrained and AutoTokenizer.from_pretrained,
    checks that transformers found every weight it expects and nothing else (no missing,
    unexpected or mismatched keys), and writes tests/fixtures/hf/export/expected.json:
      - transformers' and torch's versions, the tokenizer class;
      - the SHA-1 of the exported model.safetensors, config.json, vocab.txt and
        tokenizer_config.json (the fixture belongs to exactly those bytes);
      - the state dict's names and shapes;
      - for a few premise/hypothesis pairs: input_ids, token_type_ids (max_length 64,
        truncation longest_first) and the f32 logits in eval mode (dropout off).

WHY
    tests/hf_export.rs exports the same model, checks the bytes are the ones loaded here, and
    checks that nli-bert's own logits on the exported directory match transformers' (1e-5).

HOW TO RUN (seconds, CPU)
    pip install torch transformers safetensors
    cargo run --release -- export --model tests/fixtures/hf/tiny_safetensors --to hf --out /tmp/exp
    python3 scripts/make_export_fixture.py --exported /tmp/exp
"""
import argparse
import hashlib
import json
import os

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

PAIRS = [
    ("a man plays a guitar", "a person plays music"),
    ("the dog runs", "a cat sleeps on the sofa"),
    ("two women are walking down the street together", "nobody is outside"),
    ("A Man, A PLAN: a canal!", "panama"),
    ("x", "y"),
    ("the quick brown fox jumps over the lazy dog " * 6, "a fox"),
]
FILES = ["model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json"]


def sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exported", required=True, help="the directory nli-bert export wrote")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf",
                                                 "export", "expected.json"))
    args = ap.parse_args()

    torch.manual_seed(0)
    model, info = AutoModelForSequenceClassification.from_pretrained(args.exported, output_loading_info=True)
    problems = {k: sorted(map(str, v)) for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"transformers did not load the export cleanly: {problems}")
    tok = AutoTokenizer.from_pretrained(args.exported)
    model.eval()
    rows = []
    for p, h in PAIRS:
        enc = tok(p, h, truncation="longest_first", max_length=64, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0].tolist()
        rows.append({
            "premise": p,
            "hypothesis": h,
            "input_ids": enc["input_ids"][0].tolist(),
            "token_type_ids": enc["token_type_ids"][0].tolist(),
            "logits": logits,
        })
    out = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizer_class": type(tok).__name__,
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "sha1": {f: sha1(os.path.join(args.exported, f)) for f in FILES},
        "state_dict": {k: list(v.shape) for k, v in model.state_dict().items()},
        "pairs": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {len(rows)} pairs, {len(out['state_dict'])} tensors, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
