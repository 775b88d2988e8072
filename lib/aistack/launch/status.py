"""Where a run stands: each job and array task with its state (Slurm's, when on Slurm)."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

from aistack.launch.rundir import RunDir
from aistack.launch.slurm import slurm_states


@dataclass
class TaskStatus:
    job: str
    task_id: int
    executor: str  # slurm | local | -
    job_id: str  # Slurm id as Slurm prints it (123 or 123_4), local pid, or ""
    state: str  # Slurm's state on Slurm; COMPLETED/FAILED/RUNNING/PENDING from markers locally
    attempt: int


def latest_submissions(run: RunDir) -> dict[tuple[str, int], tuple[dict, int | None]]:
    """(job, task) -> (its latest submission record, its array index or None)."""
    latest: dict[tuple[str, int], tuple[dict, int | None]] = {}
    for record in run.submissions():
        for index, task_id in enumerate(record["task_ids"]):
            latest[(record["job"], task_id)] = (record, index if record["array"] else None)
    return latest


def run_status(run: RunDir, jobs: list[tuple[str, int]]) -> list[TaskStatus]:
    """`jobs`: (name, num_tasks) of the run's plan, in order."""
    latest = latest_submissions(run)
    slurm_ids = sorted({rec["job_id"] for rec, _ in latest.values() if rec["executor"] == "slurm"})
    states = slurm_states(slurm_ids) if slurm_ids else {}
    rows: list[TaskStatus] = []
    for name, num_tasks in jobs:
        for task_id in range(num_tasks):
            marker = run.task_state(name, task_id)
            attempt = int(marker.get("attempt", 0)) if marker else 0
            if (name, task_id) not in latest:
                state = "COMPLETED" if run.is_done(name, task_id) else "NOT_SUBMITTED"
                rows.append(TaskStatus(name, task_id, "-", "", state, attempt))
                continue
            record, index = latest[(name, task_id)]
            if record["executor"] == "slurm":
                shown = f"{record['job_id']}_{index}" if index is not None else record["job_id"]
                state = states.get(shown, "UNKNOWN")
            else:
                shown = str(record["job_id"])
                state = "COMPLETED" if run.is_done(name, task_id) else marker.get("state", "PENDING")
            rows.append(TaskStatus(name, task_id, record["executor"], shown, state, attempt))
    return rows


def cancel_run(run: RunDir) -> list[str]:
    """scancel every Slurm job of the run; stop local task processes. Returns what was cancelled."""
    cancelled: list[str] = []
    slurm_ids = sorted({r["job_id"] for r in run.submissions() if r["executor"] == "slurm"})
    if slurm_ids:
        subprocess.run(["scancel", *slurm_ids], check=False, capture_output=True, timeout=60)
        cancelled += slurm_ids
    for record in run.submissions():
        if record["executor"] != "local":
            continue
        for task_id in record["task_ids"]:
            marker = run.task_state(record["job"], task_id)
            if marker.get("state") == "RUNNING" and marker.get("pid"):
                try:
                    os.kill(int(marker["pid"]), signal.SIGTERM)
                    cancelled.append(f"pid {marker['pid']}")
                except ProcessLookupError:
                    pass
    return cancelled
