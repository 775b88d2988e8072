"""The gather job of an evaluation sweep: results.json/.csv, a plot per metric, W&B."""

from __future__ import annotations

from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    from aistack.eval.sweep import gather
    from aistack.track.lineage import log_results, record_lineage

    record_lineage(ctx)  # the checkpoints it evaluated: their training runs' `model` artifacts, used
    report = gather(ctx.run, "eval", len(ctx.recipe.evaluate.pairs()))
    by_step: dict[int, dict[str, float]] = {}
    for r in report["rows"]:
        by_step.setdefault(r["step"] or 0, {})[f"{r['run']}/{r['task']}/{r['metric']}"] = r["value"]
    for step in sorted(by_step):  # W&B steps must increase
        ctx.log(step, by_step[step])
    _log_wandb(ctx, report)
    log_results(ctx, [report["json"], report["csv"]])  # an `eval-results` artifact (lineage)
    return {"results": str(report["json"]), "csv": str(report["csv"]), "plots": [str(p) for p in report["plots"]],
            "rows": len(report["rows"])}


def _log_wandb(ctx: TaskContext, report: dict) -> None:
    run = getattr(ctx.wandb, "_run", None)
    if run is None:
        return
    import wandb

    cols = ["run", "step", "task", "metric", "value", "backend"]
    table = wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in report["rows"]])
    run.log({"eval/results": table, **{f"eval/plot/{p.stem}": wandb.Image(str(p)) for p in report["plots"]}})
