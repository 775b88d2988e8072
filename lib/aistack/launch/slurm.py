"""The Slurm executor: a plan -> arrays and jobs submitted through submitit, chained with afterok.

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
import uuid
from pathlib import Path

import submitit

from aistack.launch.executor import FINISHED, FINISHED_BAD, Executor, Progress, Submitted, SubmitRefused, TaskView
from aistack.launch.limits import SubmitLimit, submit_limit
from aistack.launch.plan import JobSpec
from aistack.launch.profile import ClusterProfile
from aistack.launch.rundir import RunDir
from aistack.launch.sbatch import SlurmLaunch, node_command, render_sbatch, slurm_launch
from aistack.launch.node import write_tasks_file
from aistack.launch.task import TaskRunner

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's own default


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


def wandb_per_task(job: JobSpec) -> bool:
    # Big shard arrays log to metrics.jsonl only; their gather step reports to W&B.
    return job.num_tasks <= 16


class SlurmExecutor(Executor):
    def __init__(self, profile: ClusterProfile, launch_id: str | None = None):
        super().__init__(profile)
        self._max_array_size: int | None = None
        self._limits: dict[str | None, SubmitLimit] = {}
        # One `aistack run` and the follow-ups it chains: tasks that failed in an earlier
        # wave of the same launch are not retried by a follow-up (a rerun retries them).
        self.is_followup = launch_id is not None
        self.launch_id = launch_id or uuid.uuid4().hex[:12]

    def job_name(self, run: RunDir, job: JobSpec) -> str:
        return f"{run.name}.{job.name}"

    def launch_for(self, run: RunDir, job: JobSpec, dependency: str | None) -> SlurmLaunch:
        return slurm_launch(job, self.profile, self.job_name(run, job), run.path.parent, dependency)

    def submit_limit(self, qos: str | None) -> SubmitLimit:
        if qos not in self._limits:
            self._limits[qos] = submit_limit(self.profile.max_submit_jobs, qos)
        return self._limits[qos]

    def _task_view(self, run: RunDir, job: JobSpec, dry_run: bool) -> TaskView:
        """Tasks without DONE, less those still queued or running from an earlier
        submission (their ids are waited on) and those that failed in this launch."""
        pending = run.pending_tasks(job.name, job.num_tasks)
        if dry_run or not pending or not run.submissions_file.exists():
            return TaskView(pending)
        from aistack.launch.status import latest_submissions, run_status

        latest = latest_submissions(run)
        view = TaskView([])
        live: set[str] = set()
        rows = run_status(run, [(job.name, job.num_tasks)])
        # Accounting can lag the controller by a moment: ask the queue about what it lacks.
        queued = in_queue([r.job_id.split("_")[0] for r in rows if r.state == "UNKNOWN" and r.executor == "slurm"])
        for row in rows:
            if row.state == "COMPLETED" and run.is_done(job.name, row.task_id):
                continue
            if row.state == "UNKNOWN" and row.job_id.split("_")[0] in queued:
                live.add(row.job_id.split("_")[0])
            elif row.executor == "slurm" and row.state not in FINISHED | {"UNKNOWN", "NOT_SUBMITTED", "WAITING"}:
                live.add(row.job_id.split("_")[0])
            elif row.state in FINISHED_BAD and latest[(job.name, row.task_id)][0].get("launch") == self.launch_id:
                view.failed.append(row.task_id)
            elif not run.is_done(job.name, row.task_id):
                view.pending.append(row.task_id)
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
        if self.submitted_ids or self.is_followup:  # a follow-up submits it later
            return []
        raise SubmitRefused(
            f"cannot submit {run.name}/{job.name} ({len(pending)} task{'s' if len(pending) != 1 else ''}): "
            f"{limit.describe()}, and {room} more may be queued now. What to change: wait for queued jobs to "
            "finish and rerun (finished tasks are kept), or set max_submit_jobs in the cluster profile if the "
            "cluster allows more")

    def _submit_group(self, run: RunDir, job: JobSpec, launch: SlurmLaunch, group: list[int], as_array: bool) -> Submitted:
        """One sbatch through submitit for `group`: its tasks file, then the array (or job)
        that runs aistack.launch.node on it."""
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
            raise SubmitRefused(refusal_message(f"{run.name}/{job.name}", len(group) if as_array else 1, str(err))) from None
        run.record_submission({"job": job.name, "executor": "slurm", "job_id": job_id, "task_ids": group,
                               "array": as_array, "time": time.time(), "launch": self.launch_id})
        return Submitted(job.name, job_id, group, as_array)


# --- reading states back from Slurm -------------------------------------------------

_ARRAY_RANGE_RE = re.compile(r"^(?P<id>\d+)_\[(?P<ranges>[^\]%]+)(%\d+)?\]$")


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{'123_4': 'COMPLETED', '124': 'RUNNING', ...} from sacct: accounting has every task,
    pending array tasks folded into ranges (expanded by parse_sacct)."""
    if not job_ids:
        return {}
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)]
    for attempt in range(5):  # slurmdbd can be briefly busy under a burst of job records
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            break
        time.sleep(0.5 * (attempt + 1))
    else:
        raise RuntimeError(f"sacct failed (exit {out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return parse_sacct(out.stdout)


def in_queue(job_ids: list[str]) -> set[str]:
    """Which of these jobs (or arrays) the controller still has queued or running."""
    if not job_ids:
        return set()
    out = subprocess.run(["squeue", "-h", "-o", "%F", "-j", ",".join(sorted(set(job_ids)))], capture_output=True,
                         text=True, timeout=60)
    # squeue exits non-zero when none of the ids is known any more
    return {line.strip() for line in out.stdout.splitlines() if line.strip()} if out.returncode == 0 else set()


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -X -n -P -o JobID,State` output -> {job or array task id: state}. Pending
    array ranges ("123_[4-6,9%2]") are expanded to one entry per task."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        jid, state = line.split("|", 1)
        state = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
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
