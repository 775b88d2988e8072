"""One shard of the offline teacher: its top-k logits for a share of the student's sequences, into zarr."""

from __future__ import annotations

from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    from aistack.post.teacher_jobs import write_teacher_logits

    return write_teacher_logits(ctx.recipe, ctx.run.path, ctx.task_id, ctx.num_tasks, log=ctx.log)
