"""Recipe kinds: importing this package registers every kind's model."""

from aistack.recipe.kinds import smoke  # noqa: F401
from aistack.recipe.kinds import pretrain  # noqa: F401
from aistack.recipe.kinds import data  # noqa: F401
from aistack.recipe.kinds import sft  # noqa: F401
from aistack.recipe.kinds import distill  # noqa: F401
from aistack.recipe.kinds import evaluate  # noqa: F401
from aistack.recipe.kinds import bench  # noqa: F401
from aistack.recipe.kinds import report  # noqa: F401
from aistack.recipe.kinds import pipeline  # noqa: F401
