#!/usr/bin/env python3
"""Reference fixtures from d2l's own PyTorch code (d2l==0.17.6, "LEGACY").

WHAT
    Runs the chapter "Natural Language Inference: Fine-Tuning BERT"
    (seed: shared/seed/natural-language-inference-bert.zh.txt) end to end on a
    tiny, fully deterministic setup and writes the reference outputs that the
    Rust tests compare against:

      * 16 consecutive SNLI dev pairs (shared/data/snli_dev.tsv, data rows
        START_ROW..START_ROW+15), dataset max_len = 20 so that 5 of the 16
        pairs are truncated (premise-only, hypothesis-only/ties, alternating);
      * a vocabulary built by d2l.Vocab(tokens of those pairs, min_freq=2,
        reserved_tokens=['<pad>', '<mask>', '<cls>', '<sep>']) -> vocab.json
        (so rare words map to <unk>);
      * the dataset tensors built by the notebook's SNLIBERTDataset (copied
        verbatim in scripts/d2l_seed.py, multiprocessing.Pool(4) included);
      * a small d2l.BERTModel (d=32, ffn 64, 4 heads, 2 blocks, dropout 0,
        max_len 64) in float64, seed 0, PyTorch default init except that every
        LayerNorm weight/bias is perturbed with small noise; its state_dict
        plus the classifier's output.weight/output.bias, saved with torch.save
        in the zip container (pretrained.params) and in the legacy container
        (pretrained_legacy.params);
      * the notebook's BERTClassifier (output = nn.Linear(32, 3) instead of the
        hard-coded 256): train-mode logits, per-example CrossEntropy losses and
        the gradient of l.sum() for every parameter of `net`;
      * 3 Adam steps (lr 1e-3) with d2l.train_batch_ch13 on the same batch
        (params after step 1 and step 3), and 3 AdamW steps (lr 1e-3,
        weight_decay 0.01) from the same initial weights (params after step 3);
      * eval-mode logits after the 3 Adam steps and the
        d2l.evaluate_accuracy_gpu-style correct count.

WHY
    The Rust engine must compute exactly d2l's function (incl. quirks: the
    positional embedding is added through `.data` and never gets a gradient,
    masking assigns -1e6, post-LN AddNorm, ReLU FFN, sum-of-losses backward).
    Everything is float64 so the Rust f64 path can be checked to ~1e-10
    relative and the f32 path to ~1e-5.

HOW TO RUN (CPU only, a few seconds; needs torch, safetensors, and
d2l==0.17.6 installed with --no-deps; the heavy d2l imports are stubbed by
scripts/d2l_stubs.py):

    python3 scripts/make_d2l_fixtures.py [--out tests/fixtures/d2l]

OUTPUT (in --out)
    vocab.json                 idx_to_token list (json.dump, ensure_ascii default)
    batch.json                 raw strings, labels, truncated tokens, token_ids,
                               segments, valid_lens, max_len, source rows
    pretrained.params          torch.save(state) (zip container), float64
    pretrained_legacy.params   torch.save(state, _use_new_zipfile_serialization=False)
                               (not byte-reproducible: storage keys are
                               memory addresses; its content is)
    expected.safetensors       float64: logits, losses, eval_logits,
                               grad.<name>, step1.<name>, step3.<name>,
                               adamw_step3.<name>
    meta.json                  config, optimiser settings, per-step loss sums,
                               correct counts, params without grad, versions

Note on the seed: the scraped notebook lost its HTML-like tokens, so it reads
`self.vocab['']` where d2l's real code has `self.vocab['<pad>']` (and the
comment lists '' three times for <CLS>/<SEP>/<SEP>). The real code is used.
"""

import argparse
import collections
import copy
import json
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The seed's SNLIBERTDataset and BERTClassifier (verbatim; the classifier's
# input width is a parameter there, the notebook hard-codes 256), and d2l with
# its heavy imports stubbed.
from d2l_seed import BERTClassifier, SNLIBERTDataset, d2l  # noqa: E402

import safetensors  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNLI_DEV = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'data',
                        'snli_dev.tsv')

