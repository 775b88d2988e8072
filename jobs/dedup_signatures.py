"""MinHash step 1 of `kind: dedup`: this shard's documents -> signatures per bucket."""

from __future__ import annotations

from aistack.data.minhash import signatures_pipeline
from aistack.data.run_paths import work_dir
from aistack.data.shard_task import paths_file_for, run_shard_task
from aistack.data.inputs import planned_files
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.dedup
    files = planned_files(ctx.run, cfg.input, shard=(ctx.task_id, ctx.num_tasks))  # fixed when the run was planned
    data_folder, paths_file = paths_file_for(ctx, files)
    return run_shard_task(ctx, lambda staging: signatures_pipeline(cfg, data_folder, paths_file, staging),
                         work_dir(ctx.run.path, "dedup/signatures"), files)
