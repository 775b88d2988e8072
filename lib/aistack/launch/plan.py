"""Recipe -> launch plan: the jobs a recipe makes, their arrays, resources and dependencies.

A plan is plain data. Executors (local, slurm) and `aistack plan` / `--dry-run` all read
the same plan, so what is printed is what gets submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from aistack.recipe import LoadedRecipe, Resources


@dataclass(frozen=True)
class JobSpec:
    name: str  # unique within the run, e.g. "map", "reduce", "train"
    entry: str  # module in aistack.jobs whose `run(ctx)` does one task
    num_tasks: int  # array size; 1 = a single (possibly multi-node) job
    resources: Resources
    depends_on: tuple[str, ...] = ()  # names of jobs in the same plan (afterok)

    @property
    def is_array(self) -> bool:
        return self.num_tasks > 1


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


Planner = Callable[[LoadedRecipe], list[JobSpec]]
PLANNERS: dict[str, Planner] = {}


def planner(kind: str):
    def add(fn: Planner) -> Planner:
        PLANNERS[kind] = fn
        return fn

    return add


def make_plan(loaded: LoadedRecipe) -> Plan:
    import aistack.launch.planners  # noqa: F401  (registers one planner per kind)

    plan = Plan(recipe=loaded, jobs=PLANNERS[loaded.kind](loaded))
    plan.ordered()
    return plan
