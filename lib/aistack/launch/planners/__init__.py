"""One planner per recipe kind: recipe -> the jobs it makes. Importing registers them all."""

from aistack.launch.planners import smoke  # noqa: F401
from aistack.launch.planners import data  # noqa: F401
from aistack.launch.planners import pretrain  # noqa: F401
