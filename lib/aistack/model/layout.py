"""The divisibility rules of a TP x PP x DP layout, as plain checks (no torch import): the
planner rejects a recipe before submitting, the job checks again against its real world size."""

from __future__ import annotations

from typing import Any


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


def data_parallel_size(recipe: Any, world_size: int) -> int:
    return world_size // (recipe.parallel.tensor * recipe.parallel.pipeline)
