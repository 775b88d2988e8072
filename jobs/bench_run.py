"""The benchmark job: every sweep point of the recipe, quality BF16 vs FP8, report (see aistack.bench.run)."""

from __future__ import annotations

from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    from aistack.bench.run import run_bench

    result = run_bench(ctx.recipe.bench, ctx.task_dir, ctx.run.path, log=ctx.log)
    _log_wandb(ctx, result)
    return result


def _log_wandb(ctx: TaskContext, result: dict) -> None:
    run = getattr(ctx.wandb, "_run", None)
    if run is None:
        return
    import csv

    import wandb

    with open(result["csv"]) as handle:
        rows = list(csv.reader(handle))
    run.log({"bench/results": wandb.Table(columns=rows[0], data=rows[1:]), "bench/throughput": wandb.Image(result["plot"])})
    quality = result.get("quality") or {}
    run.summary.update({f"quality/{p}/{k}": v for p in ("bf16", "fp8", "delta_fp8_minus_bf16")
                        for k, v in (quality.get(p) or {}).items()})
