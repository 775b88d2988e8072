"""Recipes: schema, loading, errors. The kind contract and its registry (kinds.py): kinds are looked up by name."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aistack.recipe.errors import RecipeError

if TYPE_CHECKING:
    from aistack.recipe.load import LoadedRecipe, load_recipe
    from aistack.recipe.schema import Recipe, Resources

__all__ = ["RecipeError", "LoadedRecipe", "load_recipe", "Recipe", "Resources"]

# Loaded at first use (PEP 562): commands that only read run directories (`aistack status`,
# every minute on a large run) catch RecipeError without importing pydantic and yaml.
_LAZY = {"LoadedRecipe": "aistack.recipe.load", "load_recipe": "aistack.recipe.load",
         "Recipe": "aistack.recipe.schema", "Resources": "aistack.recipe.schema"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
