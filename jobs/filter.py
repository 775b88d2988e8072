"""One shard of `kind: filter`: the FineWeb pipeline over this task's input files."""

from __future__ import annotations

from aistack.data.filters import build_filter_pipeline
from aistack.data.run_paths import output_dir
from aistack.data.shard_task import paths_file_for, run_shard_task
from aistack.data.inputs import planned_files
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.filter
    files = planned_files(ctx.run, cfg.input, shard=(ctx.task_id, ctx.num_tasks))  # fixed when the run was planned
    data_folder, paths_file = paths_file_for(ctx, files)
    kill = ctx.task_id in cfg.kill_tasks

    def build(staging):
        removed = staging / "removed" if cfg.output.keep_removed else None
        return build_filter_pipeline(cfg, data_folder, paths_file, staging / "documents", removed, kill=kill)

    return run_shard_task(ctx, build, output_dir(ctx.run.path, "filter"), files, outputs_under="/documents/",
                          documents_to=cfg.output.path)
