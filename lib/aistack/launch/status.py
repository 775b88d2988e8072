"""Where a run stands: each job and array task with its state (Slurm's, when on Slurm), and
for a pipeline one state per stage; cancelling a run."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from typing import Sequence

from aistack.launch.executor import FINISHED, FINISHED_BAD, INTERRUPTED
from aistack.launch.local import processes as localproc
from aistack.launch.slurm import waves
from aistack.launch.slurm.sacct import in_queue, queued_names, slurm_states
from aistack.plan_records import PlannedJob, StageRecord
from aistack.rundir import RunDir, elapsed_of, span
from aistack.track.sync import is_synced
from aistack.track.wandb_run import run_id


@dataclass
class TaskStatus:
    job: str
    task_id: int
    executor: str  # slurm | local | -
    job_id: str  # Slurm id as Slurm prints it (123 or 123_4), local pid, or ""
    # Slurm's state on Slurm; locally COMPLETED/FAILED/RUNNING/PENDING/INTERRUPTED/CANCELLED
    # from markers, INTERRUPTED too for a task recorded live whose processes are gone
    state: str
    attempt: int
    note: str = ""  # what the task's record says besides its state (a failed quick-save)
    span: tuple[float, float] | None = None  # when it started and ended (or was last updated)


@dataclass
class Cancelled:
    cancelled: list[str] = field(default_factory=list)  # what was cancelled
    elsewhere: list[str] = field(default_factory=list)  # local tasks of another host: not from here
    not_ours: list[str] = field(default_factory=list)  # recorded ids the cluster now gives to other jobs: left alone


@dataclass
class SlurmView:
    """What Slurm says of the runs being shown, asked once for all of them: sacct for the jobs
    that still have a task without DONE (a finished task's DONE is its state: its job is not
    asked about again, poll after poll), squeue for the follow-ups that submit later waves."""

    states: dict[str, str]
    queued: set[str]

    @classmethod
    def of(cls, runs: Sequence[RunDir]) -> "SlurmView":
        ids: set[str] = set()
        followups: list[str] = []
        for run in runs:
            ids |= unfinished_slurm_ids(run, run.latest_submissions())
            if record := waves.waiting_on(run):
                followups.append(record["followup"])
        return cls(slurm_states(sorted(ids)), in_queue(followups))


def unfinished_slurm_ids(run: RunDir, latest: dict) -> set[str]:
    done = {job: run.done_tasks(job) for job in {name for name, _ in latest}}
    return {str(rec["job_id"]) for (name, task_id), (rec, _) in latest.items()
            if rec["executor"] == "slurm" and task_id not in done[name]}


def run_status(run: RunDir, jobs: Sequence[PlannedJob], slurm: SlurmView | None = None) -> list[TaskStatus]:
    """`jobs`: the run's plan, in order; `slurm`: what Slurm says, when asked for several runs at once."""
    slurm = slurm or SlurmView.of([run])
    latest = run.latest_submissions()
    followup = waves.waiting_on(run)  # tasks a follow-up job submits in a later wave
    if followup and followup["followup"] not in slurm.queued:
        followup = None  # the chain has ended (or was cancelled): nothing will come
    states = slurm.states
    rows: list[TaskStatus] = []
    for job in jobs:
        name = job.name
        markers = run.task_states(name)  # one pass over the job's task folders
        for task_id in range(job.tasks):
            marker = markers.get(task_id, {})
            done = marker.get("state") == "COMPLETED"  # its DONE exists (state.json never says so)
            attempt = int(marker.get("attempt", 0)) if marker else 0
            waits = f"next wave: follow-up Slurm job {followup['followup']}" if followup and name in followup["waiting"] else ""
            if (name, task_id) not in latest:
                state = "COMPLETED" if done else ("WAITING" if waits else "NOT_SUBMITTED")
                rows.append(TaskStatus(name, task_id, "-", "", state, attempt, span=span(marker)))
                continue
            record, index = latest[(name, task_id)]
            if record["executor"] == "slurm":
                shown = f"{record['job_id']}_{index}" if index is not None else record["job_id"]
                # DONE is the task's commit point (a rerun trusts it too): COMPLETED, whatever
                # accounting says yet (slurmdbd lags behind a busy controller) or says of a task
                # killed after its commit point.
                state = "COMPLETED" if done else states.get(shown, "UNKNOWN")
            else:
                shown = str(record["job_id"])
                state = "COMPLETED" if done else marker.get("state", "PENDING")
                if state in localproc.LIVE_STATES and localproc.task_gone(run.log_dir(name), record["job_id"], marker,
                                                                         record.get("host")):
                    state = "INTERRUPTED"  # its aistack process was killed, or the machine restarted
            if waits and state in FINISHED_BAD and record.get("launch") != followup["launch"]:
                state = "WAITING"  # failed in an earlier launch, resubmitted in a wave of this one
            rows.append(TaskStatus(name, task_id, record["executor"], shown, state, attempt, task_note(marker), span(marker)))
    return rows


