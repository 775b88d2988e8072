"""tinylang: a tiny synthetic language that a 2-layer model learns in seconds on a CPU.

127 two-syllable words; each word is followed by its image under a fixed permutation
(the *successor*) 80% of the time, by a random word otherwise. A model that learned the
rule predicts the next word with ~80% accuracy; an untrained one is at chance. The
project's local eval tasks (recipes/eval/tasks/tinylang/) are written in it:

    tinylang_mc   which of 4 words comes next (the successor vs 3 other words)
    tinylang_ppl  perplexity of held-out documents (loglikelihood_rolling)

`write_corpus` makes the training data (a Megatron indexed dataset in the tokenizer's
ids), `write_tasks` the task files; both are pure functions of their seeds, so the
shipped files can be made again bit for bit:

    python -m aistack.eval.tinylang recipes/eval/tasks/tinylang
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LANG_SEED = 0  # fixes the words and the successor rule; corpus/task seeds only draw documents
NUM_WORDS = 127
EOD = "<|endoftext|>"
UNK = "<unk>"
NOISE = 0.2
TRAIN_SEED, MC_SEED, PPL_SEED = 1, 2, 3  # disjoint draws: the eval documents are held out


def _language() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(LANG_SEED)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    pool = sorted({a + b for a in syllables for b in syllables})
    words = [str(w) for w in rng.choice(pool, size=NUM_WORDS, replace=False)]
    successor = rng.permutation(NUM_WORDS)  # word i -> word successor[i] (0-based word index)
    return words, successor


WORDS, SUCCESSOR = _language()


def token_id(word_index: int) -> int:
    return word_index + 1  # id 0 is the end-of-document token


def vocab() -> dict[str, int]:
    return {EOD: 0, **{w: token_id(i) for i, w in enumerate(WORDS)}, UNK: NUM_WORDS + 1}


def write_tokenizer(path: str | Path) -> Path:
    """A word-level tokenizer.json (whitespace split): what HF and aistack both load."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([EOD, UNK])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def sample_words(rng: np.random.Generator, length: int) -> list[int]:
    """`length` word indices following the rule (with noise)."""
    out = [int(rng.integers(NUM_WORDS))]
    for _ in range(length - 1):
        out.append(int(rng.integers(NUM_WORDS)) if rng.random() < NOISE else int(SUCCESSOR[out[-1]]))
    return out


def text(words: list[int]) -> str:
    return " ".join(WORDS[i] for i in words)


def write_corpus(prefix: str | Path, num_docs: int = 400, doc_len: tuple[int, int] = (32, 256), seed: int = TRAIN_SEED) -> Path:
    """<prefix>.bin/.idx in the tokenizer's ids (end-of-document 0), and <prefix>.jsonl as text."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    with open(f"{prefix}.jsonl", "w") as docs:
        for _ in range(num_docs):
            words = sample_words(rng, int(rng.integers(doc_len[0], doc_len[1] + 1)))
            ids = np.array([token_id(w) for w in words] + [0], dtype=np.int64)
            builder.add_document(ids, [len(ids)])
            docs.write(json.dumps({"text": text(words)}) + "\n")
    builder.finalize(f"{prefix}.idx")
    return prefix


def mc_docs(n: int = 100, seed: int = MC_SEED) -> list[dict]:
    """Context of 8-16 words; choices: the successor of the last word and 3 distinct others."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        context = sample_words(rng, int(rng.integers(8, 17)))
        right = int(SUCCESSOR[context[-1]])
        others = [int(w) for w in rng.permutation(NUM_WORDS) if w != right][:3]
        label = int(rng.integers(4))
        choices = others[:label] + [right] + others[label:]
        docs.append({"context": text(context), "choices": [WORDS[c] for c in choices], "label": label})
    return docs


def ppl_docs(n: int = 20, length: int = 48, seed: int = PPL_SEED) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"text": text(sample_words(rng, length))} for _ in range(n)]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def write_tasks(out_dir: str | Path) -> Path:
    """tokenizer.json and the data files of the tinylang tasks (their YAML is hand-written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out / "tokenizer.json")
    _jsonl(out / "mc.jsonl", mc_docs())
    _jsonl(out / "ppl.jsonl", ppl_docs())
    return out


if __name__ == "__main__":
    import sys

    print(write_tasks(sys.argv[1] if len(sys.argv) > 1 else "recipes/eval/tasks/tinylang"))
