"""smoke: a map array over shards, then a reduce job chained with afterok."""

from __future__ import annotations

from aistack.launch.plan import JobSpec, planner
from aistack.recipe import LoadedRecipe


@planner("smoke")
def plan_smoke(loaded: LoadedRecipe) -> list[JobSpec]:
    recipe = loaded.recipe
    res = recipe.resources
    reduce_res = res.model_copy(update={"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0})
    return [
        JobSpec("map", "smoke", recipe.smoke.tasks, res),
        JobSpec("reduce", "smoke_reduce", 1, reduce_res, depends_on=("map",)),
    ]
