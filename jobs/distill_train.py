"""One rank of the student's logit-distillation job (teacher online, or its top-k from the store)."""

from __future__ import annotations

from aistack.launch.task import TaskContext


def run(ctx: TaskContext) -> dict:
    from aistack.model.train import train
    from aistack.post.objectives import DistillObjective
    from aistack.post.teacher_jobs import store_path

    return train(ctx.recipe, ctx, DistillObjective(store_path(ctx.recipe, ctx.run.path)))
