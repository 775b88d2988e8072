"""Recipe kinds: importing this package registers every kind's model."""

from aistack.recipe.kinds import smoke  # noqa: F401
from aistack.recipe.kinds import pretrain  # noqa: F401
from aistack.recipe.kinds import data  # noqa: F401
