"""The divisibility rules of a TP x PP x DP layout, as plain checks (no torch import): the
planner rejects a recipe before submitting, the job checks again against its real world size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aistack.recipe.errors import RecipeError


def check_layout(recipe: Any, file: str | Path, world_size: int | None = None) -> None:
    """Raise RecipeError naming `file` and every layout rule the recipe breaks at
    `world_size` (default: its resources' nodes x tasks_per_node)."""
    if world_size is None:
        world_size = recipe.resources.world_size
    problems = layout_problems(recipe, world_size)
    if problems:
        raise RecipeError(str(file), problems)


def layout_problems(recipe: Any, world_size: int) -> list[tuple[str, object, str]]:
    """(key, value, expected) for each rule the recipe breaks at this world size."""
    m, p, t = recipe.model, recipe.parallel, recipe.train
    mp = p.tensor * p.pipeline
    if world_size % mp:
        return [("parallel.tensor x parallel.pipeline", f"{p.tensor} x {p.pipeline}",
                 f"must divide the world size {world_size} (resources.nodes x tasks_per_node)")]
    dp = world_size // mp
    out: list[tuple[str, object, str]] = []
    if m.num_attention_heads % p.tensor:
        out.append(("model.num_attention_heads", m.num_attention_heads, f"must be divisible by parallel.tensor {p.tensor}"))
    groups = m.num_query_groups or m.num_attention_heads
    if m.num_query_groups and groups % p.tensor:
        out.append(("model.num_query_groups", groups, f"must be divisible by parallel.tensor {p.tensor}"))
    stages = p.pipeline * (p.virtual_pipeline or 1)
    if m.num_layers % stages:
        out.append(("model.num_layers", m.num_layers,
                    f"must be divisible by parallel.pipeline x parallel.virtual_pipeline = {stages}"))
    if p.virtual_pipeline and p.pipeline < 2:
        out.append(("parallel.virtual_pipeline", p.virtual_pipeline, "needs parallel.pipeline >= 2"))
    if t.global_batch_size % (dp * t.micro_batch_size):
        out.append(("train.global_batch_size", t.global_batch_size,
                    f"must be divisible by data-parallel size {dp} x train.micro_batch_size {t.micro_batch_size}"))
    elif p.virtual_pipeline and (t.global_batch_size // (dp * t.micro_batch_size)) % p.pipeline:
        out.append(("train.global_batch_size", t.global_batch_size,
                    f"interleaved pipelining needs the micro-batches per step "
                    f"({t.global_batch_size // (dp * t.micro_batch_size)}) to be a multiple of parallel.pipeline {p.pipeline}"))
    if p.sequence_parallel and m.seq_length % p.tensor:
        out.append(("model.seq_length", m.seq_length, f"must be divisible by parallel.tensor {p.tensor} (sequence_parallel)"))
    return out


def padded_vocab_size(vocab_size: int, model_cfg: Any, tensor: int) -> int:
    """Megatron pads the embedding so each TP shard is a multiple of make_vocab_size_divisible_by."""
    multiple = model_cfg.make_vocab_size_divisible_by * tensor
    return (vocab_size + multiple - 1) // multiple * multiple

