"""Megatron indexed datasets (.bin/.idx) with megatron-core's own builder and reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def token_dtype(vocab_size: int):
    """uint16 while the ids fit (Megatron's own choice), else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def _indexed():
    from megatron.core.datasets import indexed_dataset  # heavy import: only where needed

    return indexed_dataset


class ShardWriter:
    """One document per item, EOS already appended by the caller; written as prefix.bin/.idx
    under temporary names and renamed on close, so a killed task leaves no half dataset."""

    def __init__(self, prefix: Path, vocab_size: int):
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.prefix.with_name(f".{self.prefix.name}.tmp")
        self._builder = _indexed().IndexedDatasetBuilder(f"{self._tmp}.bin", dtype=token_dtype(vocab_size))

    def add_document(self, ids: list[int]) -> None:
        self._builder.add_document(np.asarray(ids, dtype=np.int64), [len(ids)])

    def close(self) -> None:
        self._builder.finalize(f"{self._tmp}.idx")
        os.replace(f"{self._tmp}.bin", f"{self.prefix}.bin")
        os.replace(f"{self._tmp}.idx", f"{self.prefix}.idx")


def merge(prefixes: list[Path], out_prefix: Path, vocab_size: int) -> Path:
    """Concatenate shard datasets in order (builder.add_index), atomically."""
    out_prefix = Path(out_prefix)
    tmp = out_prefix.with_name(f".{out_prefix.name}.tmp")
    builder = _indexed().IndexedDatasetBuilder(f"{tmp}.bin", dtype=token_dtype(vocab_size))
    for prefix in prefixes:
        builder.add_index(str(prefix))
    builder.finalize(f"{tmp}.idx")
    os.replace(f"{tmp}.bin", f"{out_prefix}.bin")
    os.replace(f"{tmp}.idx", f"{out_prefix}.idx")
    return out_prefix


def open_dataset(prefix: Path):
    return _indexed().IndexedDataset(str(prefix))
