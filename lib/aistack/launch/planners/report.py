"""report: one small job that reads every stage's run directory and writes the pipeline's report."""

from __future__ import annotations

from aistack.launch.plan import JobSpec, planner
from aistack.recipe import LoadedRecipe


@planner("report")
def plan_report(loaded: LoadedRecipe) -> list[JobSpec]:
    res = loaded.recipe.resources.model_copy(update={"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0})
    return [JobSpec("report", "pipeline_report", 1, res)]
