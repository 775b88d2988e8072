"""MinHash stage 3 of `kind: dedup`: every duplicate pair -> the documents to remove."""

from __future__ import annotations

from aistack.data.layout import work_dir
from aistack.data.minhash import clusters_pipeline
from aistack.data.stage_task import run_data_task
from aistack.launch.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.dedup
    buckets = work_dir(ctx.run.path, "dedup/buckets")
    return run_data_task(ctx, lambda staging: clusters_pipeline(cfg, buckets, staging), work_dir(ctx.run.path, "dedup/clusters"))
