"""evaluate: eval[checkpoints x tasks] (one Slurm array) -> gather (afterok).

Task i evaluates pair i of EvaluateConfig.pairs() (checkpoint-major); the gather job
merges every task's metrics into one table and plots each metric against training step.
"""

from __future__ import annotations

from aistack.launch.plan import JobSpec, planner
from aistack.recipe import LoadedRecipe


@planner("evaluate")
def plan_evaluate(loaded: LoadedRecipe) -> list[JobSpec]:
    recipe = loaded.recipe
    # One process per task: the model is loaded at TP=1 PP=1 whatever layout it was trained with.
    res = recipe.resources.model_copy(update={"nodes": 1, "tasks_per_node": 1})
    gather = recipe.resources.model_copy(update={"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0})
    return [
        JobSpec("eval", "eval_task", len(recipe.evaluate.pairs()), res),
        JobSpec("gather", "eval_gather", 1, gather, depends_on=("eval",)),
    ]
