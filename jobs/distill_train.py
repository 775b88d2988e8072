"""One rank of the student's logit-distillation job (teacher online, or its top-k from the store)."""

from __future__ import annotations

from aistack.runtime.task import TaskContext
from aistack.track.lineage import log_model, record_lineage


def run(ctx: TaskContext) -> dict:
    record_lineage(ctx)  # lineage.json: the data runs it reads, as W&B artifacts used
    from aistack.model.train import train
    from aistack.post.objectives import DistillObjective
    from aistack.post.teacher_jobs import store_path

    result = train(ctx.recipe, ctx, DistillObjective(store_path(ctx.recipe, ctx.run.path)))
    log_model(ctx)  # the final checkpoint as a W&B `model` artifact, by reference
    return result
