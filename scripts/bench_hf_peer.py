#!/usr/bin/env python3
"""Training throughput of Hugging Face transformers (BERT, bf16 autocast, dynamic padding): the peer of
`nli-bert finetune` on a bert.base-shaped model (docs/performance.md).

WHAT
    A randomly initialised BertForSequenceClassification (3 labels) of a given shape, built from a
    BertConfig (nothing downloaded), trained on an NLI TSV (label<TAB>premise<TAB>hypothesis) the
    way transformers' Trainer would with `--bf16`: torch.autocast(bfloat16) around the forward
    pass and loss, fp32 master weights, torch.optim.AdamW(fused=True on CUDA: the Trainer's
    default optimiser `adamw_torch_fused` with torch >= 2.8), lr 5e-5, weight decay 0.01,
    dropout 0.1, batches shuffled and padded to their longest pair (dynamic padding, pinned host
    tensors), the attention implementation transformers picks by default (sdpa). Pairs are
    tokenised once, before timing, by transformers' BERT tokenizer on the given vocab.txt (lower-cased,
    longest_first truncation to --max-len; loaded through AutoTokenizer).

    Timing: --warmup untimed steps, then --steps timed steps; each timed step is the
    host-to-device copy, forward, backward and optimiser step, with the device synchronised
    before and after it (the loss is read back every step, as a Trainer logging the loss would
    not, but the synchronisation already costs that). Reports examples/s over the timed steps,
    tokens/s (padded and real), peak device memory.

    Shapes (--shape): bert.base (768 hidden, 12 layers, 12 heads, 3072 FFN: BertConfig's
    defaults), bert.small (256, 2, 4, 512: d2l's bert.small sizes, but HF's block: GELU,
    embedding LayerNorm), tiny (64, 2, 2, 128: for smoke runs on a CPU). Vocabulary size = the
    vocab.txt's (tests/fixtures/hf/vocab.txt is bert-base-uncased's 30,522).

    --save-model DIR writes the initial (untrained) model as a Hugging Face directory
    (config.json, model.safetensors, vocab.txt, tokenizer_config.json), so that `nli-bert
    finetune --model DIR` starts from exactly the same weights and tokenisation
    (scripts/gpu_run.sh does this for the bert.base comparison).

HOW
    python3 scripts/bench_hf_peer.py --vocab tests/fixtures/hf/vocab.txt --data snli_dev.tsv
        [--shape bert.base] [--device cuda] [--precision bf16|fp32] [--batch-size 512]
        [--steps 30] [--warmup 5] [--max-len 128] [--save-model DIR] [--json]

    CPU smoke run: --device cpu --shape tiny --precision fp32 --steps 2 --warmup 1
    With --json the last line of stdout is one JSON object:
      {"peer": "transformers <ver> torch <ver>", "shape", "precision", "device", "device_name",
       "batch_size", "steps", "examples_per_sec", "tokens_per_sec", "mean_padded_len",
       "mean_valid_len", ...}
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
import transformers
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}
TOKENIZER_CONFIG = {"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}
SHAPES = {  # hidden, layers, heads, ffn
    "bert.base": (768, 12, 12, 3072),
    "bert.small": (256, 2, 4, 512),
    "tiny": (64, 2, 2, 128),
}


def read_tsv(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header[:3] == ["label", "premise", "hypothesis"], header
        for line in f:
            cols = line.rstrip("\n").rstrip("\r").split("\t")
            if len(cols) >= 3 and cols[0].strip() in LABELS:
                rows.append((cols[1], cols[2], LABELS[cols[0].strip()]))
    return rows


def load_tokenizer(vocab_txt):
    """transformers' BERT tokenizer for a vocab.txt, through AutoTokenizer on a directory holding it
    and a tokenizer_config.json (transformers 5 ignores BertTokenizer(vocab_file=...))."""
    with open(vocab_txt, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    with tempfile.TemporaryDirectory() as d:
        shutil.copyfile(vocab_txt, os.path.join(d, "vocab.txt"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(TOKENIZER_CONFIG, f)
        tok = AutoTokenizer.from_pretrained(d)
    if len(tok) != n:
        sys.exit(f"bench_hf_peer.py: the tokenizer has {len(tok)} entries, {vocab_txt} {n} lines")
    return tok


def collate(items, pad_id, pin):
    n = max(len(ids) for ids, _, _ in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    types = torch.zeros((len(items), n), dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, (x, t, _) in enumerate(items):
        ids[i, : len(x)] = torch.tensor(x)
        types[i, : len(t)] = torch.tensor(t)
        mask[i, : len(x)] = 1
    labels = torch.tensor([y for _, _, y in items])
    batch = (ids, types, mask, labels)
    if pin:
        batch = tuple(t.pin_memory() for t in batch)
    return batch, int(mask.sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", required=True, help="a BERT vocab.txt (e.g. tests/fixtures/hf/vocab.txt)")
    ap.add_argument("--data", required=True, help="label/premise/hypothesis TSV")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="bert.base")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--save-model", metavar="DIR", help="write the initial model as an HF directory")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (dynamic shapes: batches are padded per batch)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            sys.exit(f"bench_hf_peer.py: --device {args.device} but torch.cuda is not available (torch {torch.__version__})")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = "cpu"

    torch.manual_seed(args.seed)
    hidden, layers, heads, ffn = SHAPES[args.shape]
    tok = load_tokenizer(args.vocab)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        num_labels=3,
        id2label={v: k for k, v in LABELS.items()},
        label2id=dict(LABELS),
    )
    t0 = time.perf_counter()
    model = BertForSequenceClassification(config)
    t_init = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    if args.save_model:
        os.makedirs(args.save_model, exist_ok=True)
        model.save_pretrained(args.save_model)
        shutil.copyfile(args.vocab, os.path.join(args.save_model, "vocab.txt"))
        with open(os.path.join(args.save_model, "tokenizer_config.json"), "w") as f:
            json.dump(TOKENIZER_CONFIG, f)
        print(f"saved the initial model ({n_params} parameters) to {args.save_model}", flush=True)

    t0 = time.perf_counter()
    rows = read_tsv(args.data)
    enc = tok([p for p, _, _ in rows], [h for _, h, _ in rows], truncation="longest_first", max_length=args.max_len)
    data = [(enc["input_ids"][i], enc["token_type_ids"][i], rows[i][2]) for i in range(len(rows))]
    t_tok = time.perf_counter() - t0

    model.to(device)
    model.train()
    step_model = torch.compile(model, dynamic=True) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=cuda or None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    gen = torch.Generator().manual_seed(args.seed)

    def batches():
        while True:
            order = torch.randperm(len(data), generator=gen).tolist()
            for b in range(0, len(order) - args.batch_size + 1, args.batch_size):
                yield collate([data[i] for i in order[b : b + args.batch_size]], tok.pad_token_id, cuda)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    stream = batches()
    times, losses, padded, valid = [], [], 0, 0
    for i in range(args.warmup + args.steps):
        (ids, types, mask, labels), n_valid = next(stream)
        sync()
        tik = time.perf_counter()
        ids, types, mask, labels = (t.to(device, non_blocking=True) for t in (ids, types, mask, labels))
        with autocast:
            out = step_model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        sync()
        dt = time.perf_counter() - tik
        if i >= args.warmup:
            times.append(dt)
            losses.append(loss)
            padded += ids.numel()
            valid += n_valid

    total = sum(times)
    n_ex = args.steps * args.batch_size
    eps = n_ex / total
    med = statistics.median(times)
    res = {
        "peer": f"transformers {transformers.__version__} torch {torch.__version__}",
        "shape": args.shape,
        "params": n_params,
        "precision": args.precision,
        "compiled": bool(args.compile),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "optimizer": "AdamW(fused)" if cuda else "AdamW",
        "device": str(device),
        "device_name": device_name,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "examples_per_sec": round(eps, 2),
        "examples_per_sec_median_step": round(args.batch_size / med, 2),
        "tokens_per_sec_padded": round(padded / total, 1),
        "tokens_per_sec_valid": round(valid / total, 1),
        "mean_padded_len": round(padded / n_ex, 2),
        "mean_valid_len": round(valid / n_ex, 2),
        "median_step_s": round(med, 5),
        "min_step_s": round(min(times), 5),
        "max_step_s": round(max(times), 5),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "init_s": round(t_init, 3),
        "tokenize_s": round(t_tok, 3),
        "examples_in_data": len(data),
        "max_len": args.max_len,
        "lr": args.lr,
    }
    if cuda:
        res["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    where = f"{device} ({device_name})" if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"transformers {args.shape} {args.precision}, dynamic padding: {eps:.1f} examples/sec on {where}, "
        f"{args.steps} steps x batch {args.batch_size} after {args.warmup} warm-up; median step {med * 1e3:.1f} ms; "
        f"mean padded len {res['mean_padded_len']}, valid {res['mean_valid_len']}",
        flush=True,
    )
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
