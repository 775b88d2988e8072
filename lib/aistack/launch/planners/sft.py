"""sft: one training job (TP x PP x DP over its ranks), as pretraining; the layout is checked before submitting."""

from __future__ import annotations

from aistack.launch.plan import JobSpec, planner
from aistack.recipe import LoadedRecipe, RecipeError


def check_layout(loaded: LoadedRecipe) -> None:
    from aistack.model.layout import layout_problems

    problems = layout_problems(loaded.recipe, loaded.recipe.resources.world_size)
    if problems:
        raise RecipeError(str(loaded.path), problems)


@planner("sft")
def plan_sft(loaded: LoadedRecipe) -> list[JobSpec]:
    check_layout(loaded)
    return [JobSpec("train", "sft", 1, loaded.recipe.resources)]
