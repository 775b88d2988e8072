"""One planner per recipe kind: recipe -> the jobs it makes. Importing registers them all."""

from aistack.launch.planners import smoke  # noqa: F401
from aistack.launch.planners import data  # noqa: F401
from aistack.launch.planners import pretrain  # noqa: F401
from aistack.launch.planners import sft  # noqa: F401
from aistack.launch.planners import distill  # noqa: F401
from aistack.launch.planners import evaluate  # noqa: F401
from aistack.launch.planners import bench  # noqa: F401
from aistack.launch.planners import report  # noqa: F401
