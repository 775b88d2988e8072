"""What `aistack plan`, `run` and `status` print for a pipeline: the plan, GPU-hours, stage states."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from aistack.recipe.kinds import spec_for
from aistack.launch.stages import Pipeline, Stage
from aistack.launch.status import StageState


def gpu_hours(stage: Stage, device_profile_constraint: str = "") -> tuple[float, float | None]:
    """(at most: every job at its time limit, estimated: a training job (pretrain, sft, distill)
    at the assumed MFU, the stage's other jobs (a distillation teacher's) at their limits)."""
    limit = sum(j.gpu_hours for j in stage.plan.jobs)
    estimated = None
    recipe = stage.loaded.recipe
    estimate = spec_for(stage.kind).estimate
    if estimate is not None and recipe.resources.gpus_per_node:
        est = estimate(recipe, str(stage.loaded.path), device_profile_constraint)
        if est.step_seconds:
            estimated = est.step_seconds * recipe.train.steps * recipe.resources.world_size / 3600
            estimated += sum(j.gpu_hours for j in stage.plan.jobs if j.name != "train")
    return limit, estimated


def print_plan(console: Console, pipeline: Pipeline, outcomes, profile, scripts: bool) -> None:
    table = Table(title=f"pipeline {pipeline.loaded.recipe.name} on profile {profile.name}")
    for col in ("stage/job", "tasks", "nodes x gpus", "min", "after", "GPU-h limit", "GPU-h est.", "CPU core-h"):
        table.add_column(col)
    total_limit = total_est = total_cores = 0.0
    constraint = str(profile.sbatch_defaults.get("constraint", ""))
    for stage, outcome in zip(pipeline.stages, outcomes):
        limit, est = gpu_hours(stage, constraint)
        cores = sum(j.cpu_core_hours for j in stage.plan.jobs)
        total_limit += limit
        total_est += est if est is not None else limit
        total_cores += cores
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
                f"{cores:,.0f}" if i == 0 else "",
            )
    console.print(table)
    console.print(f"GPU-hours: at most {total_limit:,.0f} (every job at its time limit); "
                  f"estimated {total_est:,.0f} (training jobs at the assumed MFU, other jobs at their limits); "
                  f"CPU core-hours: at most {total_cores:,.0f} (CPU-only jobs at their time limits)")
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
