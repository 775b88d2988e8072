"""A synthetic instruction task for post-training tests: reverse a 3-letter word.

    user: "reverse: c a t"   assistant: "t a c"

Letters are space-separated so each is one token of the small byte-level BPE trained here
(special tokens of aistack's default chat template added). Held-out words never appear in
training, so accuracy on them measures the learned skill, not memorisation.
"""

from __future__ import annotations

import random
from pathlib import Path

from aistack.post.reverse_task import LETTERS, SPECIAL, answer, prompt, record, words, write_jsonl  # noqa: F401


def make_task(root: Path, n_train: int = 1500) -> dict[str, Path]:
    """tokenizer.json, train.jsonl, prompts.jsonl (held-out words, prompts only)."""
    from aistack.data.tokenize import train_bpe

    train_words, held_out = words()
    rng = random.Random(1)
    train_records = [record(w, system=rng.random() < 0.3) for w in train_words[:n_train]]
    texts = [f"{prompt(w)} {answer(w)}" for w in train_words] * 2
    tokenizer = train_bpe(texts, vocab_size=300, min_frequency=2, eos_token="<|endoftext|>", special_tokens=SPECIAL,
                          out=root / "tokenizer.json")
    return {
        "tokenizer": tokenizer,
        "train": write_jsonl(root / "train.jsonl", train_records),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": prompt(w), "word": w} for w in held_out]),
        "held_out": held_out,
    }
