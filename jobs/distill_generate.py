"""One shard of sequence-level distillation: the teacher answers its share of the prompts (jsonl)."""

from __future__ import annotations

from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    from aistack.post.generate import generate_shard

    return generate_shard(ctx.recipe, ctx.run.path, ctx.task_id, ctx.num_tasks)