@dataclass
class TaskRange:
    """Consecutive tasks of a job alike in executor, state, attempt and array: one row."""

    job: str
    tasks: str  # "7" or "0-999"
    executor: str
    job_id: str  # "123", "123_4" or "123_[0-999]"
    state: str
    attempt: int


def task_ranges(rows: Sequence[TaskStatus]) -> list[TaskRange]:
    """The rows of `aistack status`: consecutive tasks of one job in the same state and
    attempt, and in the same Slurm array at consecutive indices (or not submitted), folded."""
    out: list[tuple[TaskStatus, TaskStatus]] = []  # (first, last) of each range
    for row in rows:
        if out and _continues(out[-1][1], row):
            out[-1] = (out[-1][0], row)
        else:
            out.append((row, row))
    return [TaskRange(first.job, str(first.task_id) if first is last else f"{first.task_id}-{last.task_id}",
                      first.executor, first.job_id if first is last else _id_range(first.job_id, last.job_id),
                      first.state, first.attempt) for first, last in out]


def _continues(last: TaskStatus, row: TaskStatus) -> bool:
    if (row.job, row.executor, row.state, row.attempt) != (last.job, last.executor, last.state, last.attempt) \
            or row.task_id != last.task_id + 1:
        return False
    if last.job_id in ("", "-"):  # not submitted (yet)
        return row.job_id == last.job_id
    array, _, index = last.job_id.rpartition("_")
    if not array or not index.isdigit():  # a job of its own (a local pid, a plain Slurm job)
        return False
    return row.job_id == f"{array}_{int(index) + 1}"


def _id_range(first: str, last: str) -> str:
    if first in ("", "-"):
        return first
    array, _, start = first.rpartition("_")
    return f"{array}_[{start}-{last.rpartition('_')[2]}]"


def task_note(marker: dict) -> str:
    """A failed quick-save (the save on the preemption or time-limit signal), unless a later
    one succeeded: the task resumed from an older periodic checkpoint."""
    failed_at = marker.get("quick_save_failed_at")
    if not failed_at or (marker.get("quick_saved_at") or 0) > failed_at:
        return ""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(failed_at))
    return f"quick-save failed {when}: {marker.get('quick_save_error') or 'unknown error'}"


def cancel_run(run: RunDir) -> Cancelled:
    """scancel every Slurm job of the run; end the process groups of its local tasks that run
    on this host (recorded CANCELLED). A local task recorded on another host is named in
    `elsewhere`: its pid means nothing here."""
    out = Cancelled()
    slurm_ids = sorted({str(r["job_id"]) for r in run.submissions() if r["executor"] == "slurm"})
    followup = waves.waiting_on(run)
    # Only jobs the controller still holds under this run's names: a recorded id may belong
    # to someone else's job now (ids start again when a cluster is rebuilt).
    names = queued_names(slurm_ids + ([followup["followup"]] if followup else []))
    if followup:  # first, or the end of the waves it waits on would start it
        if names.get(followup["followup"], "").endswith(f".{waves.FOLLOWUP_JOB}"):
            subprocess.run(["scancel", followup["followup"]], check=False, capture_output=True, timeout=60)
            out.cancelled.append(followup["followup"])
        (run.path / waves.WAVES_FILE).unlink(missing_ok=True)
    ours = [i for i in slurm_ids if names.get(i, "").startswith(f"{run.name}.")]
    out.not_ours = [f"{i} ({names[i]})" for i in slurm_ids if i in names and i not in ours]
    if ours:
        subprocess.run(["scancel", *ours], check=False, capture_output=True, timeout=60)
        out.cancelled += ours
    here = localproc.this_host()
    jobs: dict[tuple[str, int], list[int]] = {}  # (job, controller pid) -> its tasks
    for (name, task_id), (record, _) in run.latest_submissions().items():
        if record["executor"] != "local" or run.is_done(name, task_id):
            continue
        marker = run.task_state(name, task_id)
        if marker.get("state", "PENDING") not in localproc.LIVE_STATES:
            continue
        host = marker.get("host") or record.get("host")
        if host and host != here:
            out.elsewhere.append(f"{name} task {task_id} (pid {marker.get('pid', '?')} on host {host})")
            continue
        log_dir = run.log_dir(name)
        controller = int(record["job_id"]) if str(record["job_id"]).isdigit() else None
        task_pid = int(marker["pid"]) if marker.get("pid") else None
        if controller is not None and localproc.is_job_process(controller, log_dir, localproc.CONTROLLER):
            jobs.setdefault((name, controller), []).append(task_id)
        elif task_pid is not None and localproc.is_job_process(task_pid, log_dir, localproc.TASK):
            # its controller is gone: the rank still leads to the job's process group
            group = localproc.proc(task_pid)
            jobs.setdefault((name, group.pgid if group else task_pid), []).append(task_id)
    if jobs:
        localproc.stop_jobs([(controller, run.log_dir(name)) for name, controller in jobs])
    for (name, controller), task_ids in jobs.items():
        for task_id in task_ids:
            if not run.is_done(name, task_id):
                run.set_stopped_state(name, task_id, "CANCELLED", cancelled_at=time.time(), error="cancelled (aistack cancel)")
        out.cancelled.append(f"{name} task{'s' if len(task_ids) > 1 else ''} {', '.join(map(str, task_ids))} (pid {controller})")
    return out


