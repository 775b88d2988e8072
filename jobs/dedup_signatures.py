"""MinHash stage 1 of `kind: dedup`: this shard's documents -> signatures per bucket."""

from __future__ import annotations

from aistack.data.layout import work_dir
from aistack.data.minhash import signatures_pipeline
from aistack.data.stage_task import paths_file_for, run_data_task
from aistack.launch.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.dedup
    files = cfg.input.files()
    data_folder, paths_file = paths_file_for(ctx, files)
    return run_data_task(ctx, lambda staging: signatures_pipeline(cfg, data_folder, paths_file, staging),
                         work_dir(ctx.run.path, "dedup/signatures"), files)
