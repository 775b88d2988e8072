"""Job modules: what runs inside an allocation, one module per job of a recipe kind.

Each module has `run(ctx: aistack.runtime.task.TaskContext) -> result` (JSON-serialisable).
Job modules import lib (aistack.*); lib never imports them.
"""
