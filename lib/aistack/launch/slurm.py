"""The Slurm executor: a plan -> submitit arrays and jobs chained with afterok.

Nothing waits on the login node: every job of the plan is submitted at once, each
dependent job with `--dependency=afterok:<ids of what it needs>`. Arrays larger than
the cluster's MaxArraySize are split into several arrays. Only tasks without a DONE
marker are submitted, so rerunning a recipe resumes it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from aistack.launch.plan import JobSpec, Plan
from aistack.launch.profile import ClusterProfile
from aistack.launch.rundir import RunDir
from aistack.launch.sbatch import SlurmLaunch, render_sbatch, slurm_launch
from aistack.launch.task import TaskRunner

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's own default


@dataclass
class Submitted:
    job: str
    job_id: str  # Slurm job id (of the array, for arrays)
    task_ids: list[int]
    is_array: bool
    sbatch: str | None = None  # rendered script, for --dry-run


def max_array_size(profile: ClusterProfile) -> int:
    if profile.max_array_size:
        return profile.max_array_size
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10).stdout
            match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
            if match:
                return int(match.group(1))
        except (subprocess.SubprocessError, OSError):
            pass
    return DEFAULT_MAX_ARRAY_SIZE


def chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def wandb_per_task(job: JobSpec) -> bool:
    # Big shard arrays log to metrics.jsonl only; their gather step reports to W&B.
    return job.num_tasks <= 16


class SlurmExecutor:
    def __init__(self, profile: ClusterProfile):
        self.profile = profile

    def job_name(self, run: RunDir, job: JobSpec) -> str:
        return f"{run.name}.{job.name}"

    def launch_for(self, run: RunDir, job: JobSpec, dependency: str | None) -> SlurmLaunch:
        return slurm_launch(job, self.profile, self.job_name(run, job), run.path.parent, dependency)

    def submit(self, plan: Plan, run: RunDir, dry_run: bool = False, after: list[str] | tuple[str, ...] = ()) -> list[Submitted]:
        """Submit every job with pending tasks; `after`: Slurm ids (of earlier pipeline
        stages) that every job of this plan waits for as well."""
        limit = max_array_size(self.profile)
        submitted: list[Submitted] = []
        ids_by_job: dict[str, list[str]] = {}
        for job in plan.ordered():
            pending = run.pending_tasks(job.name, job.num_tasks)
            if not pending:
                continue
            # A job waits on what it needs in this plan; one with nothing of this plan to wait
            # for waits on `after` itself (the others wait on it through their dependencies).
            needs = [jid for dep in job.depends_on for jid in ids_by_job.get(dep, [])] or list(after)
            dependency = "afterok:" + ":".join(needs) if needs else None
            launch = self.launch_for(run, job, dependency)
            groups = chunks(pending, limit) if job.is_array else [pending]
            for group in groups:
                as_array = job.is_array
                if dry_run:
                    fake_id = f"<{job.name}-{len(submitted)}>"
                    script = render_sbatch(launch, run.log_dir(job.name), len(group) if as_array else None)
                    item = Submitted(job.name, fake_id, group, as_array, script)
                else:
                    item = self._submit_group(run, job, launch, group, as_array)
                submitted.append(item)
                ids_by_job.setdefault(job.name, []).append(item.job_id)
        return submitted

    def _submit_group(self, run: RunDir, job: JobSpec, launch: SlurmLaunch, group: list[int], as_array: bool) -> Submitted:
        executor = submitit.SlurmExecutor(
            folder=run.log_dir(job.name), max_num_timeout=job.resources.max_requeues, python=launch.python
        )
        executor.update_parameters(**launch.params)
        track = wandb_per_task(job)
        runners = [TaskRunner(str(run.path), job.name, job.entry, t, job.num_tasks, track) for t in group]
        if as_array:
            with executor.batch():
                jobs = [executor.submit(r) for r in runners]
            job_id = jobs[0].job_id.split("_")[0]
            # submitit submits a batch of one as a plain job (id "123", not "123_0"): a rerun
            # of a single failed array task is then read back from Slurm as a job, not an array
            as_array = "_" in jobs[0].job_id
        else:
            job_id = executor.submit(runners[0]).job_id
        run.record_submission(
            {"job": job.name, "executor": "slurm", "job_id": job_id, "task_ids": group, "array": as_array, "time": time.time()}
        )
        return Submitted(job.name, job_id, group, as_array)


# --- reading states back from Slurm -------------------------------------------------

_ARRAY_RANGE_RE = re.compile(r"^(?P<id>\d+)_\[(?P<ranges>[^\]%]+)(%\d+)?\]$")


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{'123_4': 'COMPLETED', '124': 'RUNNING', ...} from sacct (accounting has every
    finished task), with squeue filling in pending array ranges sacct folds together."""
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)]
    for attempt in range(5):  # slurmdbd can be briefly busy under a burst of job records
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            break
        time.sleep(0.5 * (attempt + 1))
    else:
        raise RuntimeError(f"sacct failed (exit {out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    for line in out.stdout.splitlines():
        if "|" not in line:
            continue
        jid, state = line.split("|", 1)
        state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        match = _ARRAY_RANGE_RE.match(jid)
        if match:
            for index in _expand(match["ranges"]):
                states[f"{match['id']}_{index}"] = state
        else:
            states[jid] = state
    return states


def _expand(ranges: str) -> list[int]:
    out: list[int] = []
    for part in ranges.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def log_paths(run: RunDir, job: str, job_id: str, array_index: int | None) -> tuple[Path, Path]:
    full_id = f"{job_id}_{array_index}" if array_index is not None else job_id
    paths = submitit.core.utils.JobPaths(run.log_dir(job), job_id=full_id, task_id=0)
    return paths.stdout, paths.stderr
