"""The teacher's top-k logits for offline distillation, in a zarr (v3) store.

    <store>/zarr.json        group; attrs: vocab_size, top_k, seq_length, num_sequences, block, ...
    <store>/ids/             int32   [num_sequences, seq_length, k], one chunk per block of sequences
    <store>/values/          float16 [num_sequences, seq_length, k], same chunks; zstd (Blosc)
    <store>/committed/block_000012   written once both chunks of block 12 are on disk; holds the
                                     key of each of its sequences' input tokens

Keyed by its data. A block's logits belong to the tokens they were computed on: its commit
marker keeps a fingerprint of each sequence's input tokens (`sequence_key`). A writer that
finds a block committed, and the student that reads it, check those keys against their own
sequences (`check_data`): a store written for other data, or another order of it (another
dataset, seed or split behind the same `logit.store` path), is refused naming the sequence,
never silently reused or overwritten.

Crash safety. zarr writes each chunk file atomically (temporary file + rename), but a block is
two chunks (ids, values), and a chunk that was never written reads back as the fill value,
silently. So a block is valid only once its commit marker exists: writers write the two
chunks, fsync them, then create the marker atomically; readers refuse any block without one
(IncompleteBlock). A writer killed at any point leaves every committed block intact and no
uncommitted block readable; a rerun writes only the uncommitted blocks. The store itself is
created in a temporary directory and renamed into place, so concurrent array tasks never see
a half-created store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aistack.rundir import fsync_dir

COMMITTED = "committed"


class IncompleteBlock(RuntimeError):
    pass


class OtherData(ValueError):
    """A committed block holds the teacher's logits for other tokens than the reader's."""


def sequence_key(tokens: Any) -> str:
    """A short fingerprint of one sequence's input tokens (any int dtype, numpy or torch)."""
    array = np.ascontiguousarray(np.asarray(tokens), dtype=np.int64)
    return hashlib.blake2b(array.tobytes(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class StoreSpec:
    num_sequences: int
    seq_length: int
    top_k: int
    vocab_size: int
    block: int = 64  # sequences per chunk
    teacher: str = ""  # where the logits came from (checkpoint path): checked on reuse

    @property
    def num_blocks(self) -> int:
        return (self.num_sequences + self.block - 1) // self.block

    def attrs(self) -> dict[str, Any]:
        return {"format": "aistack.topk/1", "num_sequences": self.num_sequences, "seq_length": self.seq_length,
                "top_k": self.top_k, "vocab_size": self.vocab_size, "block": self.block, "teacher": self.teacher}


def _codecs():
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]


def create(path: str | Path, spec: StoreSpec) -> "TopKStore":
    """Create the store (or open it when it exists with the same spec). Safe to race."""
    import zarr

    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs.update(spec.attrs())
        shape, chunks = (spec.num_sequences, spec.seq_length, spec.top_k), (spec.block, spec.seq_length, spec.top_k)
        group.create_array("ids", shape=shape, chunks=chunks, dtype="int32", compressors=_codecs(), fill_value=-1)
        group.create_array("values", shape=shape, chunks=chunks, dtype="float16", compressors=_codecs(), fill_value=0)
        (tmp / COMMITTED).mkdir()
        try:
            os.rename(tmp, path)  # fails when another task got there first: use theirs
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    store = TopKStore(path)
    if store.spec != spec:
        raise ValueError(f"{path}: an existing top-k store with another layout {store.spec} (wanted {spec}); "
                         "remove it or point logit.store elsewhere")
    return store


class TopKStore:
    def __init__(self, path: str | Path):
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"{self.path}: no top-k logits store here (run the teacher_logits job first)")
        self.group = zarr.open_group(str(self.path), mode="r+")
        attrs = dict(self.group.attrs)
        if attrs.get("format") != "aistack.topk/1":
            raise ValueError(f"{self.path}: not an aistack top-k store (attrs {attrs})")
        self.spec = StoreSpec(**{k: attrs[k] for k in ("num_sequences", "seq_length", "top_k", "vocab_size", "block", "teacher")})
        self.ids, self.values = self.group["ids"], self.group["values"]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._keys: dict[int, list[str] | None] = {}

    # --- writing ----------------------------------------------------------------------

    def _marker(self, block: int) -> Path:
        return self.path / COMMITTED / f"block_{block:06d}"

    def is_committed(self, block: int) -> bool:
        return self._marker(block).exists()

    def committed_blocks(self) -> list[int]:
        return sorted(int(p.name.split("_")[1]) for p in (self.path / COMMITTED).iterdir() if p.name.startswith("block_"))

    def block_range(self, block: int) -> tuple[int, int]:
        lo = block * self.spec.block
        return lo, min(lo + self.spec.block, self.spec.num_sequences)

    def write_block(self, block: int, ids: np.ndarray, values: np.ndarray, keys: list[str]) -> None:
        """Write one whole block (chunk-aligned) and commit it with its sequences' keys."""
        lo, hi = self.block_range(block)
        want = (hi - lo, self.spec.seq_length, self.spec.top_k)
        if ids.shape != want or values.shape != want or len(keys) != hi - lo:
            raise ValueError(f"block {block}: expected arrays of shape {want} and {hi - lo} keys, "
                             f"got {ids.shape}, {values.shape} and {len(keys)} keys")
        self.ids[lo:hi] = ids.astype(np.int32)
        self.values[lo:hi] = values.astype(np.float16)
        for array in ("ids", "values"):  # this block's chunk files (v3 default keys: c/<block>/0/0)
            _fsync_tree(self.path / array / "c" / str(block))
        marker = self._marker(block)
        tmp = marker.with_name(f".{marker.name}.tmp")
        tmp.write_text(json.dumps({"sequences": [lo, hi], "keys": list(keys)}))
        os.replace(tmp, marker)  # the commit point
        fsync_dir(marker.parent)

    def block_keys(self, block: int) -> list[str] | None:
        """The keys of a committed block's sequences (None: not committed, or written unkeyed)."""
        if block not in self._keys:
            marker = json.loads(self._marker(block).read_text()) if self.is_committed(block) else {}
            self._keys[block] = marker.get("keys")
        return self._keys[block]

    def check_data(self, indices: list[int] | range, keys: list[str]) -> None:
        """Refuse sequences whose committed logits were computed on other tokens than `keys`."""
        for i, key in zip(indices, keys):
            block = i // self.spec.block
            if not self.is_committed(block):
                continue  # not written yet: nothing to compare (reading it raises IncompleteBlock)
            held = self.block_keys(block)
            if held is None or held[i % self.spec.block] != key:
                raise OtherData(
                    f"{self.path}: sequence {i} (block {block}) holds the teacher's logits for other tokens than this "
                    "run's data (another dataset, seed or split was distilled into this store, or it predates keyed "
                    "stores); remove it or point logit.store elsewhere")

    # --- reading ----------------------------------------------------------------------

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        if block not in self._cache:
            if not self.is_committed(block):
                raise IncompleteBlock(f"{self.path}: block {block} (sequences {self.block_range(block)}) is not committed; "
                                      "its writer has not finished (rerun the teacher_logits job)")
            lo, hi = self.block_range(block)
            if len(self._cache) >= 4:  # a few decoded blocks: a batch reads one or two
                self._cache.pop(next(iter(self._cache)))
            self._cache[block] = (self.ids[lo:hi], self.values[lo:hi])
        return self._cache[block]

    def read(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n, s, k] int32, values [n, s, k] float16) of these sequences, committed blocks only."""
        if max(indices) >= self.spec.num_sequences or min(indices) < 0:
            raise IndexError(f"{self.path}: sequences {min(indices)}..{max(indices)} outside 0..{self.spec.num_sequences - 1}")
        out_ids = np.empty((len(indices), self.spec.seq_length, self.spec.top_k), np.int32)
        out_values = np.empty(out_ids.shape, np.float16)
        for n, i in enumerate(indices):
            ids, values = self._block(i // self.spec.block)
            out_ids[n], out_values[n] = ids[i % self.spec.block], values[i % self.spec.block]
        return out_ids, out_values

    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _fsync_tree(root: Path) -> None:
    if not root.exists():
        raise IncompleteBlock(f"{root}: the chunk was not written")
    for p in root.rglob("*"):
        if p.is_file() and not p.name.endswith(".partial"):
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())

