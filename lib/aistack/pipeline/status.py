"""Where a pipeline stands: one state per stage, from its tasks' states (Slurm's on Slurm)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aistack.launch.executor import FINISHED, FINISHED_BAD, INTERRUPTED
from aistack.launch.rundir import RunDir
from aistack.launch.status import run_status


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


def stage_states(records) -> list[StageState]:
    from aistack.pipeline.report_page import elapsed
    from aistack.track.sync import is_synced
    from aistack.track.wandb_run import run_id

    out: list[StageState] = []
    for name, kind, run, jobs, needs in records:
        rows = run_status(run, jobs) if run.path.exists() else []
        done = sum(r.state == "COMPLETED" for r in rows)
        total = sum(n for _, n in jobs)
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
        plan_jobs = [{"name": j, "tasks": n} for j, n in jobs]
        wandb_dir = run.path / "wandb"
        first = jobs[0][0] if jobs else ""
        wandb = "-"
        if wandb_dir.exists():
            full = run_id(run.name, first, 0)
            unsynced = [f for f in wandb_dir.glob(f"offline-run-*-{full}") if not is_synced(f)]
            wandb = full[:8] + (" offline" if unsynced else "")
        notes = [f"{r.job} task {r.task_id}: {r.note}" for r in rows if r.note]
        out.append(StageState(name, kind, run, state, done, total, elapsed(run, plan_jobs) if run.path.exists() else None, wandb, needs,
                              notes, active=bool(states & _ACTIVE)))
    return out


def finished(states: list[StageState]) -> bool:
    """Nothing more will happen without a new submission: every stage ended (a failed one once
    its other tasks have ended too: their results are kept, and a rerun starts from them)."""
    return all(s.state in FINISHED | {"NOT_SUBMITTED"} and not s.active for s in states)
