"""One rank of an SFT job: the pretraining loop with chat data and an assistant-only loss."""

from __future__ import annotations

from aistack.launch.task import TaskContext


def run(ctx: TaskContext) -> dict:
    from aistack.model.train import train  # heavy imports (torch, megatron) only inside the task
    from aistack.post.objectives import SFTObjective

    return train(ctx.recipe, ctx, SFTObjective(ctx.recipe.data))
