"""A synthetic instruction task for post-training tests: reverse a 3-letter word.

    user: "reverse: c a t"   assistant: "t a c"

Letters are space-separated so each is one token of the small byte-level BPE trained here
(special tokens of aistack's default chat template added). Held-out words never appear in
training, so accuracy on them measures the learned skill, not memorisation.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

LETTERS = "abcdefghijklmnop"
SPECIAL = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def words(seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) 3-letter words over LETTERS."""
    all_words = ["".join(w) for w in itertools.product(LETTERS, repeat=3)]
    random.Random(seed).shuffle(all_words)
    return all_words[200:], all_words[:200]


def prompt(word: str) -> str:
    return "reverse: " + " ".join(word)


def answer(word: str) -> str:
    return " ".join(reversed(word))


def record(word: str, system: bool = False) -> dict:
    messages = [{"role": "system", "content": "You reverse words."}] if system else []
    return {"messages": [*messages, {"role": "user", "content": prompt(word)}, {"role": "assistant", "content": answer(word)}]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


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
