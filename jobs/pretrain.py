"""One rank of a pretraining job (TP x PP x DP over all tasks of the job): see aistack.model.train."""

from __future__ import annotations

from aistack.runtime.task import TaskContext
from aistack.track.lineage import log_model, record_lineage


def run(ctx: TaskContext) -> dict:
    record_lineage(ctx)  # lineage.json: the data runs it reads, as W&B artifacts used
    from aistack.model.train import train  # heavy imports (torch, megatron) only inside the task

    result = train(ctx.recipe, ctx)
    log_model(ctx)  # the final checkpoint as a W&B `model` artifact, by reference
    return result
