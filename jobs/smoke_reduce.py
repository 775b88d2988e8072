"""The reduce step of the smoke recipe: gathers every shard's result (runs afterok map)."""

from __future__ import annotations

from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    num = ctx.recipe.smoke.tasks
    results = [ctx.run.task_result("map", t) for t in range(num)]
    missing = [t for t, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"map tasks {missing} have no result: reduce must only run after all of them")
    total = sum(r["result"]["total"] for r in results)
    expected = sum((t + 1) * ctx.recipe.smoke.steps * (ctx.recipe.smoke.steps + 1) // 2 for t in range(num))
    summary = {"tasks": num, "total": total, "expected": expected, "ok": total == expected}
    ctx.log(0, summary)
    return summary
