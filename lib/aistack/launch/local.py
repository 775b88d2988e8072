"""The local executor: the same plan on this machine, no scheduler.

Each task runs in its own process through submitit's LocalExecutor (same pickling and
JobEnvironment as on Slurm, multi-rank tasks included), at most `parallelism` at a time.
Jobs run in dependency order; a failed job stops its dependents.
"""

from __future__ import annotations

import glob
import os
import signal
import time
from pathlib import Path

import submitit

from aistack.launch.executor import Executor, JobFailed, Progress, Submitted
from aistack.launch.plan import JobSpec
from aistack.launch.profile import ClusterProfile
from aistack.launch.rundir import RunDir
from aistack.launch.slurm import wandb_per_task
from aistack.launch.task import TaskRunner


def local_gpu_count() -> int:
    """GPUs this machine lets us use, without importing torch: CUDA_VISIBLE_DEVICES when
    set, else the NVIDIA device files."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def end_strays(log_dir: Path) -> list[int]:
    """Kill what a job's tasks left behind once every task has ended: processes they forked
    (datatrove's workers, a checkpoint writer) outlive a task that was killed, reparented to
    init, still holding files and sockets. They carry the task's command line, which names
    the job's own log folder, so nothing else matches."""
    marker = f"submitit.core._submit\0{log_dir}\0".encode()  # the whole argument
    killed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                if marker not in handle.read():
                    continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return killed


class LocalExecutor(Executor):
    def __init__(self, profile: ClusterProfile, parallelism: int | None = None):
        super().__init__(profile)
        self.parallelism = parallelism or max(os.cpu_count() or 1, 1)

    def _submit_job(self, run: RunDir, job: JobSpec, pending: list[int], needs: list[str], dry_run: bool,
                    progress: Progress | None) -> list[Submitted]:
        # `needs` is already satisfied: jobs and stages run here one after the other.
        if dry_run:
            return [Submitted(job.name, "local", pending, job.is_array)]
        errors = self._run_job(run, job, pending, progress)
        if errors:
            raise JobFailed("; ".join(f"task {t}: {e}" for t, e in sorted(errors.items())[:3]))
        return [Submitted(job.name, "local", pending, job.is_array)]

    def _run_job(self, run: RunDir, job: JobSpec, pending: list[int], progress: Progress | None) -> dict[int, str]:
        res = job.resources
        executor = submitit.LocalExecutor(folder=run.log_dir(job.name), max_num_timeout=res.max_requeues)
        ranks = res.world_size
        gpus = min(res.gpus_per_node, local_gpu_count())  # submitit sets CUDA_VISIBLE_DEVICES from it
        executor.update_parameters(timeout_min=res.time, tasks_per_node=ranks, nodes=1, gpus_per_node=gpus)
        slots = max(1, min(res.array_parallelism, self.parallelism) // ranks) if ranks > 1 else min(res.array_parallelism, self.parallelism)
        track = wandb_per_task(job)
        queue = list(pending)
        running: dict[int, submitit.Job] = {}
        errors: dict[int, str] = {}
        finished = 0
        total = len(pending)
        if progress:
            progress(job.name, 0, total)
        while queue or running:
            while queue and len(running) < slots:
                task_id = queue.pop(0)
                runner = TaskRunner(str(run.path), job.name, job.entry, task_id, job.num_tasks, track, recipe=run.recipe)
                submitted = executor.submit(runner)
                run.record_submission(
                    {"job": job.name, "executor": "local", "job_id": submitted.job_id, "task_ids": [task_id], "array": False, "time": time.time()}
                )
                running[task_id] = submitted
            time.sleep(0.05)
            for task_id, handle in list(running.items()):
                if not handle.done():
                    continue
                del running[task_id]
                finished += 1
                exc = handle.exception()
                if exc is not None:
                    # The task's own record names the error; submitit's names only the log file.
                    recorded = run.task_state(job.name, task_id).get("error")
                    errors[task_id] = recorded or f"{type(exc).__name__} (see {handle.paths.stderr})"
                if progress:
                    progress(job.name, finished, total)
        end_strays(run.log_dir(job.name))
        return errors
