"""`kind: smoke`: a small real workload that exercises the launcher end to end.

A map job (one array task per shard) runs `steps` steps of real arithmetic per task,
checkpoints its state, logs metrics, and (with `all_reduce`) checks a gloo/NCCL
all_reduce across the ranks of a multi-task job; a reduce job, chained with afterok,
sums the shards' results. It is the first thing to run on a new cluster profile.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from aistack.recipe.kinds import JobSpec, KindSpec, single_node
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Recipe, StrictModel, TaskCount


class SmokeConfig(StrictModel):
    tasks: TaskCount = Field(default=4, description="array tasks (independent shards)")
    steps: int = Field(default=20, ge=1)
    step_seconds: float = Field(default=0.05, ge=0, description="sleep per step, to make preemption testable")
    checkpoint_every: int = Field(default=5, ge=1)
    all_reduce: bool = Field(default=False, description="all ranks of each task all_reduce their rank ids")
    # Failure injection, for testing dependencies and resume on a real cluster.
    fail_tasks: list[int] = Field(default_factory=list, description="task ids that raise at fail_at_step")
    fail_at_step: int = Field(default=0, ge=0)


class SmokeRecipe(Recipe):
    kind: Literal["smoke"] = "smoke"
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)

    NON_IDENTITY_KEYS: ClassVar[tuple[str, ...]] = ("smoke.fail_tasks", "smoke.fail_at_step", "smoke.step_seconds", "smoke.checkpoint_every")


def plan(loaded: LoadedRecipe) -> list[JobSpec]:
    """A map array over shards, then a reduce job chained with afterok."""
    recipe = loaded.recipe
    return [
        JobSpec("map", "smoke", recipe.smoke.tasks, recipe.resources),
        JobSpec("reduce", "smoke_reduce", 1, single_node(recipe.resources), depends_on=("map",)),
    ]


SPEC = KindSpec("smoke", SmokeRecipe, plan, outputs={"output": "jobs/reduce/tasks/00000/DONE"})
