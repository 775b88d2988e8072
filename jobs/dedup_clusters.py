"""MinHash step 3 of `kind: dedup`: every duplicate pair -> the documents to remove."""

from __future__ import annotations

from aistack.data.minhash import clusters_pipeline
from aistack.data.run_paths import work_dir
from aistack.data.shard_task import run_shard_task
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.dedup
    buckets = work_dir(ctx.run.path, "dedup/buckets")
    return run_shard_task(ctx, lambda staging: clusters_pipeline(cfg, buckets, staging), work_dir(ctx.run.path, "dedup/clusters"))
