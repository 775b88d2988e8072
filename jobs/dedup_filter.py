"""MinHash step 4 of `kind: dedup`: this shard minus its near-duplicates."""

from __future__ import annotations

from aistack.data.minhash import filter_pipeline
from aistack.data.run_paths import output_dir, work_dir
from aistack.data.shard_task import paths_file_for, run_shard_task
from aistack.data.inputs import planned_files
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.dedup
    files = planned_files(ctx.run, cfg.input, shard=(ctx.task_id, ctx.num_tasks))  # fixed when the run was planned
    data_folder, paths_file = paths_file_for(ctx, files)
    clusters = work_dir(ctx.run.path, "dedup/clusters")
    return run_shard_task(ctx, lambda staging: filter_pipeline(cfg, data_folder, paths_file, clusters, staging),
                         output_dir(ctx.run.path, "dedup"), files, outputs_under="/documents/",
                         documents_to=cfg.output_path)
