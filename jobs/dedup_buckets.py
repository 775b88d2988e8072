"""MinHash step 2 of `kind: dedup`: one bucket (band) -> its duplicate pairs."""

from __future__ import annotations

from aistack.data.minhash import buckets_pipeline
from aistack.data.run_paths import work_dir
from aistack.data.shard_task import run_shard_task
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.dedup
    signatures = work_dir(ctx.run.path, "dedup/signatures")
    return run_shard_task(ctx, lambda staging: buckets_pipeline(cfg, signatures, staging), work_dir(ctx.run.path, "dedup/buckets"))