# ---- fixed choices -------------------------------------------------------
START_ROW = 8438      # 0-based data row (file line START_ROW + 2)
N_PAIRS = 16
MAX_LEN = 20          # dataset max_len (premise+hypothesis budget 17 tokens)
MIN_FREQ = 2
RESERVED = ['<pad>', '<mask>', '<cls>', '<sep>']
NUM_HIDDENS, FFN_HIDDENS, NUM_HEADS, NUM_LAYERS = 32, 64, 4, 2
MAX_POSITIONS = 64    # BERTModel max_len (rows of encoder.pos_embedding)
DROPOUT = 0.0
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
ADAMW_WD = 0.01
N_STEPS = 3
INIT_SEED = 0
LN_SEED = 1
LN_NOISE = 0.1
LABELS = {'entailment': 0, 'contradiction': 1, 'neutral': 2}

NOTES = [
    'grad.encoder.blks.*.attention.W_k.bias is mathematically 0 (softmax is '
    'invariant to the per-query constant q.b_k); the stored values are '
    'float64 rounding noise (~1e-17). Compare gradients with an absolute '
    'tolerance scaled by the largest gradient, not elementwise-relative.',
    'Because of that noise, Adam moves W_k.bias by only ~1e-12 in float64 '
    '(step1/step3), but in float32 the noise is ~1e-9 ~ eps, so Adam\'s '
    'm/(sqrt(v)+eps) can move it by up to ~lr per step: exempt '
    'attention.W_k.bias from float32 step comparisons (or use atol ~ '
    'steps*lr). adamw_step3 W_k.bias changes ~5e-6, all weight decay.',
    'Token-embedding gradient rows of tokens absent from the batch (<mask>) '
    'and of <pad> are exactly 0 (pads are masked as keys and only <cls> '
    'feeds the classifier).',
    'encoder.pos_embedding has no grad (d2l 0.17.6 adds pos_embedding.data), '
    'so Adam/AdamW skip it: step*/adamw_step3 pos_embedding == initial.',
    'eval_logits use the weights after the 3 Adam steps (= step3.*).',
    'pretrained_legacy.params is not byte-reproducible: legacy torch.save '
    'uses storage memory addresses as storage keys; raw data follows in the '
    'order of the key list pickled after the object.',
    'd2l 0.17.6 Vocab orders tokens by descending count, ties in first-'
    'occurrence order (stable sort of a Counter), not alphabetically.',
]


def read_pairs(path, start, n):
    """Read n consecutive labelled pairs starting at data row `start`.

    Returns (premises, hypotheses, labels) like d2l.read_snli. The TSV is
    already cleaned upstream (no parse brackets), so only the label mapping
    and filtering of read_snli apply."""
    with open(path, encoding='utf-8', newline=None) as f:
        rows = [line.rstrip('\n').split('\t') for line in f.readlines()[1:]]
    rows = [r for r in rows if r[0] in LABELS]
    rows = rows[start:start + n]
    premises = [r[1] for r in rows]
    hypotheses = [r[2] for r in rows]
    labels = [LABELS[r[0]] for r in rows]
    return premises, hypotheses, labels




def truncated_tokens(premise, hypothesis, max_len):
    """Tokens after d2l's truncation (for batch.json / debugging only)."""
    p, h = premise.lower().split(), hypothesis.lower().split()
    orig = (len(p), len(h))
    SNLIBERTDataset._truncate_pair_of_tokens(
        type('X', (), {'max_len': max_len})(), p, h)
    tokens, _ = d2l.get_tokens_and_segments(p, h)
    return tokens, orig, (len(p), len(h))


