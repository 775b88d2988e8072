"""One interface for running a plan, as submitit's Executor and datatrove's PipelineExecutor
have: `submit(plan, run, after=..., dry_run=..., progress=...)` -> SubmitResult.

The base class owns the loop every executor shares: jobs in dependency order, only the
tasks without a DONE marker, each job after the jobs it needs (or after `after`, the
jobs of earlier pipeline stages), and a failed job stopping its dependents. The local
and Slurm executors (local/, slurm/) implement one hook, `_submit_job`; the launcher picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from aistack.launch.plan import JobSpec, Plan
    from aistack.launch.profile import ClusterProfile
    from aistack.recipe import LoadedRecipe
    from aistack.rundir import RunDir

# Slurm's job states, grouped by what they mean for a run.
FINISHED_OK = frozenset({"COMPLETED"})
# INTERRUPTED is not Slurm's: a task run here, stopped with the aistack process that ran it
# (Ctrl-C, SIGTERM, SIGHUP, or found dead by `aistack status`). It ended, nothing requeues it;
# running the recipe again resumes it. Not one of the INTERRUPTED states below.
LOCAL_INTERRUPTED = "INTERRUPTED"
FINISHED_BAD = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                          LOCAL_INTERRUPTED})
FINISHED = FINISHED_OK | FINISHED_BAD
# Ended for now, back in the queue soon: Slurm requeues a preempted job (PreemptMode=REQUEUE).
INTERRUPTED = frozenset({"PREEMPTED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"})

Progress = Callable[[str, int, int], None]  # (job, finished tasks, total)


@dataclass
class Submitted:
    job: str
    job_id: str  # Slurm job id (of the array, for arrays); "local" on this machine
    task_ids: list[int]
    is_array: bool
    sbatch: str | None = None  # rendered script, for --dry-run


@dataclass
class SubmitResult:
    """What one `submit` of a plan did."""

    submitted: list[Submitted] = field(default_factory=list)
    live_ids: list[str] = field(default_factory=list)  # of earlier submissions, still queued or running
    waiting: dict[str, int] = field(default_factory=dict)  # job -> tasks left for a later wave (a submit limit)
    error: str | None = None  # why a job failed or did not run (known at once only on this machine)


class JobFailed(RuntimeError):
    """A job of a plan run on this machine failed (Slurm reports failures through status)."""


class SubmitRefused(RuntimeError):
    """The scheduler refused a submission (a QOS limit, an unknown partition, ...): the
    message names the job, what Slurm said and what to change. Jobs submitted before it
    stay queued; rerunning the recipe submits only what is missing."""


@dataclass
class TaskView:
    """What one job of a plan needs now: the tasks to submit, the ids of its tasks still
    queued or running (dependents wait on them), and the tasks that failed in this launch
    (a wave of an array run by a follow-up: not retried until the user reruns)."""

    pending: list[int]
    live_ids: list[str] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class Executor(ABC):
    def __init__(self, profile: ClusterProfile):
        self.profile = profile
        self.submitted: list[Submitted] = []  # every job this executor submitted, in order

    def submit(self, plan: Plan, run: RunDir, after: Sequence[str] = (), dry_run: bool = False,
               progress: Progress | None = None) -> SubmitResult:
        """Run or submit every job of `plan` with pending tasks; `after`: job ids (of earlier
        pipeline stages) that jobs with nothing of this plan to wait for wait on."""
        result = SubmitResult()
        ids_by_job: dict[str, list[str]] = {}
        failed: dict[str, str] = {}
        views = {job.name: self._task_view(run, job, dry_run) for job in plan.jobs}
        result.live_ids = sorted({i for view in views.values() for i in view.live_ids})
        for job in plan.ordered():
            view = views[job.name]
            blocked = [d for d in job.depends_on if d in failed]
            if blocked:
                failed[job.name] = f"not run: depends on failed job(s) {blocked}"
                continue
            if any(d in result.waiting for d in job.depends_on):
                if view.pending:  # submitted by the follow-up, after the waves it needs
                    result.waiting[job.name] = len(view.pending)
                continue
            if view.failed:
                failed[job.name] = f"{len(view.failed)} task(s) failed in this launch; rerun to retry them"
            ids_by_job[job.name] = list(view.live_ids)
            if not view.pending:
                continue
            needs = [jid for dep in job.depends_on for jid in ids_by_job.get(dep, [])] or list(after)
            try:
                items = self._submit_job(run, job, view.pending, needs, dry_run, progress)
            except JobFailed as err:
                failed[job.name] = str(err)
                continue
            result.submitted += items
            ids_by_job[job.name] += [item.job_id for item in items]
            if not dry_run:
                self.submitted += items
            left = len(view.pending) - sum(len(item.task_ids) for item in items)
            if left:
                result.waiting[job.name] = left
        if failed:
            result.error = "; ".join(f"job {name}: {why}" for name, why in failed.items())
        return result

    def _task_view(self, run: RunDir, job: JobSpec, dry_run: bool) -> TaskView:
        """The tasks of `job` to submit: here, every task without a DONE marker."""
        return TaskView(run.pending_tasks(job.name, job.num_tasks))

    def end_pass(self, loaded: LoadedRecipe, top: RunDir, waiting: dict[RunDir, dict[str, int]],
                 rehearse: bool = False) -> str | None:
        """After every stage of a launch was submitted: what to do about the tasks left
        `waiting` for a later wave (per run dir, job -> tasks). Here nothing is ever left;
        a Slurm executor under a submit limit submits the follow-up that submits them
        (the same launch again, a rehearsal's as a rehearsal)."""
        return None

    @abstractmethod
    def _submit_job(self, run: RunDir, job: JobSpec, pending: list[int], needs: list[str], dry_run: bool,
                    progress: Progress | None) -> list[Submitted]:
        """Run or submit the `pending` tasks of one job after the jobs `needs` (a Slurm
        executor under a submit limit may submit only the first of them: a wave)."""


def wandb_per_task(job: JobSpec) -> bool:
    # Big shard arrays log to metrics.jsonl only; their gather step reports to W&B. A
    # rehearsal's stand-in opens no W&B run (that would validate, on the node, a recipe
    # whose upstream outputs a rehearsal never writes).
    from aistack.launch.plan import REHEARSE_ENTRY  # here: `aistack status` imports this module, not the schema

    return job.num_tasks <= 16 and job.entry != REHEARSE_ENTRY
