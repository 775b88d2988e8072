"""The student's SFT on the teacher's generated answers (sequence-level distillation)."""

from __future__ import annotations

from aistack.runtime.task import TaskContext
from aistack.track.lineage import log_model, record_lineage


def run(ctx: TaskContext) -> dict:
    record_lineage(ctx)  # lineage.json: the data runs it reads, as W&B artifacts used
    from aistack.model.train import train
    from aistack.post.generate import generated_files
    from aistack.post.objectives import SFTObjective

    files = generated_files(ctx.run.path, ctx.recipe.sequence.shards)
    result = train(ctx.recipe, ctx, SFTObjective(ctx.recipe.sequence, train_files=files))
    log_model(ctx)  # the final checkpoint as a W&B `model` artifact, by reference
    return result
