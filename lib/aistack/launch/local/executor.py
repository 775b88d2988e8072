"""The local executor: the same plan on this machine, no scheduler.

Each task runs in its own process through submitit's LocalExecutor (same pickling and
JobEnvironment as on Slurm, multi-rank tasks included), at most `parallelism` at a time.
Jobs run in dependency order; a failed job stops its dependents.

Each job's controller leads its own session (localproc): a Ctrl-C at the terminal reaches
only the aistack process. Whatever ends `_run_job` early (Interrupted, from the signal
handler `aistack run` installs, a KeyboardInterrupt, an error) stops the job's running tasks,
whole process groups, and records them INTERRUPTED; finished tasks keep their DONE markers,
so running the same recipe again resumes the rest.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit

from aistack.launch.executor import Executor, JobFailed, Progress, Submitted, wandb_per_task
from aistack.launch.local.processes import (CONTROLLER, LIVE_STATES, STOP_GRACE_S, TASK, Interrupted, cmdline, job_processes,
                                            stop_jobs, this_host)
from aistack.launch.plan import JobSpec
from aistack.launch.profile import ClusterProfile
from aistack.rundir import RunDir
from aistack.runtime.task import TaskRunner


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
    killed = []
    for stray in job_processes(log_dir, (TASK,)):
        try:
            os.kill(stray.pid, signal.SIGKILL)
            killed.append(stray.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return killed


class SessionLocalExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor, each job's controller started as the leader of a new session
    (submitit.local.local.start_controller, plus start_new_session): its process group is the
    job, and signals meant for the aistack process (a terminal's Ctrl-C, a hangup) do not
    reach its tasks behind its back. `processes_at_once`: how many rank processes run at a time,
    to give each its share of the cores (OMP_NUM_THREADS; see aistack.runtime.task.share_cpus)."""

    processes_at_once = 1

    def _submit_command(self, command: str) -> submitit.local.local.LocalJob:
        ntasks = self.parameters.get("tasks_per_node", 1)
        env = dict(os.environ)
        env.update(
            SUBMITIT_LOCAL_NTASKS=str(ntasks),
            SUBMITIT_LOCAL_COMMAND=command,
            SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 2.0))),
            SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
            SUBMITIT_LOCAL_NODEID="0",
            SUBMITIT_LOCAL_JOB_NUM_NODES="1",
            SUBMITIT_STDERR_TO_STDOUT="1" if self.parameters.get("stderr_to_stdout", False) else "",
            SUBMITIT_EXECUTOR="local",
            CUDA_VISIBLE_DEVICES=",".join(str(k) for k in range(self.parameters.get("gpus_per_node", 0))),
            SUBMITIT_LOCAL_WITH_SHELL="",
        )
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.processes_at_once))
        process = subprocess.Popen([sys.executable, "-m", CONTROLLER, str(self.folder)], env=env, start_new_session=True)
        return submitit.local.local.LocalJob(folder=self.folder, job_id=str(process.pid), process=process,
                                             tasks=list(range(ntasks)))


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
        pending = self._stop_orphans(run, job, pending)
        res = job.resources
        executor = SessionLocalExecutor(folder=run.log_dir(job.name), max_num_timeout=res.max_requeues)
        ranks = res.world_size
        gpus = min(res.gpus_per_node, local_gpu_count())  # submitit sets CUDA_VISIBLE_DEVICES from it
        executor.update_parameters(timeout_min=res.time, tasks_per_node=ranks, nodes=1, gpus_per_node=gpus)
        slots = max(1, min(res.array_parallelism, self.parallelism) // ranks) if ranks > 1 else min(res.array_parallelism, self.parallelism)
        executor.processes_at_once = max(1, min(slots, len(pending))) * ranks
        track = wandb_per_task(job)
        queue = list(pending)
        running: dict[int, submitit.Job] = {}
        errors: dict[int, str] = {}
        finished = 0
        total = len(pending)
        started: list[int] = []  # noted before each task's job starts: a signal may come before `running` has it
        ended: set[int] = set()
        host = this_host()
        if progress:
            progress(job.name, 0, total)
        try:
            while queue or running:
                while queue and len(running) < slots:
                    task_id = queue.pop(0)
                    started.append(task_id)
                    runner = TaskRunner(str(run.path), job.name, job.entry, task_id, job.num_tasks, track, recipe=run.recipe)
                    submitted = executor.submit(runner)
                    run.record_submission(
                        {"job": job.name, "executor": "local", "job_id": submitted.job_id, "task_ids": [task_id], "array": False,
                         "time": time.time(), "host": host}
                    )
                    running[task_id] = submitted
                time.sleep(0.05)
                for task_id, handle in list(running.items()):
                    if not handle.done():
                        continue
                    del running[task_id]
                    ended.add(task_id)
                    finished += 1
                    exc = handle.exception()
                    if exc is not None:
                        # The task's own record names the error; submitit's names only the log file.
                        recorded = run.task_state(job.name, task_id).get("error")
                        errors[task_id] = recorded or f"{type(exc).__name__} (see {handle.paths.stderr})"
                    if progress:
                        progress(job.name, finished, total)
        except BaseException as err:
            why = err.signal_name if isinstance(err, Interrupted) else type(err).__name__
            stopped = self._stop(run, job, [t for t in started if t not in ended], running, why)
            if isinstance(err, Interrupted) and stopped:
                err.stopped.append((run.path, job.name, stopped))
            raise
        end_strays(run.log_dir(job.name))
        return errors

    @staticmethod
    def _stop_orphans(run: RunDir, job: JobSpec, pending: list[int]) -> list[int]:
        """Tasks still running from an `aistack run` that was killed outright (SIGKILL, a
        crash: it could not stop them): this launch holds the run's lock, so nothing else
        owns them. They are stopped and recorded INTERRUPTED before any task starts again,
        so no task runs twice; one that finished meanwhile keeps its DONE."""
        log_dir = run.log_dir(job.name)
        orphans = sorted({p.pid for p in job_processes(log_dir) if CONTROLLER.encode() in cmdline(p.pid)})
        if not orphans:
            return pending
        print(f"stopping job {job.name}'s tasks left running by an earlier `aistack run` (controller pids "
              f"{', '.join(map(str, orphans))}): they are rerun from their checkpoints", file=sys.stderr, flush=True)
        stop_jobs([(pid, log_dir) for pid in orphans], grace_s=STOP_GRACE_S)
        end_strays(log_dir)
        for task_id in pending:
            state = run.task_state(job.name, task_id).get("state")
            if not run.is_done(job.name, task_id) and state in LIVE_STATES:
                run.set_stopped_state(job.name, task_id, "INTERRUPTED", interrupted_by="orphaned", interrupted_at=time.time())
        return [t for t in pending if not run.is_done(job.name, t)]

    @staticmethod
    def _stop(run: RunDir, job: JobSpec, tasks: list[int], running: dict[int, submitit.Job], why: str) -> list[int]:
        """End the job's unfinished `tasks` (their process groups; a job whose handle the
        signal beat is found by its log folder) and record them INTERRUPTED, the task's own
        pid and host kept. A task that finished meanwhile keeps DONE; one that failed on its
        own keeps FAILED. Returns the tasks recorded INTERRUPTED."""
        log_dir = run.log_dir(job.name)
        controllers = {int(handle.job_id) for handle in running.values()}
        controllers |= {p.pid for p in job_processes(log_dir) if CONTROLLER.encode() in cmdline(p.pid)}
        stop_jobs([(pid, log_dir) for pid in sorted(controllers)], grace_s=STOP_GRACE_S)
        deadline = time.monotonic() + 5
        while not all(handle.done() for handle in running.values()) and time.monotonic() < deadline:
            time.sleep(0.02)  # done() polls, and so reaps, each controller
        stopped = []
        for task_id in tasks:
            if run.is_done(job.name, task_id):
                continue
            state = run.task_state(job.name, task_id)
            if state.get("state") == "FAILED" and not str(state.get("error", "")).startswith("KeyboardInterrupt"):
                continue
            run.set_stopped_state(job.name, task_id, "INTERRUPTED", interrupted_by=why, interrupted_at=time.time())
            stopped.append(task_id)
        return stopped
