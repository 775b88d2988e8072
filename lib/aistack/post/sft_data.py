"""SFT data: chat records (jsonl or parquet) -> fixed-length training rows, by step number.

Each conversation of n tokens becomes n-1 (input, label) pairs; `loss_mask` is 1 where the
label is an assistant token. Rows are then either

- packed: conversations laid end to end (first-fit over a seeded shuffle); `segment_ids`
  tell them apart, `position_ids` restart at 0 in each, and the attention mask lets a
  token see only earlier tokens of its own conversation. A packed row gives exactly the
  losses the same conversations give one per row.
- padded: one conversation per row, pad to the end (causal attention suffices).

The row order is a pure function of the records and the seed, and batch `step` is rows
[step*G, (step+1)*G) modulo the number of rows (epochs wrap): resume needs only the step.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from aistack.post.chat import ChatFormatError, ChatTokenizer, record_messages


# --- records --------------------------------------------------------------------------


def expand_paths(patterns: Iterable[str], key: str) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        found = sorted(glob.glob(str(pattern))) if any(c in str(pattern) for c in "*?[") else [pattern]
        for f in found:
            if not Path(f).is_file():
                raise FileNotFoundError(f"{key}: {f} not found")
            files.append(Path(f))
    if not files:
        raise FileNotFoundError(f"{key}: {list(patterns)} match no file")
    return files


def read_records(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Chat records from .jsonl (one JSON object a line) or .parquet (a column per key)."""
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(file)
            if not {"messages", "conversations", "input", "prompt"} & set(table.column_names):
                raise ChatFormatError(f"{file}: no 'messages' column, nor NeMo's 'conversations' or 'input' and 'output' "
                                      f"(columns: {table.column_names})")
            for i, row in enumerate(table.to_pylist()):
                yield {**row, "_where": f"{file} row {i}"}
        elif file.suffix in (".jsonl", ".json"):
            with open(file) as fh:
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as err:
                            raise ChatFormatError(f"{file} line {i}: not JSON ({err.msg})") from None
                        record["_where"] = f"{file} line {i}"
                        yield record
        else:
            raise ChatFormatError(f"{file}: expected .jsonl or .parquet chat records")


@dataclass
class Example:
    """One conversation as (input, label) pairs: len(tokens) == len(labels) == len(loss_mask)."""

    tokens: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


def tokenize_records(records: Iterable[dict], chat: ChatTokenizer, seq_length: int) -> tuple[list[Example], int]:
    """Examples (truncated to seq_length pairs), and how many records were truncated."""
    out, truncated = [], 0
    for record in records:
        where = record.get("_where", "record")
        messages = record_messages(record, where)
        ids, mask = chat.encode_chat(messages)
        if len(ids) - 1 > seq_length:
            truncated += 1
            ids, mask = ids[: seq_length + 1], mask[: seq_length + 1]
        example = Example(ids[:-1].astype(np.int64), ids[1:].astype(np.int64), mask[1:].astype(np.float32))
        if example.loss_mask.sum() > 0:  # nothing to learn from a record with no assistant token left
            out.append(example)
    return out, truncated


# --- rows -----------------------------------------------------------------------------


def pack_rows(examples: list[Example], seq_length: int, pad_id: int, packing: bool, seed: int) -> dict[str, np.ndarray]:
    """Rows of seq_length: tokens, labels, loss_mask, position_ids, segment_ids (-1 on padding)."""
    order = np.random.default_rng(seed).permutation(len(examples))
    groups: list[list[int]] = []
    if packing:
        free: list[int] = []  # room left in each open row: first fit
        for i in order:
            n = len(examples[i])
            slot = next((r for r, room in enumerate(free) if room >= n), None)
            if slot is None:
                groups.append([i])
                free.append(seq_length - n)
            else:
                groups[slot].append(i)
                free[slot] -= n
    else:
        groups = [[i] for i in order]
    rows = len(groups)
    out = {
        "tokens": np.full((rows, seq_length), pad_id, np.int64),
        "labels": np.full((rows, seq_length), pad_id, np.int64),
        "loss_mask": np.zeros((rows, seq_length), np.float32),
        "position_ids": np.tile(np.arange(seq_length, dtype=np.int64), (rows, 1)),
        "segment_ids": np.full((rows, seq_length), -1, np.int64),
    }
    for r, group in enumerate(groups):
        at = 0
        for seg, i in enumerate(group):
            ex, n = examples[i], len(examples[i])
            out["tokens"][r, at:at + n] = ex.tokens
            out["labels"][r, at:at + n] = ex.labels
            out["loss_mask"][r, at:at + n] = ex.loss_mask
            out["position_ids"][r, at:at + n] = np.arange(n)
            out["segment_ids"][r, at:at + n] = seg
            at += n
    return out


def attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool, True = masked (megatron's convention): causal within a segment.
    Padding (segment -1) attends to itself causally, so no row of the softmax is empty."""
    s = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return ~(same & causal)[:, None]


class SFTRows:
    """Fixed rows and micro-batches of one global batch for one data-parallel rank, by step."""

    def __init__(self, rows: dict[str, np.ndarray], global_batch: int, micro_batch: int, dp_size: int, dp_rank: int,
                 packing: bool):
        self.rows = {k: torch.from_numpy(v) for k, v in rows.items()}
        self.num_rows = len(rows["tokens"])
        if self.num_rows == 0:
            raise ValueError("no SFT rows: every record was empty or had no assistant token")
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.per_rank = global_batch // dp_size
        self.dp_rank = dp_rank
        self.packing = packing

    @property
    def num_microbatches(self) -> int:
        return self.per_rank // self.micro_batch

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.tensor([i % self.num_rows for i in indices])
        batch = {k: v[idx] for k, v in self.rows.items() if k != "segment_ids"}
        if self.packing:
            batch["attention_mask"] = attention_mask(self.rows["segment_ids"][idx])
        return batch

    def microbatches(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        start = step * self.global_batch + self.dp_rank * self.per_rank
        for m in range(self.num_microbatches):
            first = start + m * self.micro_batch
            yield self.batch(list(range(first, first + self.micro_batch)))


def split_validation(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded hold-out of `fraction` of the conversations (at least one when fraction > 0)."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = np.random.default_rng(seed + 1).permutation(len(examples))
    n_valid = max(1, int(round(len(examples) * fraction)))
    valid = set(order[:n_valid].tolist())
    return [e for i, e in enumerate(examples) if i not in valid], [e for i, e in enumerate(examples) if i in valid]


def build_sft_readers(data_cfg: Any, chat: ChatTokenizer, seq_length: int, seed: int, global_batch: int, micro_batch: int,
                      dp_size: int, dp_rank: int, train_files: list[Path] | None = None) -> tuple[SFTRows, SFTRows, dict]:
    """(train, valid, stats) from the recipe's data block (validation: data.valid files, else a split)."""
    files = train_files or expand_paths(data_cfg.train, "data.train")
    examples, truncated = tokenize_records(read_records(files), chat, seq_length)
    if data_cfg.valid:
        train_ex = examples
        valid_ex, valid_truncated = tokenize_records(read_records(expand_paths(data_cfg.valid, "data.valid")), chat, seq_length)
        truncated += valid_truncated
    else:
        train_ex, valid_ex = split_validation(examples, data_cfg.valid_fraction, seed)
    if not valid_ex:
        raise ValueError("no validation conversations: set data.valid or data.valid_fraction > 0")
    packing = data_cfg.packing == "pack"
    pad = chat.pad_id
    train = SFTRows(pack_rows(train_ex, seq_length, pad, packing, seed), global_batch, micro_batch, dp_size, dp_rank, packing)
    valid = SFTRows(pack_rows(valid_ex, seq_length, pad, packing, seed), global_batch, micro_batch, dp_size, dp_rank, packing)
    stats = {"train_conversations": len(train_ex), "valid_conversations": len(valid_ex), "train_rows": train.num_rows,
             "valid_rows": valid.num_rows, "truncated": truncated, "chat_template": chat.template_name,
             "assistant_tokens": int(sum(e.loss_mask.sum() for e in train_ex))}
    return train, valid, stats
