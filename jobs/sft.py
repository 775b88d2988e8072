"""One rank of an SFT job: the pretraining loop with chat data and an assistant-only loss."""

from __future__ import annotations

from aistack.runtime.task import TaskContext
from aistack.track.lineage import log_model, record_lineage


def run(ctx: TaskContext) -> dict:
    record_lineage(ctx)  # lineage.json: the data runs it reads, as W&B artifacts used
    from aistack.model.train import train  # heavy imports (torch, megatron) only inside the task
    from aistack.post.objectives import SFTObjective

    result = train(ctx.recipe, ctx, SFTObjective(ctx.recipe.data))
    log_model(ctx)  # the final checkpoint as a W&B `model` artifact, by reference
    return result
