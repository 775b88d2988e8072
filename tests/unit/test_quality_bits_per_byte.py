"""The benchmark's held-out quality: bits per byte counts every token over the text's UTF-8 bytes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch


class Uniform(torch.nn.Module):
    """A model that gives every token of a V-word vocabulary the same probability."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.w)


def test_uniform_model_scores_log2_vocab_bits_per_token():
    from aistack.bench.quality import perplexity

    texts = ["héllo wörld", "abc"]

    def tokenizer(text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 64 for c in text]}  # one token per character

    out = perplexity(Uniform(64), tokenizer, texts, max_len=4, eos_id=0)
    tokens = sum(len(t) for t in texts)
    assert out["tokens"] == tokens and math.isclose(out["nll"], math.log(64), rel_tol=1e-6)
    size = sum(len(t.encode("utf-8")) for t in texts)  # 2 bytes for é and ö
    assert math.isclose(out["bits_per_byte"], tokens * 6 / size, rel_tol=1e-6)
