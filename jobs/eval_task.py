"""One task of an evaluation sweep: (checkpoint, task) pair `task_id` of the recipe."""

from __future__ import annotations

from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    from aistack.eval.evaluator import evaluate_pair  # lm-eval, torch, megatron only inside the task

    cfg = ctx.recipe.evaluate
    checkpoint, task = cfg.pairs()[ctx.task_id]
    row = evaluate_pair(cfg, checkpoint, task, ctx.task_dir)
    for name, metrics in row["metrics"].items():
        ctx.log(row["step"] or 0, {f"{name}/{k}": v for k, v in metrics.items()})
    return row
