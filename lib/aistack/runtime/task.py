"""What runs on the node: one task of one job of a run.

TaskRunner is a submitit Checkpointable (duck-typed: submitit's local executor calls its
`checkpoint`; on Slurm, aistack.runtime.node calls `save_for_requeue`), and this module
does not import submitit, which costs a small task more CPU than its work. Whatever ends a task early (the checkpoint
signal before the time limit, `scontrol requeue`, preemption, a crash followed by a
rerun of the recipe) it starts again with the same arguments; the job module resumes
from the last complete checkpoint in its task directory. A task whose DONE marker
exists is never run again.

An array task's own bookkeeping is kept small, since a 1000-task array pays it 1000
times: the validated recipe comes in the pickle (recipe.yaml is neither read nor
validated again, and pydantic is imported only if the job reads `ctx.recipe`), state.json
is written once (RUNNING, not fsync'd) and DONE, atomic and durable, records the end.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from aistack import lean_imports
from aistack.rundir import RunDir
from aistack.track import wandb_run
from aistack.track.metrics import MetricsFile

log = logging.getLogger("aistack")

TYPE_CHECKING = False  # typing is an import a small task can do without
if TYPE_CHECKING:
    from typing import Any, Callable


class TaskContext:
    """Everything a job module needs: where to write, who it is, how to log.

    `recipe` is the validated Recipe of this run's kind; `load_recipe` instead defers it to
    the first use of `ctx.recipe`. `data` is the same recipe as plain values (what
    recipe.yaml holds): a job that reads only `ctx.data` never imports the schema.
    """

    def __init__(
        self, run: RunDir, recipe: Any, kind: str, job: str, task_id: int, num_tasks: int,
        rank: int = 0, world_size: int = 1, local_rank: int = 0, attempt: int = 0,
        metrics: MetricsFile | None = None, wandb: wandb_run.WandbRun | None = None,
        data: dict[str, Any] | None = None, load_recipe: Callable[[], Any] | None = None,
    ):
        self.run = run
        self._recipe = recipe
        self._load_recipe = load_recipe
        self._data = data
        self.kind = kind
        self.job = job
        self.task_id = task_id
        self.num_tasks = num_tasks
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.attempt = attempt
        self.metrics = metrics
        self.wandb = wandb if wandb is not None else wandb_run.WandbRun()
        self._on_preempt: list[Callable[[], None]] = []

    @property
    def recipe(self) -> Any:
        if self._recipe is None and self._load_recipe is not None:
            self._recipe = self._load_recipe()
        return self._recipe

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self.recipe.model_dump(mode="json")
        return self._data

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
        """Tell the trackers the task restarted from a checkpoint at `step` (-1 or 0: from
        scratch): metrics.jsonl drops what an earlier attempt logged after it. W&B, whose
        history cannot be cut, gets each step once: the redone steps it already holds are
        not sent again, and the steps up to `step` that it lost (a hard kill drops what
        its service had buffered) are sent from metrics.jsonl."""
        if not self.is_main or self.metrics is None:
            return
        kept = self.metrics.truncate_after(step)
        held = self.wandb.resume_after(step)
        for record in kept:
            if record["step"] > held:
                self.wandb.log(record["step"], {k: v for k, v in record.items() if k not in ("step", "time")})

    def on_preempt(self, save: Callable[[], None]) -> None:
        """Register a quick save to run when Slurm signals the coming time limit."""
        self._on_preempt.append(save)


class TaskRunner:
    _ctx: TaskContext | None = None  # the live context, never pickled

    def __init__(self, run_path: str, job: str, entry: str, task_id: int, num_tasks: int, wandb_per_task: bool,
                 recipe: Any = None):
        """`recipe`: the run's validated Recipe (RunDir.recipe), carried in the pickle; None:
        the task reads and validates the run's recipe.yaml itself."""
        self.run_path = run_path
        self.job = job
        self.entry = entry
        self.task_id = task_id
        self.num_tasks = num_tasks
        self.wandb_per_task = wandb_per_task
        # Plain values for ctx.data, and the Recipe pickled apart: unpickling the runner on
        # the node then imports neither pydantic nor the kind's schema.
        self.recipe_data = recipe.model_dump(mode="json") if recipe is not None else None
        self.recipe_pickle = pickle.dumps(recipe) if recipe is not None else None

    def __getstate__(self) -> dict[str, Any]:
        # A requeued task (checkpoint below) builds its own context: open files and the
        # W&B run stay behind.
        return {k: v for k, v in self.__dict__.items() if k != "_ctx"}

    def __call__(self, sigterm_at: list[float] | None = None) -> Any:
        """`sigterm_at`: the SIGTERMs the caller's watcher has seen (node.py watches from its start)."""
        # Watch before the set-up: a preemption during it (W&B's start takes seconds) must not
        # end the task, or Slurm records the job as failed instead of requeueing it.
        terminated = watch_sigterm(sigterm_at)
        # The checkpoint signal (SIGUSR1) reaches the main thread only: every thread started
        # from here on (W&B's, torch's) inherits it blocked. A thread that did not block it
        # would take it, and Python would run the quick save in the main thread wherever it
        # is then: mid-step, a model one step ahead saved under the step before.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            lean_imports.install()  # seconds off each task that imports megatron or spaCy
            share_cpus()
            run = RunDir(Path(self.run_path))
            if run.is_done(self.job, self.task_id):
                return run.task_result(self.job, self.task_id)["result"]
            ctx = self._make_context(run)
            self._ctx = ctx
        finally:  # from here the job decides when it takes the signal (training: between steps)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        try:
            result = importlib.import_module(f"aistack.jobs.{self.entry}").run(ctx)
        except BaseException as err:
            if terminated:
                _await_slurm(run, self, ctx, err)  # preempted or cancelled: not this task's failure
            if ctx.is_main:
                run.set_task_state(self.job, self.task_id, "FAILED", error=f"{type(err).__name__}: {err}",
                                   traceback=traceback.format_exc()[-4000:], ended_at=time.time())
                ctx.wandb.finish(exit_code=1)
            raise
        if ctx.is_main:
            ctx.wandb.summary({"finished": True})
            ctx.wandb.finish()
            # No COMPLETED write to state.json: DONE is the record (RunDir.task_state reads it).
            run.mark_done(self.job, self.task_id, result)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit (local executor) on the checkpoint signal: quick-save, then requeue as is."""
        import submitit

        self.save_for_requeue()
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def save_for_requeue(self) -> None:
        """The checkpoint signal came: run the job's quick saves and say the task is requeued."""
        ctx = self._ctx
        if ctx is None:
            return
        errors = []
        for save in ctx._on_preempt:
            try:
                save()
            except Exception as err:  # a failed quick-save still leaves the last periodic one
                log.exception("quick save on preemption failed")
                errors.append(f"{type(err).__name__}: {err}")
        if ctx.is_main:
            # state.json says whether the requeued task resumes from this save or an older one
            # (`aistack status` shows a failed one).
            saved: dict[str, Any] = {}
            if errors:
                saved = {"quick_save_error": "; ".join(errors)[:2000], "quick_save_failed_at": time.time()}
            elif ctx._on_preempt:
                saved = {"quick_saved_at": time.time()}
            ctx.run.set_task_state(self.job, self.task_id, "REQUEUED", **saved)
            ctx.wandb.suspend()  # W&B buffers: flush before the process exits for the requeue

    def _make_context(self, run: RunDir) -> TaskContext:
        if self.recipe_pickle is not None:
            data = self.recipe_data
            blob = self.recipe_pickle

            def load() -> Any:
                return pickle.loads(blob)
        else:  # built without the recipe: read what planning wrote
            data = run.read_recipe_data()

            def load() -> Any:
                from aistack.recipe.load import validate

                return validate(data, {}, str(run.recipe_file))

        rank, world, local, job_id = task_env()
        state = run.task_state(self.job, self.task_id)
        attempt = int(state.get("attempt", -1)) + 1 if state else 0
        ctx = TaskContext(
            run=run, recipe=None, kind=data["kind"], job=self.job, task_id=self.task_id, num_tasks=self.num_tasks,
            rank=rank, world_size=world, local_rank=local, attempt=attempt, data=data, load_recipe=load,
        )
        if ctx.is_main:
            # The one state.json write of a task that succeeds.
            # python: what ran the task (inside a container, the image's interpreter; set_task_state adds the host)
            run.set_task_state(self.job, self.task_id, "RUNNING", attempt=attempt, started_at=time.time(), job_id=job_id,
                               python=sys.executable)
            ctx.metrics = MetricsFile(ctx.task_dir / "metrics.jsonl")
            # Tracking off: the plain values say so, without unpickling the Recipe (pydantic, 0.2 s).
            if self.wandb_per_task and (data.get("tracking") or {}).get("mode") != "disabled":
                ctx.wandb = wandb_run.start(ctx.recipe.tracking, run.path, run.name, ctx.kind, self.job, self.task_id, data)
        return ctx


