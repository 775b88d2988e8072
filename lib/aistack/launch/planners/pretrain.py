"""pretrain: one job of nodes x tasks_per_node ranks (TP x PP x DP), checked before submitting."""

from __future__ import annotations

from aistack.launch.plan import JobSpec, planner
from aistack.recipe import LoadedRecipe, RecipeError


@planner("pretrain")
def plan_pretrain(loaded: LoadedRecipe) -> list[JobSpec]:
    from aistack.model.layout import layout_problems

    recipe = loaded.recipe
    problems = layout_problems(recipe, recipe.resources.world_size)
    if problems:
        raise RecipeError(str(loaded.path), problems)
    return [JobSpec("train", "pretrain", 1, recipe.resources)]
