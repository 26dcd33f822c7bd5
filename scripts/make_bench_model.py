#!/usr/bin/env python3
"""Make a d2l "bert.small"-shaped checkpoint with random weights (offline).

WHAT
    Writes DIR/vocab.json and DIR/pretrained.params, the two files of d2l's
    bert.small.torch.zip, without downloading anything:

      * vocab.json: a JSON list (index = id):
          ['<unk>', '<pad>', '<mask>', '<cls>', '<sep>']
          + every distinct lower-cased whitespace token of the premise and
            hypothesis columns of shared/data/snli_dev.tsv, by descending
            frequency (ties: first occurrence, reading row by row, premise
            before hypothesis)
          + '<filler_N>' tokens up to exactly --vocab entries (default 60005,
            bert.small's size, see docs/d2l.md).
      * pretrained.params: torch.save(state_dict) (zip container, float32) of
          d2l.BERTModel(len(vocab), 256, norm_shape=[256], ffn_num_input=256,
                        ffn_num_hiddens=512, num_heads=4, num_layers=2,
                        dropout=0.2, max_len=512, key_size=256,
                        query_size=256, value_size=256, hid_in_features=256,
                        mlm_in_features=256, nsp_in_features=256)
        created after torch.manual_seed(--seed): PyTorch default init, i.e.
        exactly the structure (keys, shapes, dtype) that the notebook's
        load_pretrained_model expects, with random weights.

WHY
    Throughput benchmarks (scripts/bench_cpu.sh, scripts/bench_cpu_peer.py)
    need the real bert.small shapes (incl. the 60005 x 256 token embedding
    that Adam updates every step) but cannot download d2l's weights.
    Accuracy is meaningless with these weights; speed is not.

HOW
    python3 scripts/make_bench_model.py --out /tmp/nli-bert-bench/bert.small
        [--vocab 60005] [--seed 0] [--data shared/data/snli_dev.tsv]

    Data is found via --data, else $NLI_BERT_SHARED_DATA/snli_dev.tsv, else
    ../../shared/data/snli_dev.tsv relative to this script, else
    /work/shared/data/snli_dev.tsv. Takes a few seconds; needs torch and
    d2l==0.17.6 (heavy imports stubbed by scripts/d2l_stubs.py).
"""

import argparse
import collections
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import d2l_stubs  # noqa: E402

d2l_stubs.install()
from d2l import torch as d2l  # noqa: E402

RESERVED = ['<unk>', '<pad>', '<mask>', '<cls>', '<sep>']


def find_data(name='snli_dev.tsv'):
    here = os.path.dirname(os.path.abspath(__file__))
    cands = []
    env = os.environ.get('NLI_BERT_SHARED_DATA')
    if env:
        cands.append(os.path.join(env, name))
    cands.append(os.path.join(here, '..', '..', 'shared', 'data', name))
    cands.append(os.path.join('/work/shared/data', name))
    for c in cands:
        if os.path.isfile(c):
            return os.path.abspath(c)
    sys.exit('cannot find %s (tried %s); set NLI_BERT_SHARED_DATA or pass '
             '--data' % (name, ', '.join(cands)))


def build_vocab(data_path, size):
    counter = collections.Counter()
    with open(data_path, encoding='utf-8') as f:
        header = f.readline()
        assert header.rstrip('\n').split('\t')[:3] == [
            'label', 'premise', 'hypothesis'], header
        for line in f:
            cols = line.rstrip('\n').split('\t')
            if len(cols) < 3:
                continue
            for s in cols[1:3]:
                counter.update(s.lower().split())
    # Counter.most_common: sorted by count, ties in first-insertion order.
    words = [t for t, _ in counter.most_common() if t not in RESERVED]
    vocab = RESERVED + words
    if len(vocab) > size:
        sys.exit('--vocab %d is smaller than the %d tokens needed'
                 % (size, len(vocab)))
    n = 0
    while len(vocab) < size:
        vocab.append('<filler_%d>' % n)
        n += 1
    return vocab, len(words), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', required=True)
    ap.add_argument('--vocab', type=int, default=60005)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--data', default=None)
    args = ap.parse_args()
    data = args.data or find_data()

    vocab, n_words, n_fill = build_vocab(data, args.vocab)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'vocab.json'), 'w') as f:
        json.dump(vocab, f)

    torch.manual_seed(args.seed)
    bert = d2l.BERTModel(len(vocab), 256, norm_shape=[256],
                         ffn_num_input=256, ffn_num_hiddens=512,
                         num_heads=4, num_layers=2, dropout=0.2,
                         max_len=512, key_size=256, query_size=256,
                         value_size=256, hid_in_features=256,
                         mlm_in_features=256, nsp_in_features=256)
    state = bert.float().state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    torch.save(state, os.path.join(args.out, 'pretrained.params'))
    n_params = sum(v.numel() for v in state.values())
    print('wrote %s: vocab %d (%d specials, %d snli_dev words, %d fillers), '
          '%d tensors, %d params (float32), seed %d, data %s'
          % (args.out, len(vocab), len(RESERVED), n_words, n_fill,
             len(state), n_params, args.seed, data))


if __name__ == '__main__':
    main()
