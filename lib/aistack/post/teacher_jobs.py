"""The offline teacher: top-k logits of the student's training sequences, block by block.

Task i of n writes blocks i, i+n, i+2n, ... of the store, skipping committed ones, so a
requeued or rerun task resumes where it stopped. The sequences are exactly the student's:
the same GPTDataset (a pure function of data, seed and sequence length), samples
[0, train.steps x train.global_batch_size).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from aistack.model import cpu_compat, dataset
from aistack.post.distill_loss import topk


def store_path(recipe: Any, run_path: Path) -> Path | None:
    if recipe.method != "logit" or recipe.logit.source != "offline":
        return None
    return Path(recipe.logit.store) if recipe.logit.store else Path(run_path) / "teacher_logits.zarr"


def student_sequences(recipe: Any, cache_dir: Path):
    """The student's training dataset (same order as its BatchReader reads it)."""
    t = recipe.train
    tokenizer = dataset.tokenizer_for(recipe.data, recipe.model)
    train_ds, _ = dataset.build_datasets(recipe.data, recipe.model.seq_length, t.seed, num_train=t.steps * t.global_batch_size,
                                      num_valid=t.eval_steps * t.global_batch_size, tokenizer=tokenizer, cache_dir=cache_dir)
    return train_ds, tokenizer


def write_teacher_logits(recipe: Any, run_path: Path, task_id: int, num_tasks: int, log: Callable | None = None,
                         micro_batch: int = 8) -> dict[str, Any]:
    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
    from aistack.post import topk_store
    from aistack.post.objectives import check_shared_vocab, load_teacher

    init_model_parallel(1, 1)
    try:
        with cpu_compat.device_scope():
            set_seeds(recipe.train.seed)
            path = store_path(recipe, run_path)
            train_ds, tokenizer = student_sequences(recipe, Path(run_path) / "teacher_logits_cache" / f"task{task_id}")
            vocab = recipe.model.vocab_size or tokenizer.vocab_size
            check_shared_vocab(recipe, vocab)
            spec = topk_store.StoreSpec(num_sequences=recipe.train.steps * recipe.train.global_batch_size,
                                        seq_length=recipe.model.seq_length, top_k=recipe.logit.top_k, vocab_size=vocab,
                                        block=recipe.logit.block, teacher=str(recipe.teacher.checkpoint))
            store = topk_store.create(path, spec)
            teacher = load_teacher(recipe, tensor=1)
            written, skipped, start = 0, 0, time.perf_counter()
            for block in range(task_id, spec.num_blocks, num_tasks):
                sequences = range(*store.block_range(block))
                keys = [topk_store.sequence_key(train_ds[i]["tokens"]) for i in sequences]
                if store.is_committed(block):
                    store.check_data(sequences, keys)  # written for these tokens, not another run's
                    skipped += 1
                    continue
                ids, values = teacher_topk(teacher, train_ds, sequences, spec.top_k, vocab, micro_batch)
                store.write_block(block, ids, values, keys)
                written += 1
                if log:
                    log(written, {"block": block, "blocks_written": written})
            seconds = time.perf_counter() - start
    finally:
        destroy_model_parallel()
    return {"store": str(path), "blocks_written": written, "blocks_skipped": skipped, "seconds": seconds}


@torch.no_grad()
def teacher_topk(teacher, dataset, indices, k: int, vocab: int, micro_batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32, values float16) [len(indices), s, k] for these dataset samples."""
    ids_out, values_out = [], []
    indices = list(indices)
    for lo in range(0, len(indices), micro_batch):
        samples = [dataset[i] for i in indices[lo:lo + micro_batch]]
        tokens = torch.stack([s["tokens"] for s in samples])
        positions = torch.stack([s["position_ids"] for s in samples])
        logits = teacher(tokens, positions, attention_mask=None)
        ids, values = topk(logits, k, vocab)
        ids_out.append(ids.cpu().numpy())
        values_out.append(values.cpu().numpy())
    return np.concatenate(ids_out), np.concatenate(values_out)
