"""MinHash stage 4 of `kind: dedup`: this shard minus its near-duplicates."""

from __future__ import annotations

from aistack.data.layout import output_dir, work_dir
from aistack.data.minhash import filter_pipeline
from aistack.data.stage_task import paths_file_for, run_data_task
from aistack.launch.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.dedup
    files = cfg.input.files()
    data_folder, paths_file = paths_file_for(ctx, files)
    clusters = work_dir(ctx.run.path, "dedup/clusters")
    return run_data_task(ctx, lambda staging: filter_pipeline(cfg, data_folder, paths_file, clusters, staging),
                         output_dir(ctx.run.path, "dedup"), files, outputs_under="/documents/")
