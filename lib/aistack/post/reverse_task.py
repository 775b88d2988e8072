"""A synthetic instruction task for SFT: reverse a 3-letter word.

    user: "reverse: c a t"   assistant: "t a c"

Letters are space-separated so each is one token of a byte-level BPE. Held-out words
never appear in training, so accuracy on them measures the learned skill, not
memorisation. The post-training tests and the tiny end-to-end pipeline use it:
    python -m aistack.post.reverse_task OUT_DIR     # train.jsonl, prompts.jsonl, eval.jsonl
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

LETTERS = "abcdefghijklmnop"
# The special tokens of aistack's default chat template (aistack.post.chat), and padding.
SPECIAL = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


EVAL_WORDS = 100  # the last words of the shuffle: in no training set and no distillation prompt


def _shuffled(seed: int) -> list[str]:
    all_words = ["".join(w) for w in itertools.product(LETTERS, repeat=3)]
    random.Random(seed).shuffle(all_words)
    return all_words


def words(seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) 3-letter words over LETTERS (the held-out ones are the distillation prompts).
    Training takes the first train words: the last EVAL_WORDS of them are eval_words()."""
    all_words = _shuffled(seed)
    return all_words[200:], all_words[:200]


def eval_words(seed: int = 0) -> list[str]:
    """Words for evaluation only: neither SFT nor the distilled student ever sees them."""
    return _shuffled(seed)[-EVAL_WORDS:]


def prompt(word: str) -> str:
    return "reverse: " + " ".join(word)


def answer(word: str) -> str:
    return " ".join(reversed(word))


def record(word: str, system: bool = False) -> dict:
    messages = [{"role": "system", "content": "You reverse words."}] if system else []
    return {"messages": [*messages, {"role": "user", "content": prompt(word)}, {"role": "assistant", "content": answer(word)}]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
    return path


def write_task(root: Path, n_train: int = 1500) -> dict[str, Path]:
    """train.jsonl (chat records), prompts.jsonl (held-out words, prompts only) and eval.jsonl
    (evaluation words as chat records: the `chat` data task of an evaluation)."""
    train_words, held_out = words()
    if n_train > len(train_words) - EVAL_WORDS:
        raise ValueError(f"n_train {n_train}: at most {len(train_words) - EVAL_WORDS} (the last words are for evaluation)")
    rng = random.Random(1)
    return {
        "train": write_jsonl(root / "train.jsonl", [record(w, system=rng.random() < 0.3) for w in train_words[:n_train]]),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": prompt(w), "word": w} for w in held_out]),
        "eval": write_jsonl(root / "eval.jsonl", [record(w) for w in eval_words()]),
    }


if __name__ == "__main__":
    import sys

    out = write_task(Path(sys.argv[1]))
    print(f"reverse task: {out['train']}, {out['prompts']}, {out['eval']}")