# How long a task that failed after SIGTERM waits for Slurm's SIGKILL (GraceTime of a
# preemption, KillWait of a cancel) before it reports the failure as its own.
SIGTERM_WAIT_S = 600


def watch_sigterm(received: list[float] | None = None) -> list[float]:
    """Under Slurm, SIGTERM means preemption (PreemptMode=REQUEUE) or a cancel: the task
    goes on (submitit ignores it too) until Slurm's SIGKILL, and Slurm requeues a preempted
    job (a job that ends by itself within the grace time is not requeued). The signal also
    reaches the task's helper processes (W&B's service, checkpoint writers), so a failure
    after it is a consequence: the list (`received`, or a new one) records when it came."""
    received = [] if received is None else received
    if "SLURM_JOB_ID" in os.environ and threading.current_thread() is threading.main_thread():
        def note(signum: int, frame: Any) -> None:
            received.append(time.time())
            log.warning("SIGTERM: preempted or cancelled; going on until Slurm ends the job")

        signal.signal(signal.SIGTERM, note)
    return received


def _await_slurm(run: RunDir, runner: "TaskRunner", ctx: TaskContext, err: BaseException) -> None:
    """After SIGTERM, an error is not recorded as FAILED: wait for Slurm's verdict (a
    preempted job is killed and requeued, a cancelled one killed)."""
    if ctx.is_main:
        run.set_task_state(runner.job, runner.task_id, "PREEMPTED", error=f"after SIGTERM: {type(err).__name__}: {err}")
    log.warning("error after SIGTERM (%s: %s): waiting for Slurm to requeue or end the job", type(err).__name__, err)
    time.sleep(SIGTERM_WAIT_S)


