"""Where a data run keeps things inside its run directory.

    <run>/output/<kind>/           what the next pipeline stage reads (published files only)
    <run>/work/<name>/             intermediate files (MinHash signatures, buckets, ...)
    <run>/work/staging/<job>/<id>/ what a running task writes before it is published
    <run>/jobs/<job>/tasks/<id>/datatrove/  datatrove's logs, stats and completion marker
    <run>/stats.json, stats.csv, funnel.png  the merged table and plot
"""

from __future__ import annotations

from pathlib import Path


def output_dir(run_path: Path, kind: str) -> Path:
    return Path(run_path) / "output" / kind


def work_dir(run_path: Path, name: str) -> Path:
    return Path(run_path) / "work" / name


def staging_dir(run_path: Path, job: str, task_id: int) -> Path:
    return Path(run_path) / "work" / "staging" / job / f"{task_id:05d}"


def datatrove_dir(task_dir: Path) -> Path:
    return Path(task_dir) / "datatrove"
