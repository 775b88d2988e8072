"""What `aistack plan`, `run` and `status` print for a pipeline: the plan, GPU-hours, stage states."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from aistack.launch.launcher import FINISHED_BAD, FINISHED_OK
from aistack.launch.rundir import RunDir
from aistack.launch.status import run_status
from aistack.pipeline.stages import Pipeline, Stage


def gpu_hours(stage: Stage, device_profile_constraint: str = "") -> tuple[float, float | None]:
    """(at most: every job at its time limit, estimated: pretraining at the assumed MFU)."""
    limit = sum(j.num_tasks * j.resources.nodes * j.resources.gpus_per_node * j.resources.time / 60 for j in stage.plan.jobs)
    estimated = None
    recipe = stage.loaded.recipe
    if stage.kind == "pretrain" and recipe.resources.gpus_per_node:
        from aistack.model.estimate import device_for, estimate

        est = estimate(recipe, device=device_for(recipe.resources.constraint, device_profile_constraint), file=stage.loaded.path)
        if est.step_seconds:
            estimated = est.step_seconds * recipe.train.steps * recipe.resources.world_size / 3600
    return limit, estimated


def print_plan(console: Console, pipeline: Pipeline, outcomes, profile, scripts: bool) -> None:
    table = Table(title=f"pipeline {pipeline.loaded.recipe.name} on profile {profile.name}")
    for col in ("stage/job", "tasks", "nodes x gpus", "min", "after", "GPU-h limit", "GPU-h est."):
        table.add_column(col)
    total_limit = total_est = 0.0
    constraint = str(profile.sbatch_defaults.get("constraint", ""))
    for stage, outcome in zip(pipeline.stages, outcomes):
        limit, est = gpu_hours(stage, constraint)
        total_limit += limit
        total_est += est if est is not None else limit
        for i, job in enumerate(stage.plan.jobs):
            parts = [s for s in outcome.submitted if s.job == job.name]
            tasks = str(job.num_tasks)
            if len(parts) > 1:  # split at the cluster's MaxArraySize
                tasks += " (" + "+".join(str(len(s.task_ids)) for s in parts) + ")"
            elif not parts:
                tasks += " (done)"
            after = list(job.depends_on) or (list(stage.needs) if i == 0 else [])
            r = job.resources
            table.add_row(
                f"{stage.name}/{job.name}", tasks, f"{r.nodes} x {r.gpus_per_node}", str(r.time), ",".join(after) or "-",
                f"{limit:,.0f}" if i == 0 else "", (f"{est:,.0f}" if est is not None else "") if i == 0 else "",
            )
    console.print(table)
    console.print(f"GPU-hours: at most {total_limit:,.0f} (every job at its time limit); "
                  f"estimated {total_est:,.0f} (pretraining at the assumed MFU, other stages at their limits)")
    for stage in pipeline.stages:
        console.print(f"  {stage.name:<10} {stage.kind:<9} {stage.run.path}", soft_wrap=True)
    for path in pipeline.missing_inputs:
        console.print(f"[bold yellow]warning:[/] input not found on this machine (plan only): {path}", soft_wrap=True)
    if scripts:
        for stage, outcome in zip(pipeline.stages, outcomes):
            shown: set[str] = set()
            for item in outcome.submitted:
                if item.job in shown or not item.sbatch:
                    continue
                shown.add(item.job)
                console.rule(f"sbatch script of stage {stage.name}, job {item.job}")
                console.print(item.sbatch, markup=False, soft_wrap=True)


@dataclass
class StageState:
    name: str
    kind: str
    run: RunDir
    state: str  # COMPLETED, RUNNING, PENDING, FAILED, CANCELLED, NOT_SUBMITTED, ...
    done: int
    total: int
    elapsed_s: float | None
    wandb: str  # the W&B run of the stage's first job, task 0 (id prefix, and "offline" when not synced)
    needs: list[str]


def stage_states(records) -> list[StageState]:
    from aistack.pipeline.report import elapsed
    from aistack.track.wandb_run import run_id

    out: list[StageState] = []
    for name, kind, run, jobs, needs in records:
        rows = run_status(run, jobs) if run.path.exists() else []
        done = sum(r.state == "COMPLETED" for r in rows)
        total = sum(n for _, n in jobs)
        states = {r.state for r in rows}
        if rows and done == total:
            state = "COMPLETED"
        elif states & (FINISHED_BAD - {"PREEMPTED"}):
            # the cause before its consequences: a failed task cancels the jobs after it
            state = min(states & FINISHED_BAD, key=lambda s: (s == "CANCELLED", s))
        elif states & {"RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING"}:
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
            wandb = full[:8] + (" offline" if any(wandb_dir.glob(f"offline-run-*-{full}")) else "")
        out.append(StageState(name, kind, run, state, done, total, elapsed(run, plan_jobs) if run.path.exists() else None, wandb, needs))
    return out


def print_status(console: Console, states: list[StageState]) -> None:
    table = Table(title=f"pipeline stages ({time.strftime('%H:%M:%S')})")
    for col in ("stage", "needs", "kind", "state", "tasks done", "elapsed", "W&B run"):
        table.add_column(col)
    colors = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow", "NOT_SUBMITTED": "dim"}
    for s in states:
        color = colors.get(s.state, "red")
        elapsed = f"{s.elapsed_s:.0f} s" if s.elapsed_s is not None else "-"
        table.add_row(s.name, ",".join(s.needs) or "-", s.kind, f"[{color}]{s.state}[/]", f"{s.done}/{s.total}", elapsed, s.wandb)
    console.print(table)
    if states:
        console.print(f"run directories in {states[0].run.path.parent}/: " + ", ".join(s.run.name for s in states), soft_wrap=True)


def finished(states: list[StageState]) -> bool:
    """Nothing more will happen without a new submission."""
    return all(s.state in FINISHED_OK | FINISHED_BAD | {"NOT_SUBMITTED"} for s in states)
