"""One entry point for running a recipe: plan it, make its run directory, hand it to an executor."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aistack.launch.local import LocalExecutor
from aistack.launch.plan import Plan, make_plan
from aistack.launch.profile import ClusterProfile, load_profile
from aistack.launch.rundir import RunDir, atomic_write_json
from aistack.launch.slurm import SlurmExecutor, Submitted
from aistack.launch.status import TaskStatus, run_status
from aistack.recipe import LoadedRecipe, load_recipe

FINISHED_OK = {"COMPLETED"}
FINISHED_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def default_target() -> str:
    """--on default: $AISTACK_ON, else Slurm when its client is installed, else this machine."""
    return os.environ.get("AISTACK_ON") or ("slurm" if shutil.which("sbatch") else "local")


@dataclass
class Launch:
    loaded: LoadedRecipe
    plan: Plan
    run: RunDir
    profile: ClusterProfile
    submitted: list[Submitted]

    def status(self) -> list[TaskStatus]:
        return run_status(self.run, [(j.name, j.num_tasks) for j in self.plan.jobs])


def prepare(recipe_path: str | Path, overrides=(), on: str | None = None) -> tuple[LoadedRecipe, Plan, RunDir, ClusterProfile]:
    """Everything that can fail on bad input, before anything is written or submitted."""
    loaded = load_recipe(recipe_path, overrides)
    profile = load_profile(on or default_target())
    plan = make_plan(loaded)
    return loaded, plan, RunDir.for_recipe(loaded), profile


def launch(recipe_path, overrides=(), on: str | None = None, dry_run: bool = False, progress=None) -> Launch:
    loaded, plan, run, profile = prepare(recipe_path, overrides, on)
    if dry_run:
        executor = SlurmExecutor(profile)
        return Launch(loaded, plan, run, profile, executor.submit(plan, run, dry_run=True))
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_recipe(loaded)
    atomic_write_json(run.path / "plan.json", plan_summary(plan, profile))
    if profile.executor == "local":
        submitted = LocalExecutor(profile).run(plan, run, progress=progress)
    else:
        submitted = SlurmExecutor(profile).submit(plan, run)
    return Launch(loaded, plan, run, profile, submitted)


def plan_summary(plan: Plan, profile: ClusterProfile) -> dict:
    return {
        "kind": plan.recipe.kind,
        "name": plan.recipe.recipe.name,
        "profile": profile.name,
        "jobs": [
            {
                "name": j.name,
                "entry": j.entry,
                "tasks": j.num_tasks,
                "depends_on": list(j.depends_on),
                "resources": j.resources.model_dump(mode="json"),
            }
            for j in plan.jobs
        ],
    }


def wait(launch_: Launch, timeout_s: float = 3600, poll_s: float = 2.0, on_poll=None) -> list[TaskStatus]:
    """Poll Slurm until every task has finished (or the timeout); returns the last status."""
    deadline = time.time() + timeout_s
    while True:
        try:
            rows = launch_.status()
        except RuntimeError:  # accounting briefly unavailable: ask again
            if time.time() > deadline:
                raise
            time.sleep(poll_s)
            continue
        if on_poll:
            on_poll(rows)
        if all(r.state in FINISHED_OK | FINISHED_BAD for r in rows) or time.time() > deadline:
            return rows
        time.sleep(poll_s)


def submitted_dicts(items: list[Submitted]) -> list[dict]:
    return [{k: v for k, v in asdict(i).items() if k != "sbatch"} for i in items]
