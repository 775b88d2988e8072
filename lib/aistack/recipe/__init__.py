"""Recipes: schema, loading, errors. Imports nothing else of aistack."""

from aistack.recipe.errors import RecipeError
from aistack.recipe.load import LoadedRecipe, load_recipe
from aistack.recipe.schema import RECIPE_KINDS, Recipe, Resources

__all__ = ["RecipeError", "LoadedRecipe", "load_recipe", "RECIPE_KINDS", "Recipe", "Resources"]
