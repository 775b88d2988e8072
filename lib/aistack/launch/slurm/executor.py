"""The Slurm executor: a plan -> arrays and jobs submitted through submitit, chained with afterok.

Nothing waits on the login node: every job of the plan is submitted at once, each
dependent job with `--dependency=afterok:<ids of what it needs>`. Arrays larger than
the cluster's MaxArraySize are split into several arrays. Only tasks without a DONE
marker are submitted, so rerunning a recipe resumes it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import submitit

from aistack.launch.executor import (FINISHED, FINISHED_BAD, Executor, Progress, Submitted, SubmitRefused, TaskView,
                                     wandb_per_task)
from aistack.launch.slurm import waves
from aistack.launch.slurm.limits import LimitLookup, SubmitLimit, forget_cached_answers
from aistack.launch.plan import JobSpec
from aistack.launch.profile import ClusterProfile
from aistack.launch.slurm.sacct import in_queue, slurm_states
from aistack.recipe import LoadedRecipe
from aistack.rundir import RunDir
from aistack.launch.slurm.sbatch import SlurmLaunch, node_command, render_sbatch, slurm_launch
from aistack.runtime.node import write_tasks_file
from aistack.runtime.task import TaskRunner

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's own default


def max_array_size(profile: ClusterProfile) -> int:
    """The profile's, else slurm.conf's (read as a file: no RPC, and no wait while the
    controller is down), else what the controller says (configless sites), else Slurm's default."""
    if profile.max_array_size:
        return profile.max_array_size
    conf = Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    try:
        text = conf.read_text(errors="replace")
    except OSError:
        text = None
    if text is not None:
        value = slurm_conf_value(text, "MaxArraySize")
        return int(value) if value and value.isdigit() else DEFAULT_MAX_ARRAY_SIZE
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10).stdout
            match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
            if match:
                return int(match.group(1))
        except (subprocess.SubprocessError, OSError):
            pass
    return DEFAULT_MAX_ARRAY_SIZE


def slurm_conf_value(text: str, key: str) -> str | None:
    """The last `Key=Value` of a slurm.conf for `key` (keys are case-insensitive)."""
    value = None
    for line in text.splitlines():
        for word in line.split("#", 1)[0].split():
            name, sep, found = word.partition("=")
            if sep and name.lower() == key.lower():
                value = found
    return value


def chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def array_lanes(num_arrays: int, parallelism: int) -> list[tuple[int, int]]:
    """(lane, %N) for each array of a job split at MaxArraySize, so that the whole job runs
    at most `parallelism` tasks at once, as the recipe says: up to `parallelism` lanes run
    side by side, sharing it; the arrays of one lane run one after the other."""
    num_lanes = max(1, min(num_arrays, parallelism))
    share = [parallelism // num_lanes + (1 if lane < parallelism % num_lanes else 0) for lane in range(num_lanes)]
    return [(i % num_lanes, share[i % num_lanes]) for i in range(num_arrays)]


# What sbatch says when it refuses a job -> what the user can change.
_REFUSAL_HINTS = (
    ("QOSMaxSubmitJob", "the QOS caps how many jobs a user may have queued, and every array task counts: wait for "
                        "queued jobs to finish and rerun (finished tasks are kept), or ask for fewer tasks"),
    ("AssocMaxSubmitJob", "your association caps how many jobs you may have queued, and every array task counts: "
                          "wait for queued jobs to finish and rerun (finished tasks are kept), or ask for fewer tasks"),
    ("MaxArraySize", "the cluster's MaxArraySize is smaller than this array: set max_array_size in the cluster profile"),
    ("Invalid job array specification", "set max_array_size in the cluster profile to the cluster's MaxArraySize"),
    ("invalid partition", "check `partition` in the cluster profile (or resources.partition in the recipe)"),
    ("Invalid account", "check `account` in the cluster profile (or resources.account), and that it may use this partition"),
    ("Invalid qos", "check `qos` in the cluster profile (or resources.qos)"),
    ("Requested node configuration is not available", "no node of this partition has what the job asks for "
                                                     "(GPUs, CPUs, memory, constraint): lower resources or change partition"),
)


def refusal_message(what: str, tasks: int, slurm_says: str) -> str:
    said = " ".join(line.strip() for line in slurm_says.splitlines() if line.strip()) or "no reason given"
    hint = next((h for key, h in _REFUSAL_HINTS if key.lower() in said.lower()), "see the message above")
    return f"Slurm refused {what} ({tasks} task{'s' if tasks != 1 else ''}): {said}. What to change: {hint}."


class SlurmExecutor(Executor):
    def __init__(self, profile: ClusterProfile, launch_id: str | None = None, dry_run: bool = False):
        super().__init__(profile)
        self._max_array_size: int | None = None
        # Asked now, answered while the launch plans and writes its run directories.
        self._limit_lookup = None if dry_run else LimitLookup(profile.max_submit_jobs)
        # One `aistack run` and the follow-ups it chains: tasks that failed in an earlier
        # wave of the same launch are not retried by a follow-up (a rerun retries them).
        self.is_followup = launch_id is not None
        self.launch_id = launch_id or uuid.uuid4().hex[:12]

    def job_name(self, run: RunDir, job: JobSpec) -> str:
        return f"{run.name}.{job.name}"

    def launch_for(self, run: RunDir, job: JobSpec, dependency: str | None) -> SlurmLaunch:
        return slurm_launch(job, self.profile, self.job_name(run, job), run.path.parent, dependency)

    def submit_limit(self, qos: str | None) -> SubmitLimit:
        if self._limit_lookup is None:
            self._limit_lookup = LimitLookup(self.profile.max_submit_jobs)
        return self._limit_lookup.limit(qos)

    def end_pass(self, loaded: LoadedRecipe, top: RunDir, waiting: dict[RunDir, dict[str, int]],
                 rehearse: bool = False) -> str | None:
        """Under a submit limit, the follow-up job that submits what is `waiting` once every
        job submitted in this pass has ended (waves.py); with nothing waiting, no stage
        waits on a follow-up any more."""
        runs = list(waiting)
        if not any(waiting.values()):
            waves.clear(runs)
            return None
        return waves.submit_followup(self.profile, loaded, top, self.launch_id, [s.job_id for s in self.submitted],
                                     {run: jobs for run, jobs in waiting.items() if jobs}, rehearse)

    def _task_view(self, run: RunDir, job: JobSpec, dry_run: bool) -> TaskView:
        """Tasks without DONE, less those still queued or running from an earlier
        submission (their ids are waited on) and those that failed in this launch."""
        pending = run.pending_tasks(job.name, job.num_tasks)
        if dry_run or not pending or not run.submissions_file.exists():
            return TaskView(pending)
        # The latest Slurm submission of each pending task, as Slurm shows it (123 or 123_4).
        latest = run.latest_submissions()
        shown: dict[int, tuple[str, str, str | None]] = {}  # task -> (shown id, job id, launch)
        for task_id in pending:
            record, index = latest.get((job.name, task_id), ({}, None))
            if record.get("executor") == "slurm":
                job_id = str(record["job_id"])
                shown[task_id] = (f"{job_id}_{index}" if index is not None else job_id, job_id, record.get("launch"))
        states = slurm_states(sorted({job_id for _, job_id, _ in shown.values()}))
        # Accounting can lag the controller by a moment: ask the queue about what it lacks.
        queued = in_queue([job_id for task_id, (sid, job_id, _) in shown.items() if sid not in states])
        view = TaskView([])
        live: set[str] = set()
        for task_id in pending:
            if task_id not in shown:  # never submitted to Slurm: submit it
                view.pending.append(task_id)
                continue
            sid, job_id, launch = shown[task_id]
            state = states.get(sid, "UNKNOWN")
            if state == "UNKNOWN" and job_id in queued or state not in FINISHED | {"UNKNOWN"}:
                live.add(job_id)  # queued, running, or preempted and requeued: waited on, not resubmitted
            elif state in FINISHED_BAD and launch == self.launch_id:
                view.failed.append(task_id)
            else:
                view.pending.append(task_id)
        view.live_ids = sorted(live)
        return view

    def _submit_job(self, run: RunDir, job: JobSpec, pending: list[int], needs: list[str], dry_run: bool,
                    progress: Progress | None) -> list[Submitted]:
        """One job, or its arrays (split at the cluster's MaxArraySize), afterok on `needs`;
        under a submit limit, only the first wave of what fits (one slot is kept for the
        follow-up that submits the rest)."""
        if self._max_array_size is None:
            self._max_array_size = max_array_size(self.profile)
        if not dry_run:
            pending = self._first_wave(run, job, pending)
            if not pending:
                return []
        groups = chunks(pending, self._max_array_size) if job.is_array else [pending]
        lanes = array_lanes(len(groups), job.resources.array_parallelism) if job.is_array else [(0, None)]
        last_in_lane: dict[int, str] = {}
        items: list[Submitted] = []
        for group, (lane, parallelism) in zip(groups, lanes):
            after = ["afterok:" + ":".join(needs)] if needs else []
            if lane in last_in_lane:  # the lane's previous array, finished whatever its outcome
                after.append(f"afterany:{last_in_lane[lane]}")
            launch = self.launch_for(run, job, ",".join(after) or None)
            if parallelism is not None:
                launch.params["array_parallelism"] = parallelism
            if dry_run:
                script = render_sbatch(launch, run.log_dir(job.name), len(group) if job.is_array else None)
                items.append(Submitted(job.name, f"<{job.name}-{len(items)}>", group, job.is_array, script))
            else:
                items.append(self._submit_group(run, job, launch, group, job.is_array))
            last_in_lane[lane] = items[-1].job_id
        return items

    def _first_wave(self, run: RunDir, job: JobSpec, pending: list[int]) -> list[int]:
        """The tasks of `pending` that may be queued now, one slot kept for the follow-up
        that submits the rest. With no room at all on a first submission, Slurm's limit
        and what to change are the error."""
        qos = job.resources.qos or self.profile.job_class(job.resources.gpus_per_node > 0).qos
        limit = self.submit_limit(qos)
        room = limit.room()
        if room is None or len(pending) <= room - 1:
            return pending
        if job.is_array and room >= 2:
            return pending[: room - 1]
        if self.submitted or self.is_followup:  # a follow-up submits it later
            return []
        raise SubmitRefused(
            f"cannot submit {run.name}/{job.name} ({len(pending)} task{'s' if len(pending) != 1 else ''}): "
            f"{limit.describe()}, and {room} more may be queued now. What to change: wait for queued jobs to "
            "finish and rerun (finished tasks are kept), or set max_submit_jobs in the cluster profile if the "
            "cluster allows more")

    def _submit_group(self, run: RunDir, job: JobSpec, launch: SlurmLaunch, group: list[int], as_array: bool) -> Submitted:
        """One sbatch through submitit for `group`: its tasks file, then the array (or job)
        that runs aistack.runtime.node on it."""
        log_dir = run.log_dir(job.name)
        tasks_file = log_dir / f"tasks-{uuid.uuid4().hex[:16]}.pkl"
        runner = TaskRunner(str(run.path), job.name, job.entry, -1, job.num_tasks, wandb_per_task(job), recipe=run.recipe)
        write_tasks_file(tasks_file, runner, group, job.resources.max_requeues)
        executor = submitit.SlurmExecutor(folder=log_dir, python=launch.python)
        executor.update_parameters(**launch.params)
        if as_array:
            executor.parameters["map_count"] = len(group)  # as submitit's own arrays do
        try:
            job_id = executor._submit_command(node_command(executor.python, tasks_file)).job_id
        except submitit.core.utils.FailedJobError as err:
            tasks_file.unlink(missing_ok=True)
            forget_cached_answers()  # a submit limit lowered since they were asked: ask again
            raise SubmitRefused(refusal_message(f"{run.name}/{job.name}", len(group) if as_array else 1, str(err))) from None
        run.record_submission({"job": job.name, "executor": "slurm", "job_id": job_id, "task_ids": group,
                               "array": as_array, "time": time.time(), "launch": self.launch_id})
        return Submitted(job.name, job_id, group, as_array)


def log_paths(run: RunDir, job: str, job_id: str, array_index: int | None) -> tuple[Path, Path]:
    full_id = f"{job_id}_{array_index}" if array_index is not None else job_id
    paths = submitit.core.utils.JobPaths(run.log_dir(job), job_id=full_id, task_id=0)
    return paths.stdout, paths.stderr
