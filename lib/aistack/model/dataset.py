"""Pretraining data: megatron GPTDataset over blended indexed datasets, in a fixed order.

The order of samples is a pure function of (datasets, weights, split, seed, sequence
length): GPTDataset shuffles with the seed and BlendedMegatronDatasetBuilder blends by
weight, both reproducibly. Global batch `step` is samples [step*G, (step+1)*G); each
data-parallel rank takes its contiguous slice, micro-batch by micro-batch. So the exact
position on resume is just the step number, and TP/PP layouts see the same tokens.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from aistack.rundir import atomic_write_text


@dataclass
class Tokenizer:
    """What megatron's datasets read from a tokenizer: vocab size, end-of-document, pad."""

    vocab_size: int
    eod: int
    pad: int = -1  # never a real token: megatron masks the loss on it
    name: str = "none"

    @property
    def unique_identifiers(self) -> dict[str, Any]:  # part of the dataset cache key
        return {"class": "aistack.Tokenizer", "name": self.name, "vocab_size": self.vocab_size, "eod": self.eod}

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """A Hugging Face tokenizer.json; end-of-document is its first EOS-like special token."""
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer.from_file(str(path))
        vocab = tok.get_vocab(with_added_tokens=True)
        eod = next((vocab[t] for t in ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "[SEP]") if t in vocab), None)
        if eod is None:
            raise ValueError(f"{path}: no end-of-document token (<|endoftext|>, </s>, ...) in the vocabulary")
        return cls(vocab_size=tok.get_vocab_size(with_added_tokens=True), eod=eod, name=str(Path(path).name))


def tokenizer_for(data_cfg: Any, model_cfg: Any) -> Tokenizer:
    if data_cfg.tokenizer:
        tok = Tokenizer.from_file(data_cfg.tokenizer)
        if model_cfg.vocab_size and model_cfg.vocab_size < tok.vocab_size:
            raise ValueError(f"model.vocab_size {model_cfg.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
        return tok
    if not model_cfg.vocab_size:
        raise ValueError("set data.tokenizer (a tokenizer.json) or model.vocab_size")
    # Pre-tokenized data without a tokenizer file: token 0 ends documents (make_tiny_dataset's convention).
    return Tokenizer(vocab_size=model_cfg.vocab_size, eod=0, name="pretokenized")


def build_datasets(data_cfg: Any, seq_length: int, seed: int, num_train: int, num_valid: int,
                   tokenizer: Tokenizer, cache_dir: str | Path):
    """(train, valid) GPTDatasets of at least num_train / num_valid samples.
    Every rank must call this (megatron builds on rank 0 first, then the others read its cache)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    if not data_cfg.paths:
        raise ValueError("data.paths is empty: give one or more indexed datasets (<prefix>.bin/.idx)")
    for entry in data_cfg.paths:
        missing = [p for p in (f"{entry.path}.bin", f"{entry.path}.idx") if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"data.paths: {', '.join(missing)} not found")
    prefixes = [str(Path(e.path).absolute()) for e in data_cfg.paths]
    weights = [e.weight for e in data_cfg.paths] if len(prefixes) > 1 else None
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(prefixes, weights),
        split=data_cfg.split,
        path_to_cache=str(cache_dir),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal attention comes from the mask type
        mid_level_dataset_surplus=0.005,
    )
    # megatron trusts any index files it finds in the cache and writes them in place: a task
    # killed while it wrote them would fail on every rerun (a truncated .npy). Rank 0 (which
    # builds first, the others read after a barrier) starts over unless a build completed.
    complete = Path(cache_dir) / "COMPLETE"
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if rank0 and not complete.exists():
        shutil.rmtree(cache_dir, ignore_errors=True)
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_train, num_valid, 0], lambda: True, config).build()
    if rank0:
        atomic_write_text(complete, "")
    if valid is None:
        raise ValueError(f"data.split {data_cfg.split!r} leaves no validation documents")
    return train, valid


class BatchReader:
    """Micro-batches of one global batch for this data-parallel rank, by step number (no state)."""

    def __init__(self, dataset, global_batch: int, micro_batch: int, dp_size: int, dp_rank: int):
        self.dataset = dataset
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.per_rank = global_batch // dp_size
        self.dp_rank = dp_rank

    @property
    def num_microbatches(self) -> int:
        return self.per_rank // self.micro_batch

    def sample_indices(self, step: int) -> Iterator[list[int]]:
        """Global batch `step` (0-based): the sample indices of this rank's micro-batches, in order."""
        start = step * self.global_batch + self.dp_rank * self.per_rank
        for m in range(self.num_microbatches):
            first = start + m * self.micro_batch
            yield list(range(first, first + self.micro_batch))

    def microbatches(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Global batch `step` (0-based): this rank's micro-batches, in order."""
        for indices in self.sample_indices(step):
            samples = [self.dataset[i] for i in indices]
            yield {k: torch.stack([s[k] for s in samples]) for k in ("tokens", "labels", "loss_mask", "position_ids")}


# --- a tiny real dataset for tests and benchmarks --------------------------------------


def make_tiny_dataset(prefix: str | Path, vocab_size: int = 512, num_docs: int = 400, doc_len: tuple[int, int] = (32, 256),
                      seed: int = 0) -> Path:
    """Write <prefix>.bin/.idx (megatron IndexedDataset) of learnable synthetic documents.

    Tokens live in an active set of min(V-1, 127) ids; each is followed by its image under a
    fixed random permutation 80% of the time, by a random active token otherwise. A small
    model's loss falls from ln(V) towards ~1.5 nats within a few dozen steps. Token 0 ends
    every document (the `eod` of a tokenizer-less recipe)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    active = min(vocab_size - 1, 127)
    successor = rng.permutation(active) + 1  # token t (1..active) -> successor[t - 1]
    dtype = np.uint16 if vocab_size <= 65536 else np.int32
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for _ in range(num_docs):
        length = int(rng.integers(doc_len[0], doc_len[1] + 1))
        noise = rng.random(length) < 0.2
        random_tokens = rng.integers(1, active + 1, size=length)
        doc = np.empty(length + 1, dtype=np.int64)
        doc[0] = random_tokens[0]
        for i in range(1, length):
            doc[i] = random_tokens[i] if noise[i] else successor[doc[i - 1] - 1]
        doc[length] = 0  # end of document
        builder.add_document(doc, [len(doc)])
    builder.finalize(f"{prefix}.idx")
    (prefix.parent / f"{prefix.name}.json").write_text(json.dumps({"vocab_size": vocab_size, "num_docs": num_docs, "seed": seed}))
    return prefix


if __name__ == "__main__":  # python -m aistack.model.dataset PREFIX [VOCAB]: write a tiny dataset
    import sys

    print(make_tiny_dataset(sys.argv[1], vocab_size=int(sys.argv[2]) if len(sys.argv) > 2 else 512))
