"""Run one datatrove task in this process, with outputs published atomically.

Our Slurm array owns the parallelism: datatrove's LocalPipelineExecutor runs exactly
one rank (local_rank_offset=task_id, local_tasks=1, tasks=num_tasks, workers=1), so
each step shards with its own rank/world_size = our task_id/num_tasks.

datatrove writes its outputs at their final paths as it goes, so a killed task would
leave half a shard for the next job to read. The writers here write under a
per-task staging folder instead; when datatrove has marked the rank complete, the
files are moved (os.replace, same filesystem) into the final folder. A rerun of a
task whose rank is not complete wipes its staging folder and starts the shard again;
a rerun after completion only finishes publishing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from datatrove.executor import LocalPipelineExecutor

from aistack.data import remote


def rank_completed(logging_dir: Path, rank: int) -> bool:
    return (logging_dir / "completions" / f"{rank:05d}").exists()


def read_step_stats(logging_dir: Path, rank: int) -> list[dict]:
    """datatrove's per-step stats of one rank: [{name, time_stats, stats}, ...]."""
    path = logging_dir / "stats" / f"{rank:05d}.json"
    return json.loads(path.read_text()) if path.exists() else []


def publish(staging: Path, final: Path, documents_to: str | None = None) -> list[str]:
    """Move every file under staging to the same relative path under final.

    `documents_to`: where the files under staging/documents/ go instead (a folder, or an
    fsspec URL such as s3://bucket/prefix: uploaded, one object per file, then removed here).
    """
    moved = []
    if not staging.exists():
        return moved
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = src.relative_to(staging)
        if documents_to and rel.parts[0] == "documents":
            dst = remote.join(documents_to, "/".join(rel.parts[1:]))
            if remote.is_url(dst):
                remote.upload(str(src), dst)
                src.unlink()
            else:
                Path(dst).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(src, dst)
            moved.append(dst)
            continue
        dst = final / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        moved.append(str(dst))
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def run_staged(
    build: Callable[[Path], list],
    *,
    rank: int,
    world_size: int,
    logging_dir: Path,
    staging: Path,
    final: Path,
    documents_to: str | None = None,
) -> dict:
    """build(staging) -> the pipeline; runs it for `rank` unless datatrove says it is done.

    Returns {"steps": datatrove stats, "seconds": wall time of this attempt, "published": files}.
    """
    start = time.time()
    ran = False
    if not rank_completed(logging_dir, rank):
        shutil.rmtree(staging, ignore_errors=True)  # a half shard of a killed attempt
        staging.mkdir(parents=True, exist_ok=True)
        executor = LocalPipelineExecutor(
            build(staging), tasks=world_size, workers=1, local_tasks=1, local_rank_offset=rank,
            logging_dir=str(logging_dir), skip_completed=True,
        )
        executor.run()
        ran = True
        if not rank_completed(logging_dir, rank):
            raise RuntimeError(f"datatrove did not complete rank {rank} (see {logging_dir}/logs)")
    published = publish(staging, final, documents_to)
    return {"steps": read_step_stats(logging_dir, rank), "seconds": time.time() - start, "ran": ran, "published": published}
