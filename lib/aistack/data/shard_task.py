"""One array task of a data job over its shard: paths file, staged datatrove run, result."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from aistack.data.inputs import shard_of, write_paths_file
from aistack.data.run_paths import datatrove_dir, staging_dir
from aistack.data.staged_run import run_staged
from aistack.data.stats import step_rows, task_result


def run_shard_task(ctx, build: Callable[[Path], list], final: Path, files: list[str] | None = None, outputs_under: str = "",
                   documents_to: str | None = None) -> dict:
    """Run `build(staging)` for this task; publish into `final`; return the task's stats.

    `documents_to`: where the documents go instead of final/documents (a folder or URL);
    `files`: the input files when the pipeline reads them (their bytes are counted);
    `outputs_under`: which published files count as output bytes (a sub-path such as
    "/documents/"; "" counts all).
    """
    out = run_staged(
        build, rank=ctx.task_id, world_size=ctx.num_tasks, logging_dir=datatrove_dir(ctx.task_dir),
        staging=staging_dir(ctx.run.path, ctx.job, ctx.task_id), final=final,
        documents_to=documents_to,
    )
    inputs = shard_of(files, ctx.task_id, ctx.num_tasks) if files else []
    outputs = [p for p in out["published"] if outputs_under in p or (documents_to and p.startswith(documents_to))]
    result = task_result(ctx.task_id, step_rows(out["steps"]), out["seconds"], inputs, outputs)
    ctx.log(0, {k: result[k] for k in ("documents_in", "documents_out", "tokens", "bytes_in", "bytes_out", "seconds")})
    return result


def paths_file_for(ctx, files: list[str]) -> tuple[str, str]:
    data_folder, paths_file = write_paths_file(files, ctx.task_dir / "inputs.txt")
    return data_folder, str(paths_file)
