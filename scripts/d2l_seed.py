"""The seed's d2l code, in one place for the scripts that run it.

The chapter "Natural Language Inference: Fine-Tuning BERT" (seed:
shared/seed/natural-language-inference-bert.zh.txt) defines three things in
its code cells; they are copied here verbatim, with the two changes noted:

  * load_pretrained_model: the notebook's, except that it reads a directory
    (vocab.json + pretrained.params) instead of
    d2l.download_extract('bert.small');
  * SNLIBERTDataset: verbatim (multiprocessing.Pool(4) included, so callers
    guard their entry point with `if __name__ == '__main__'`), with
    `self.vocab['']` -> `self.vocab['<pad>']`: the scraped notebook lost its
    HTML-like tokens, d2l's real code has '<pad>';
  * BERTClassifier: verbatim, with the notebook's hard-coded
    nn.Linear(256, 3) input width as a parameter (num_inputs, default 256) so
    that small test models can use it.

Importing this module installs the d2l import stubs (scripts/d2l_stubs.py) and
imports d2l==0.17.6's PyTorch flavour as `d2l`:

    from d2l_seed import d2l, load_pretrained_model, SNLIBERTDataset, BERTClassifier

Used by scripts/make_d2l_fixtures.py (the parity fixtures: byte-identical
output is required, so nothing here may consume random numbers differently
from the notebook) and scripts/bench_cpu_peer.py (the speed peer, CPU or
CUDA).
"""

import json
import multiprocessing
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import d2l_stubs  # noqa: E402

d2l_stubs.install()
from d2l import torch as d2l  # noqa: E402

__all__ = ['d2l', 'load_pretrained_model', 'SNLIBERTDataset', 'BERTClassifier']


# ---- the notebook's load_pretrained_model, download_extract -> data_dir ----
def load_pretrained_model(data_dir, num_hiddens, ffn_num_hiddens,
                          num_heads, num_layers, dropout, max_len, devices):
    # 定义空词表以加载预定义词表
    vocab = d2l.Vocab()
    vocab.idx_to_token = json.load(open(os.path.join(data_dir,
                                                     'vocab.json')))
    vocab.token_to_idx = {token: idx for idx, token in enumerate(
        vocab.idx_to_token)}
    bert = d2l.BERTModel(len(vocab), num_hiddens, norm_shape=[256],
                         ffn_num_input=256, ffn_num_hiddens=ffn_num_hiddens,
                         num_heads=4, num_layers=2, dropout=0.2,
                         max_len=max_len, key_size=256, query_size=256,
                         value_size=256, hid_in_features=256,
                         mlm_in_features=256, nsp_in_features=256)
    # 加载预训练BERT参数
    bert.load_state_dict(torch.load(os.path.join(data_dir,
                                                 'pretrained.params')))
    return bert, vocab


# ---- copied from the seed notebook (code cells), `''` -> `'<pad>'` -------
class SNLIBERTDataset(torch.utils.data.Dataset):
    def __init__(self, dataset, max_len, vocab=None):
        all_premise_hypothesis_tokens = [[
            p_tokens, h_tokens] for p_tokens, h_tokens in zip(
            *[d2l.tokenize([s.lower() for s in sentences])
              for sentences in dataset[:2]])]

        self.labels = torch.tensor(dataset[2])
        self.vocab = vocab
        self.max_len = max_len
        (self.all_token_ids, self.all_segments,
         self.valid_lens) = self._preprocess(all_premise_hypothesis_tokens)
        print('read ' + str(len(self.all_token_ids)) + ' examples')

    def _preprocess(self, all_premise_hypothesis_tokens):
        pool = multiprocessing.Pool(4)  # 使用4个进程
        out = pool.map(self._mp_worker, all_premise_hypothesis_tokens)
        all_token_ids = [
            token_ids for token_ids, segments, valid_len in out]
        all_segments = [segments for token_ids, segments, valid_len in out]
        valid_lens = [valid_len for token_ids, segments, valid_len in out]
        return (torch.tensor(all_token_ids, dtype=torch.long),
                torch.tensor(all_segments, dtype=torch.long),
                torch.tensor(valid_lens))

    def _mp_worker(self, premise_hypothesis_tokens):
        p_tokens, h_tokens = premise_hypothesis_tokens
        self._truncate_pair_of_tokens(p_tokens, h_tokens)
        tokens, segments = d2l.get_tokens_and_segments(p_tokens, h_tokens)
        token_ids = self.vocab[tokens] + [self.vocab['<pad>']] \
            * (self.max_len - len(tokens))
        segments = segments + [0] * (self.max_len - len(segments))
        valid_len = len(tokens)
        return token_ids, segments, valid_len

    def _truncate_pair_of_tokens(self, p_tokens, h_tokens):
        # 为BERT输入中的'<CLS>'、'<SEP>'和'<SEP>'词元保留位置
        while len(p_tokens) + len(h_tokens) > self.max_len - 3:
            if len(p_tokens) > len(h_tokens):
                p_tokens.pop()
            else:
                h_tokens.pop()

    def __getitem__(self, idx):
        return (self.all_token_ids[idx], self.all_segments[idx],
                self.valid_lens[idx]), self.labels[idx]

    def __len__(self):
        return len(self.all_token_ids)


class BERTClassifier(nn.Module):
    def __init__(self, bert, num_inputs=256):  # notebook: nn.Linear(256, 3)
        super(BERTClassifier, self).__init__()
        self.encoder = bert.encoder
        self.hidden = bert.hidden
        self.output = nn.Linear(num_inputs, 3)

    def forward(self, inputs):
        tokens_X, segments_X, valid_lens_x = inputs
        encoded_X = self.encoder(tokens_X, segments_X, valid_lens_x)
        return self.output(self.hidden(encoded_X[:, 0, :]))
# ---------------------------------------------------------------------------