# --- a pipeline: one state per stage, from its tasks' states ---------------------------


@dataclass
class StageState:
    name: str
    kind: str
    run: RunDir
    state: str  # COMPLETED, RUNNING, PENDING, FAILED, CANCELLED, INTERRUPTED (stopped here), NOT_SUBMITTED, ...
    done: int
    total: int
    elapsed_s: float | None
    wandb: str  # the W&B run of the stage's first job, task 0 (id prefix, and "offline" when not synced)
    needs: list[str]
    notes: list[str] = field(default_factory=list)  # "job task N: ..." from its tasks' records (a failed quick-save)
    active: bool = False  # a task still runs or waits to (a FAILED stage's other array tasks go on)


_ACTIVE = {"RUNNING", "COMPLETING", "CONFIGURING", "PENDING", "REQUEUE_HOLD", "SUSPENDED", "WAITING"} | INTERRUPTED


def stage_states(records: list[StageRecord]) -> list[StageState]:
    out: list[StageState] = []
    slurm = SlurmView.of([record.run for record in records if record.run.path.exists()])  # one sacct for every stage
    for record in records:
        name, kind, run, jobs, needs = record.name, record.kind, record.run, record.jobs, list(record.needs)
        rows = run_status(run, jobs, slurm) if run.path.exists() else []
        done = sum(r.state == "COMPLETED" for r in rows)
        total = sum(j.tasks for j in jobs)
        states = {r.state for r in rows}
        if rows and done == total:
            state = "COMPLETED"
        elif states & FINISHED_BAD:
            # the cause before its consequences: a failed task cancels the jobs after it
            state = min(states & FINISHED_BAD, key=lambda s: (s == "CANCELLED", s))
        elif states & ({"RUNNING", "COMPLETING", "CONFIGURING"} | INTERRUPTED):  # preempted: requeued, going on
            state = "RUNNING"
        elif states & {"PENDING", "REQUEUE_HOLD", "SUSPENDED"}:
            state = "PENDING"
        elif not rows or states <= {"NOT_SUBMITTED"}:
            state = "NOT_SUBMITTED"
        else:
            state = "PENDING" if done < total else "COMPLETED"
        wandb_dir = run.path / "wandb"
        first = jobs[0].name if jobs else ""
        wandb = "-"
        if wandb_dir.exists():
            full = run_id(run.name, first, 0)
            unsynced = [f for f in wandb_dir.glob(f"offline-run-*-{full}") if not is_synced(f)]
            wandb = full[:8] + (" offline" if unsynced else "")
        notes = [f"{r.job} task {r.task_id}: {r.note}" for r in rows if r.note]
        out.append(StageState(name, kind, run, state, done, total, elapsed_of(r.span for r in rows), wandb, needs,
                              notes, active=bool(states & _ACTIVE)))
    return out


def finished(states: list[StageState]) -> bool:
    """Nothing more will happen without a new submission: every stage ended (a failed one once
    its other tasks have ended too: their results are kept, and a rerun starts from them)."""
    return all(s.state in FINISHED | {"NOT_SUBMITTED"} and not s.active for s in states)


def rehearsal_findings(stages: Sequence[tuple[str, RunDir, Sequence[PlannedJob]]]) -> list[dict]:
    """Per stage and job of a rehearsal (launch/rehearsal.py): how many stand-ins passed,
    failed (the first errors; a task that died before recording one, Slurm's state), or have
    not run; and what one passing task saw (ranks, GPUs, input, checkpoint)."""
    slurm = SlurmView.of([run for _, run, _ in stages if run.path.exists()])
    rows = []
    for stage, run, jobs in stages:
        tasks = run_status(run, jobs, slurm) if run.path.exists() else []
        for job in jobs:
            mine = [t for t in tasks if t.job == job.name]
            passed = [t for t in mine if t.state == "COMPLETED"]
            failed = [t for t in mine if t.state in FINISHED_BAD]
            errors = [f"task {t.task_id}: " + (run.task_state(t.job, t.task_id).get("error")
                                               or f"Slurm {t.state} before it recorded an error (aistack logs --job {t.job} --task {t.task_id})")
                      for t in failed[:3]]
            seen = run.task_result(job.name, passed[0].task_id)["result"] if passed else None
            rows.append({"stage": stage, "job": job.name, "tasks": job.tasks, "passed": len(passed), "failed": len(failed),
                         "not_run": job.tasks - len(passed) - len(failed), "errors": errors, "seen": seen})
    return rows
