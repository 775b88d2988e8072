"""Recipe -> launch plan: the jobs a recipe makes, their arrays, resources and dependencies.

A plan is plain data. Executors (local, slurm) and `aistack plan` / `--dry-run` all read
the same plan, so what is printed is what gets submitted.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache

from aistack.recipe.kinds import JobSpec, spec_for
from aistack.recipe import LoadedRecipe, RecipeError
from aistack.recipe.schema import MAX_ARRAY_TASKS

__all__ = ["JobSpec", "Plan", "REHEARSE_ENTRY", "make_plan", "plan_summary"]

REHEARSE_ENTRY = "rehearse"  # the stand-in every job of a rehearsal runs (launch/rehearsal.py)


@dataclass
class Plan:
    recipe: LoadedRecipe
    jobs: list[JobSpec] = field(default_factory=list)

    def job(self, name: str) -> JobSpec:
        return next(j for j in self.jobs if j.name == name)

    def ordered(self) -> list[JobSpec]:
        """Jobs in dependency order (planners already list them so; checked here)."""
        seen: set[str] = set()
        for job in self.jobs:
            missing = [d for d in job.depends_on if d not in seen]
            if missing:
                raise ValueError(f"job {job.name} depends on {missing}, which come later or do not exist")
            seen.add(job.name)
        return list(self.jobs)


def make_plan(loaded: LoadedRecipe) -> Plan:
    spec = spec_for(loaded.kind)
    if spec.plan is None:
        raise ValueError(f"kind {loaded.kind} has no plan of its own (a pipeline is planned stage by stage)")
    plan = Plan(recipe=loaded, jobs=spec.plan(loaded))
    plan.ordered()
    for job in plan.jobs:
        _check_entry(job.entry)
        if job.num_tasks > MAX_ARRAY_TASKS:  # counts a planner derives (input files, buckets x workers, ...)
            raise RecipeError.single(str(loaded.path), f"(job {job.name})", job.num_tasks,
                                     f"at most {MAX_ARRAY_TASKS:,} array tasks per job: give each task more work")
    return plan


@lru_cache(maxsize=None)
def _check_entry(entry: str) -> None:
    """A job module that does not exist fails here, before submission, not on the node."""
    if importlib.util.find_spec(f"aistack.jobs.{entry}") is None:
        raise ValueError(f"job module aistack.jobs.{entry} does not exist")


def plan_summary(plan: Plan, profile_name: str) -> dict:
    """plan.json: what `status`, `logs` and the report read back."""
    return {
        "kind": plan.recipe.kind,
        "name": plan.recipe.recipe.name,
        "profile": profile_name,
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
