"""Recipes: schema, loading, errors. The kind contract and its registry (kinds.py): kinds are looked up by name."""

from aistack.recipe.errors import RecipeError
from aistack.recipe.load import LoadedRecipe, load_recipe
from aistack.recipe.schema import Recipe, Resources

__all__ = ["RecipeError", "LoadedRecipe", "load_recipe", "Recipe", "Resources"]