def share_cpus(env: dict[str, str] = os.environ) -> None:  # noqa: B006  (the process's own environment)
    """OpenMP threads (torch's intra-op threads) for this process: its share of the CPUs, as
    torchrun sets OMP_NUM_THREADS=1 for several processes per node. Left alone, torch runs one
    thread per core of the host in every process, and processes sharing a host spin against
    each other: two tiny trainings at once on 2 cores took 95 s instead of 29 s. On Slurm the
    share is the task's --cpus-per-task (resources.cpus_per_task); the local executor sets it
    for its tasks (cores / processes at once). An OMP_NUM_THREADS the user set stays."""
    if "OMP_NUM_THREADS" not in env and env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        env["OMP_NUM_THREADS"] = env["SLURM_CPUS_PER_TASK"]
    if "torch" in sys.modules and env.get("OMP_NUM_THREADS", "").isdigit():  # imported already (unpickling)
        sys.modules["torch"].set_num_threads(max(1, int(env["OMP_NUM_THREADS"])))


def task_env() -> tuple[int, int, int, str]:
    """(global rank, world size, local rank, job id) of this process: Slurm's variables on
    Slurm (what submitit's JobEnvironment reads), submitit's local environment otherwise."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        env = os.environ
        array = env.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env["SLURM_JOB_ID"]
        return int(env.get("SLURM_PROCID", 0)), int(env.get("SLURM_NTASKS", 1)), int(env.get("SLURM_LOCALID", 0)), job_id
    import submitit

    try:
        job = submitit.JobEnvironment()
        return job.global_rank, job.num_tasks, job.local_rank, job.job_id
    except RuntimeError:  # called outside submitit (tests, debugging)
        return 0, 1, 0, str(os.getpid())
