"""The last stage of a pipeline: report.md and report.html over every stage's outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    from aistack.report.page import build

    cfg = ctx.recipe.report
    stages = [s.model_dump() for s in cfg.stages]
    result = build(cfg.title, stages, ctx.run.path)
    if cfg.copy_to:
        # The pipeline directory shows the report of its latest run.
        dest = Path(cfg.copy_to)
        for item in ctx.run.path.iterdir():
            if item.suffix in (".md", ".html", ".png"):
                shutil.copyfile(item, dest / f".{item.name}.tmp")
                (dest / f".{item.name}.tmp").replace(dest / item.name)
    ctx.log(0, {"report/sections": len(result["sections"]), "report/images": result["images"]})
    return result
