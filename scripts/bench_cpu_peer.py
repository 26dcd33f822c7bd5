#!/usr/bin/env python3
"""Throughput of the seed's d2l PyTorch code (the peer of `nli-bert finetune`), CPU or CUDA.

WHAT
    Runs the training step of d2l's "Natural Language Inference: Fine-Tuning
    BERT" (seed: shared/seed/natural-language-inference-bert.zh.txt) on the CPU
    (default) or a CUDA GPU (--device cuda) and reports training
    examples/sec, timed the way d2l.train_ch13 times it (only the
    train_batch_ch13 call + metric update, per step). The seed's code is
    imported from scripts/d2l_seed.py (shared with make_d2l_fixtures.py):

      * load_pretrained_model as in the notebook, but reading DIR instead of
        d2l.download_extract('bert.small'): vocab.json -> d2l.Vocab,
        d2l.BERTModel with the notebook's hard-coded shapes (dropout 0.2),
        load_state_dict(torch.load(DIR/pretrained.params));
      * the notebook's SNLIBERTDataset (verbatim, '' -> '<pad>' which the
        scraped seed lost; multiprocessing.Pool(4) included, so the script's
        entry point is guarded by __main__), max_len 128;
      * the notebook's BERTClassifier (nn.Linear(256, 3)), Adam lr 1e-4,
        nn.CrossEntropyLoss(reduction='none');
      * the step is d2l.train_batch_ch13 itself (net.train(); zero_grad;
        l = loss(net(X), y); l.sum().backward(); trainer.step(); plus its
        loss/accuracy sums), followed by train_ch13's metric.add.
        On the CPU, train_ch13's nn.DataParallel wrapper is omitted (without
        CUDA it is a pass-through). With --device cuda[:N] the model is wrapped
        as train_ch13 does, nn.DataParallel(net, device_ids=[dev]).to(dev)
        (--no-data-parallel drops it), batches are built on the CPU and moved
        by train_batch_ch13 inside the timed region, as in the book, and the
        device is synchronised (torch.cuda.synchronize) before and after each
        timed step. fp32 as the book (TF32 matmuls stay off: PyTorch's
        default; the JSON says so).

    Padding:
      fixed   - the seed's behaviour: every batch is (64, 128).
      dynamic - the same tensors, each batch sliced to its longest example:
                token_ids[:, :L], segments[:, :L], L = max(valid_lens). The
                function computed is identical (pads are masked keys and only
                <cls> feeds the classifier); only wasted work is removed.

    Data: a TSV with header `label<TAB>premise<TAB>hypothesis`, labels
    entailment/contradiction/neutral -> 0/1/2 (d2l.read_snli's mapping).
    Batches: DataLoader(shuffle=True) with a torch.Generator seeded by --seed,
    num_workers=--num-workers (default 0: the notebook uses 4 worker
    processes, which on a 2-core machine would steal CPU from the timed steps
    while they prefetch; 0 keeps batch assembly outside the timed region, as
    d2l's timer intends). The loader cycles over epochs if steps exceed it.

HOW
    python3 scripts/bench_cpu_peer.py --model DIR --data FILE.tsv
        [--batch-size 64] [--steps 30] [--warmup 3] [--threads 2]
        [--padding fixed|dynamic] [--max-len 128] [--json]
        [--device cpu|cuda|cuda:N] [--no-data-parallel]

    The GPU peer of the book's run (scripts/gpu_run.sh runs it):
      ... --device cuda --batch-size 512 --padding fixed

    DIR holds vocab.json + pretrained.params (d2l's bert.small layout; make a
    random one with scripts/make_bench_model.py). Prints examples/sec over
    the `steps` timed steps after `warmup` untimed ones; with --json also one
    JSON line (the last line of stdout):
      {"peer": "d2l-0.17.6 pytorch-<ver>", "padding", "batch_size", "steps",
       "examples_per_sec", "threads", "mean_tokens", "device",
       "device_name", ...}
    mean_tokens = mean sequence length fed to the model per example over the
    timed steps (128 for fixed padding); mean_valid_len = mean real tokens.
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The seed's load_pretrained_model, SNLIBERTDataset and BERTClassifier, and d2l
# with its heavy imports stubbed (scripts/d2l_seed.py, shared with
# make_d2l_fixtures.py).
from d2l_seed import (BERTClassifier, SNLIBERTDataset, d2l,  # noqa: E402
                      load_pretrained_model)
import d2l as d2l_pkg  # noqa: E402

# d2l.Accumulator does float(l) on a tensor that requires grad (harmless).
warnings.filterwarnings('ignore', message='Converting a tensor with requires_grad')

LABELS = {'entailment': 0, 'contradiction': 1, 'neutral': 2}




def read_tsv(path):
    """(premises, hypotheses, labels) like d2l.read_snli, from the TSV."""
    premises, hypotheses, labels = [], [], []
    with open(path, encoding='utf-8') as f:
        header = f.readline().rstrip('\n').split('\t')
        assert header[:3] == ['label', 'premise', 'hypothesis'], header
        for line in f:
            cols = line.rstrip('\n').split('\t')
            if len(cols) < 3 or cols[0] not in LABELS:
                continue
            labels.append(LABELS[cols[0]])
            premises.append(cols[1])
            hypotheses.append(cols[2])
    return premises, hypotheses, labels


def batches(loader, padding):
    """Endless stream of (X list, y, L) from the loader (cycling epochs)."""
    while True:
        for (tokens, segments, valid_lens), y in loader:
            if padding == 'dynamic':
                L = int(valid_lens.max())
                tokens, segments = tokens[:, :L], segments[:, :L]
            yield [tokens, segments, valid_lens], y


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True,
                    help='dir with vocab.json + pretrained.params')
    ap.add_argument('--data', required=True, help='label/premise/hypothesis TSV')
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--steps', type=int, default=30)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--padding', choices=['fixed', 'dynamic'],
                    default='fixed')
    ap.add_argument('--max-len', type=int, default=128)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--num-workers', type=int, default=0)
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--device', default='cpu',
                    help='cpu (default), cuda or cuda:N')
    ap.add_argument('--no-data-parallel', action='store_true',
                    help="on CUDA, don't wrap the model in nn.DataParallel "
                    "as d2l.train_ch13 does")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    if cuda:
        if not torch.cuda.is_available():
            sys.exit('bench_cpu_peer.py: --device %s but torch.cuda is not '
                     'available (torch %s)' % (args.device, torch.__version__))
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        torch.cuda.set_device(device)
        device_name = torch.cuda.get_device_name(device)
        where = f'{device} ({device_name})'
    elif device.type == 'cpu':
        device_name = 'cpu'
        where = f'cpu ({args.threads} threads)'
    else:
        sys.exit('bench_cpu_peer.py: --device must be cpu, cuda or cuda:N')
    devices = [device]

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    bert, vocab = load_pretrained_model(
        args.model, num_hiddens=256, ffn_num_hiddens=512, num_heads=4,
        num_layers=2, dropout=0.1, max_len=512, devices=devices)
    t_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_set = SNLIBERTDataset(read_tsv(args.data), args.max_len, vocab)
    t_data = time.perf_counter() - t0
    gen = torch.Generator()
    gen.manual_seed(args.seed)
    train_iter = torch.utils.data.DataLoader(
        train_set, args.batch_size, shuffle=True, generator=gen,
        num_workers=args.num_workers)

    net = BERTClassifier(bert)
    lr = 1e-4
    trainer = torch.optim.Adam(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss(reduction='none')
    if cuda:
        # d2l.train_ch13: the parameters move in place, so `trainer` keeps them.
        if args.no_data_parallel:
            net = net.to(devices[0])
        else:
            net = nn.DataParallel(net, device_ids=devices).to(devices[0])
        torch.cuda.reset_peak_memory_stats(device)

    times, seq_lens, valid_tok, n_ex = [], [], 0, 0
    metric = d2l.Accumulator(4)
    stream = batches(train_iter, args.padding)
    for i in range(args.warmup + args.steps):
        features, labels = next(stream)
        sync()
        tik = time.perf_counter()
        l, acc = d2l.train_batch_ch13(net, features, labels, loss, trainer,
                                      devices)
        metric.add(l, acc, labels.shape[0], labels.numel())
        sync()
        dt = time.perf_counter() - tik
        if i >= args.warmup:
            times.append(dt)
            n_ex += labels.shape[0]
            seq_lens.append(features[0].shape[1] * labels.shape[0])
            valid_tok += int(features[2].sum())

    total = sum(times)
    eps = n_ex / total
    med = statistics.median(times)
    res = {
        'peer': 'd2l-%s pytorch-%s' % (d2l_pkg.__version__, torch.__version__),
        'padding': args.padding,
        'batch_size': args.batch_size,
        'steps': args.steps,
        'examples_per_sec': round(eps, 2),
        'threads': args.threads,
        'mean_tokens': round(sum(seq_lens) / n_ex, 2),
        'mean_valid_len': round(valid_tok / n_ex, 2),
        'warmup': args.warmup,
        'max_len': args.max_len,
        'median_step_s': round(med, 5),
        'examples_per_sec_median_step': round(args.batch_size / med, 2),
        'min_step_s': round(min(times), 5),
        'max_step_s': round(max(times), 5),
        'train_loss': round(metric[0] / metric[2], 4),
        'load_s': round(t_load, 3),
        'dataset_s': round(t_data, 3),
        'examples_in_data': len(train_set),
        'device': str(device),
        'device_name': device_name,
    }
    if cuda:
        res['data_parallel'] = not args.no_data_parallel
        res['tf32_matmul'] = bool(torch.backends.cuda.matmul.allow_tf32)
        res['peak_mem_mib'] = round(
            torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(f'{args.padding} padding: {eps:.1f} examples/sec on {where}, '
          f'{args.steps} steps x batch '
          f'{args.batch_size} after {args.warmup} warm-up; median step '
          f'{med * 1e3:.1f} ms; mean seq len fed {res["mean_tokens"]}, '
          f'mean valid len {res["mean_valid_len"]}')
    if args.json:
        print(json.dumps(res))


if __name__ == '__main__':
    main()
