"""Recipes: schema, loading, errors. The kinds (aistack.kinds) are reached only to validate."""

from aistack.recipe.errors import RecipeError
from aistack.recipe.load import LoadedRecipe, load_recipe
from aistack.recipe.schema import Recipe, Resources

__all__ = ["RecipeError", "LoadedRecipe", "load_recipe", "Recipe", "Resources"]
