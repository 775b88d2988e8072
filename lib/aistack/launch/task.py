"""Moved to aistack.runtime.task. Kept for one release: jobs queued before the move
unpickle `aistack.launch.task.TaskRunner` on their nodes."""

from aistack.runtime.task import TaskContext, TaskRunner  # noqa: F401
