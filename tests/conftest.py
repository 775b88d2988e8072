"""Shared fixtures: the real local Slurm cluster (started once per session), recipe helpers."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

import aistack.launch  # noqa: F401  (sets the preemption signal before submitit is imported)

pytest_plugins = ["leftovers"]  # no process a test starts may outlive it (tests/leftovers.py)

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def _cluster_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    probe = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=30)
    return probe.returncode == 0 and subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """Bring up slurm/ (munge, MariaDB, slurmdbd, slurmctld, slurmd); stop it afterwards if we started it."""
    was_up = _cluster_answers()
    subprocess.run(["bash", str(REPO / "slurm" / "up.sh")], check=True, timeout=300)
    yield
    if not was_up:
        subprocess.run(["bash", str(REPO / "slurm" / "down.sh")], check=False, timeout=300)


@pytest.fixture
def runs_root(tmp_path: Path):
    root = tmp_path / "runs"
    root.mkdir()
    yield root
    # Slurm jobs a test submitted (a failed test's queued waves and follow-ups included)
    # do not outlive it.
    if shutil.which("scancel"):
        from aistack.launch.rundir import RunDir
        from aistack.launch.status import cancel_run

        for submissions in root.rglob("submissions.jsonl"):
            cancel_run(RunDir(submissions.parent))


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def describe_unfinished(states) -> str:
    """Why stages did not complete, for an assertion message: each one's task states, the
    error each failed task recorded, and the end of its stderr (CI shows only this)."""
    from aistack.launch.slurm import log_paths
    from aistack.launch.status import latest_submissions, run_status

    lines = []
    for stage in states:
        if stage.state == "COMPLETED":
            continue
        lines.append(f"stage {stage.name}: {stage.state} ({stage.done}/{stage.total} done)")
        if not stage.run.path.exists():
            continue
        latest = latest_submissions(stage.run)
        jobs = [(name, n) for name, n in _plan_jobs(stage.run)]
        for row in run_status(stage.run, jobs):
            if row.state == "COMPLETED":
                continue
            error = stage.run.task_state(row.job, row.task_id).get("error", "")
            lines.append(f"  {row.job}[{row.task_id}] {row.executor} {row.job_id} {row.state} attempt={row.attempt} {error}")
            if row.executor == "slurm" and (row.job, row.task_id) in latest:
                record, index = latest[(row.job, row.task_id)]
                stderr = log_paths(stage.run, row.job, record["job_id"], index)[1]
                if stderr.exists():
                    lines += ["    " + line for line in stderr.read_text(errors="replace").splitlines()[-15:]]
    return "\n".join(lines)


def _plan_jobs(run) -> list[tuple[str, int]]:
    jobs: dict[str, int] = {}
    for record in run.submissions():
        jobs[record["job"]] = max(jobs.get(record["job"], 0), max(record["task_ids"]) + 1)
    return list(jobs.items())