def params_of(net, prefix):
    return {prefix + k: v.detach().clone().contiguous()
            for k, v in net.state_dict().items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(REPO_ROOT, 'tests',
                                                  'fixtures', 'd2l'))
    ap.add_argument('--data', default=SNLI_DEV)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    # 1. data ---------------------------------------------------------------
    premises, hypotheses, labels = read_pairs(args.data, START_ROW, N_PAIRS)
    assert len(premises) == N_PAIRS and len(set(labels)) == 3

    # 2. vocab (d2l.Vocab, built from the 16 pairs) ---------------------------
    all_tokens = d2l.tokenize([s.lower() for s in premises + hypotheses],
                              'word')
    vocab = d2l.Vocab(all_tokens, min_freq=MIN_FREQ, reserved_tokens=RESERVED)
    with open(os.path.join(args.out, 'vocab.json'), 'w') as f:
        json.dump(vocab.idx_to_token, f)
    n_unk_types = sum(1 for t, c in vocab.token_freqs if c < MIN_FREQ)

    # 3. dataset (the notebook's SNLIBERTDataset) -----------------------------
    dataset = SNLIBERTDataset((premises, hypotheses, labels), MAX_LEN, vocab)
    token_ids = dataset.all_token_ids
    segments = dataset.all_segments
    valid_lens = dataset.valid_lens
    y = dataset.labels
    assert token_ids.shape == (N_PAIRS, MAX_LEN)
    tok_info = [truncated_tokens(p, h, MAX_LEN)
                for p, h in zip(premises, hypotheses)]
    truncated = [i for i, (_, o, t) in enumerate(tok_info) if o != t]
    assert len(truncated) >= 2
    for i, (toks, _, _) in enumerate(tok_info):
        assert token_ids[i].tolist()[:len(toks)] == vocab[toks]
        assert int(valid_lens[i]) == len(toks)

    # 4. model in float64, seed 0 --------------------------------------------
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(INIT_SEED)
    bert = d2l.BERTModel(len(vocab), num_hiddens=NUM_HIDDENS,
                         norm_shape=[NUM_HIDDENS], ffn_num_input=NUM_HIDDENS,
                         ffn_num_hiddens=FFN_HIDDENS, num_heads=NUM_HEADS,
                         num_layers=NUM_LAYERS, dropout=DROPOUT,
                         max_len=MAX_POSITIONS, key_size=NUM_HIDDENS,
                         query_size=NUM_HIDDENS, value_size=NUM_HIDDENS,
                         hid_in_features=NUM_HIDDENS,
                         mlm_in_features=NUM_HIDDENS,
                         nsp_in_features=NUM_HIDDENS)
    net = BERTClassifier(bert, NUM_HIDDENS)  # notebook: nn.Linear(256, 3)
    # perturb every LayerNorm (default weight 1 / bias 0)
    gen = torch.Generator().manual_seed(LN_SEED)
    perturbed = []
    with torch.no_grad():
        for mname, m in bert.named_modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(LN_NOISE * torch.randn(m.weight.shape,
                                                     generator=gen))
                m.bias.add_(LN_NOISE * torch.randn(m.bias.shape,
                                                   generator=gen))
                perturbed.append(mname)
    for p in bert.parameters():
        assert p.dtype == torch.float64
    init_net = copy.deepcopy(net)  # for the AdamW run

    # 5. checkpoint as d2l would save it, plus output.* --------------------
    # bert.state_dict() itself (an OrderedDict carrying `_metadata`, which
    # torch.save pickles with BUILD), exactly what d2l's file would hold, plus
    # the classifier head. Saved before any training step.
    state = bert.state_dict()
    n_bert_keys = len(state)
    state['output.weight'] = net.output.weight.detach()
    state['output.bias'] = net.output.bias.detach()
    assert hasattr(state, '_metadata')
    state_ref = collections.OrderedDict(
        (k, v.clone()) for k, v in state.items())
    p_zip = os.path.join(args.out, 'pretrained.params')
    p_leg = os.path.join(args.out, 'pretrained_legacy.params')
    torch.save(state, p_zip)
    torch.save(state, p_leg, _use_new_zipfile_serialization=False)
    for path in (p_zip, p_leg):
        back = torch.load(path)
        assert list(back.keys()) == list(state.keys()), path
        for k in state:
            assert back[k].dtype == torch.float64
            assert torch.equal(back[k], state_ref[k]), (path, k)
    with open(p_zip, 'rb') as f:
        assert f.read(4) == b'PK\x03\x04'
    # the d2l loading path: a fresh BERTModel accepts the bert.* part strictly
    bert_keys = collections.OrderedDict(
        (k, v) for k, v in state_ref.items() if not k.startswith('output.'))
    bert.load_state_dict(bert_keys, strict=True)

    # 6. train-mode forward/backward, exactly as train_batch_ch13 ------------
    X = [token_ids, segments, valid_lens]
    loss = nn.CrossEntropyLoss(reduction='none')
    net.train()
    logits = net(X)
    l = loss(logits, y)
    l.sum().backward()
    grads = {}
    no_grad = []
    for name, p in net.named_parameters():
        if p.grad is None:
            no_grad.append(name)
        else:
            grads['grad.' + name] = p.grad.detach().clone()
    logits = logits.detach().clone()
    losses = l.detach().clone()
    # sanity: logits differ across examples
    assert torch.unique(logits.round(decimals=8), dim=0).shape[0] == N_PAIRS
    for name, p in net.named_parameters():
        p.grad = None

    # 7. three Adam steps with d2l.train_batch_ch13 ---------------------------
    devices = [torch.device('cpu')]
    trainer = torch.optim.Adam(net.parameters(), lr=LR, betas=BETAS, eps=EPS)
    adam_loss_sums, adam_correct = [], []
    tensors = {}
    for step in range(1, N_STEPS + 1):
        ls, acc = d2l.train_batch_ch13(net, X, y, loss, trainer, devices)
        adam_loss_sums.append(float(ls.detach()))
        adam_correct.append(float(acc))
        if step in (1, N_STEPS):
            tensors.update(params_of(net, 'step%d.' % step))
    assert abs(adam_loss_sums[0] - float(losses.sum())) <= 1e-12 * abs(
        adam_loss_sums[0])

    # 8. eval-mode forward (weights after the 3 Adam steps) ------------------
    eval_acc = d2l.evaluate_accuracy_gpu(net, [(X, y)])  # calls net.eval()
    with torch.no_grad():
        eval_logits = net(X).detach().clone()
    eval_correct = d2l.accuracy(eval_logits, y)
    assert abs(eval_acc * N_PAIRS - eval_correct) < 1e-9

    # 7b. AdamW from the same initial weights ---------------------------------
    net_w = init_net
    trainer_w = torch.optim.AdamW(net_w.parameters(), lr=LR, betas=BETAS,
                                  eps=EPS, weight_decay=ADAMW_WD)
    adamw_loss_sums, adamw_correct = [], []
    for step in range(1, N_STEPS + 1):
        ls, acc = d2l.train_batch_ch13(net_w, X, y, loss, trainer_w, devices)
        adamw_loss_sums.append(float(ls.detach()))
        adamw_correct.append(float(acc))
    tensors.update(params_of(net_w, 'adamw_step%d.' % N_STEPS))
    assert adamw_loss_sums[0] == adam_loss_sums[0]

    # 9. write ----------------------------------------------------------------
    tensors['logits'] = logits
    tensors['losses'] = losses
    tensors['eval_logits'] = eval_logits
    tensors.update(grads)
    for k, v in tensors.items():
        assert v.dtype == torch.float64, k
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    p_exp = os.path.join(args.out, 'expected.safetensors')
    save_file(tensors, p_exp, metadata={'producer': 'make_d2l_fixtures.py'})

    batch = collections.OrderedDict([
        ('source', 'shared/data/snli_dev.tsv'),
        ('start_row', START_ROW),
        ('start_line', START_ROW + 2),
        ('max_len', MAX_LEN),
        ('premises', premises),
        ('hypotheses', hypotheses),
        ('labels', y.tolist()),
        ('tokens', [t for t, _, _ in tok_info]),
        ('orig_lens', [list(o) for _, o, _ in tok_info]),
        ('truncated_lens', [list(t) for _, _, t in tok_info]),
        ('truncated', truncated),
        ('token_ids', token_ids.tolist()),
        ('segments', segments.tolist()),
        ('valid_lens', valid_lens.tolist()),
    ])
    with open(os.path.join(args.out, 'batch.json'), 'w') as f:
        json.dump(batch, f, indent=1)

    import d2l as d2l_pkg
    try:
        from importlib.metadata import version
        d2l_version = version('d2l')
    except Exception:  # pragma: no cover
        d2l_version = getattr(d2l_pkg, '__version__', 'unknown')
    meta = collections.OrderedDict([
        ('command', 'python3 scripts/make_d2l_fixtures.py --out '
         'tests/fixtures/d2l'),
        ('torch_version', torch.__version__),
        ('d2l_version', d2l_version),
        ('safetensors_version', safetensors.__version__),
        ('dtype', 'float64'),
        ('model', collections.OrderedDict([
            ('vocab_size', len(vocab)),
            ('num_hiddens', NUM_HIDDENS),
            ('ffn_num_hiddens', FFN_HIDDENS),
            ('num_heads', NUM_HEADS),
            ('num_layers', NUM_LAYERS),
            ('max_positions', MAX_POSITIONS),
            ('dropout', DROPOUT),
            ('layer_norm_eps', 1e-5),
            ('init', 'torch.manual_seed(%d); d2l.BERTModel then '
             'nn.Linear(%d, 3) (PyTorch default inits); then every '
             'LayerNorm weight/bias += %g * randn (torch.Generator seed %d, '
             'in named_modules order)' % (INIT_SEED, NUM_HIDDENS, LN_NOISE,
                                          LN_SEED)),
            ('perturbed_layernorms', perturbed),
        ])),
        ('dataset', collections.OrderedDict([
            ('max_len', MAX_LEN),
            ('n_pairs', N_PAIRS),
            ('vocab_min_freq', MIN_FREQ),
            ('vocab_reserved_tokens', RESERVED),
            ('vocab_token_types_below_min_freq', n_unk_types),
            ('valid_lens', valid_lens.tolist()),
            ('truncated', truncated),
        ])),
        ('checkpoint', collections.OrderedDict([
            ('keys', list(state_ref.keys())),
            ('n_bert_keys', n_bert_keys),
            ('extra_keys', ['output.weight', 'output.bias']),
            ('zip', 'pretrained.params'),
            ('legacy', 'pretrained_legacy.params'),
        ])),
        ('loss', "nn.CrossEntropyLoss(reduction='none'); backward of l.sum()"),
        ('initial_loss_sum', float(losses.sum())),
        ('params_without_grad', no_grad),
        ('adam', collections.OrderedDict([
            ('optimizer', 'torch.optim.Adam'),
            ('lr', LR), ('betas', list(BETAS)), ('eps', EPS),
            ('weight_decay', 0.0),
            ('steps', N_STEPS),
            ('loss_sums', adam_loss_sums),
            ('correct', adam_correct),
            ('note', 'loss_sums[i]/correct[i] are d2l.train_batch_ch13 '
             'return values of step i+1 (computed by the forward before '
             'that step); step1.*/step3.* are net.state_dict() after the '
             'step'),
        ])),
        ('adamw', collections.OrderedDict([
            ('optimizer', 'torch.optim.AdamW'),
            ('lr', LR), ('betas', list(BETAS)), ('eps', EPS),
            ('weight_decay', ADAMW_WD),
            ('steps', N_STEPS),
            ('loss_sums', adamw_loss_sums),
            ('correct', adamw_correct),
            ('note', 'fresh copy of the initial weights; adamw_step3.* '
             'after step 3'),
        ])),
        ('eval', collections.OrderedDict([
            ('weights', 'after the 3 Adam steps (step3.*)'),
            ('mode', 'net.eval(), torch.no_grad()'),
            ('correct', eval_correct),
            ('accuracy', eval_acc),
        ])),
        ('expected_keys', list(tensors.keys())),
        ('notes', NOTES),
    ])
    with open(os.path.join(args.out, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)

    # 10. summary ----------------------------------------------------------------
    total = 0
    print('files in %s:' % args.out)
    for fn in sorted(os.listdir(args.out)):
        sz = os.path.getsize(os.path.join(args.out, fn))
        total += sz
        print('  %-26s %9d bytes' % (fn, sz))
    print('  %-26s %9d bytes' % ('total', total))
    print('vocab size %d (%d token types below min_freq -> <unk>)'
          % (len(vocab), n_unk_types))
    print('valid_lens', valid_lens.tolist(), 'truncated', truncated)
    print('labels', y.tolist())
    print('initial loss sum %.12f' % float(losses.sum()))
    print('adam loss sums', adam_loss_sums, 'correct', adam_correct)
    print('adamw loss sums', adamw_loss_sums, 'correct', adamw_correct)
    print('eval correct', eval_correct)
    print('params without grad', no_grad)
    print('expected.safetensors: %d tensors' % len(tensors))
    assert total < 2_500_000


if __name__ == '__main__':
    main()
