"""What submitit runs on the node: one task of one job of a run.

TaskRunner is a submitit Checkpointable. Whatever ends a task early (the checkpoint
signal before the time limit, `scontrol requeue`, preemption, a crash followed by a
rerun of the recipe) it starts again with the same arguments; the job module resumes
from the last complete checkpoint in its task directory. A task whose DONE marker
exists is never run again.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit

from aistack.launch.rundir import RunDir
from aistack.recipe.load import validate
from aistack.track.metrics import MetricsFile
from aistack.track import wandb_run

log = logging.getLogger("aistack")


@dataclass
class TaskContext:
    """Everything a job module needs: where to write, who it is, how to log."""

    run: RunDir
    recipe: Any  # the validated Recipe of this run's kind
    kind: str
    job: str
    task_id: int
    num_tasks: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    attempt: int = 0
    metrics: MetricsFile | None = None
    wandb: wandb_run.WandbRun = field(default_factory=wandb_run.WandbRun)
    _on_preempt: list[Callable[[], None]] = field(default_factory=list)

    @property
    def task_dir(self) -> Path:
        return self.run.task_dir(self.job, self.task_id)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Metrics to metrics.jsonl and W&B (rank 0 only)."""
        if not self.is_main:
            return
        if self.metrics is not None:
            self.metrics.log(step, values)
        self.wandb.log(step, values)

    def resumed_at(self, step: int) -> None:
        """Tell the trackers the task restarted from a checkpoint at `step`."""
        if self.is_main and self.metrics is not None:
            self.metrics.truncate_after(step)

    def on_preempt(self, save: Callable[[], None]) -> None:
        """Register a quick save to run when Slurm signals the coming time limit."""
        self._on_preempt.append(save)


class TaskRunner(submitit.helpers.Checkpointable):
    def __init__(self, run_path: str, job: str, entry: str, task_id: int, num_tasks: int, wandb_per_task: bool):
        self.run_path = run_path
        self.job = job
        self.entry = entry
        self.task_id = task_id
        self.num_tasks = num_tasks
        self.wandb_per_task = wandb_per_task
        self._ctx: TaskContext | None = None

    def __call__(self) -> Any:
        run = RunDir(Path(self.run_path))
        if run.is_done(self.job, self.task_id):
            return run.task_result(self.job, self.task_id)["result"]
        ctx = self._make_context(run)
        self._ctx = ctx
        module = importlib.import_module(f"aistack.jobs.{self.entry}")
        if ctx.is_main:
            run.set_task_state(self.job, self.task_id, "RUNNING", attempt=ctx.attempt, started_at=time.time(), job_id=_job_id())

        try:
            result = module.run(ctx)
        except BaseException as err:
            if ctx.is_main:
                run.set_task_state(self.job, self.task_id, "FAILED", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-4000:])
                ctx.wandb.finish(exit_code=1)
            raise
        if ctx.is_main:
            ctx.wandb.summary({"finished": True})
            ctx.wandb.finish()
            run.mark_done(self.job, self.task_id, result)
            run.set_task_state(self.job, self.task_id, "COMPLETED", ended_at=time.time())
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on the checkpoint signal: quick-save, then requeue as is."""
        ctx = self._ctx
        if ctx is not None:
            for save in ctx._on_preempt:
                try:
                    save()
                except Exception:  # a failed quick-save still leaves the last periodic one
                    log.exception("quick save on preemption failed")
            if ctx.is_main:
                ctx.run.set_task_state(self.job, self.task_id, "REQUEUED")
                ctx.wandb.suspend()  # W&B buffers: flush before submitit exits for the requeue
        fresh = TaskRunner(self.run_path, self.job, self.entry, self.task_id, self.num_tasks, self.wandb_per_task)
        return submitit.helpers.DelayedSubmission(fresh, *args, **kwargs)

    def _make_context(self, run: RunDir) -> TaskContext:
        data = run.read_recipe_data()
        recipe = validate(data, {}, str(run.recipe_file))
        rank, world, local = _rank_info()
        state = run.task_state(self.job, self.task_id)
        attempt = int(state.get("attempt", -1)) + 1 if state else 0
        ctx = TaskContext(
            run=run, recipe=recipe, kind=recipe.kind, job=self.job, task_id=self.task_id,
            num_tasks=self.num_tasks, rank=rank, world_size=world, local_rank=local, attempt=attempt,
        )
        if ctx.is_main:
            ctx.metrics = MetricsFile(ctx.task_dir / "metrics.jsonl")
            if self.wandb_per_task:
                ctx.wandb = wandb_run.start(
                    recipe.tracking, run.path, run.name, recipe.kind, self.job, self.task_id, data
                )
        return ctx


def _rank_info() -> tuple[int, int, int]:
    try:
        env = submitit.JobEnvironment()
        return env.global_rank, env.num_tasks, env.local_rank
    except RuntimeError:  # called outside submitit (tests, debugging)
        return 0, 1, 0


def _job_id() -> str:
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:
        return str(os.getpid())
