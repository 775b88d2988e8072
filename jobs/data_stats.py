"""The gather job of a data run: one stats table, W&B, and the funnel plot."""

from __future__ import annotations

from aistack.data.stats_report import NoDocuments, build_report, no_documents
from aistack.runtime.task import TaskContext
from aistack.track.lineage import log_dataset


def run(ctx: TaskContext) -> dict:
    report = build_report(ctx.run)
    for job in report["table"]["jobs"]:
        ctx.log(0, {f"{job['job']}/{k}": v for k, v in job.items() if isinstance(v, (int, float)) and k != "steps"})
    _log_table(ctx, report)
    if why := no_documents(report["table"]):  # the table is written: `aistack report` shows it
        raise NoDocuments(f"run {ctx.run.name}: {why}")
    log_dataset(ctx)  # dataset-manifest.json, and the outputs as a W&B artifact (lineage)
    return {"stats": str(report["json"]), "csv": str(report["csv"]), "funnel": str(report["funnel"])}


def _log_table(ctx: TaskContext, report: dict) -> None:
    run = ctx.wandb.run  # the W&B run TaskRunner opened for this task, if any
    if run is None:
        return
    import wandb

    rows = report["table"]["jobs"]
    cols = ["job", "step", "name", "documents_in", "documents_out", "dropped"]
    table = wandb.Table(columns=cols, data=[[j["job"], i, s["name"], s["documents_in"], s["documents_out"], s["dropped"]]
                                            for j in rows for i, s in enumerate(j["steps"])])
    run.log({"data/stats": table, "data/funnel": wandb.Image(str(report["funnel"]))})
