"""The one launch path: recipe -> stages (a plain recipe is a pipeline of one) -> plans ->
the profile's executor -> jobs. The CLI, the tests and the benchmarks all come through here.

    loaded = load_recipe(path, overrides)          # once
    result = start(loaded, load_profile("slurm"))  # resolve, plan, write run dirs, submit
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aistack.launch.container_check import check_stage
from aistack.launch.executor import FINISHED, Executor, JobFailed, Progress, Submitted
from aistack.launch.plan import Plan
from aistack.launch.profile import ClusterProfile, default_target, load_profile
from aistack.launch.rehearsal import rehearsal_of
from aistack.launch.slurm import waves
from aistack.launch.stages import Pipeline, check_outputs, resolve
from aistack.launch.status import StageState, TaskStatus, finished, run_status, stage_states
from aistack.launch.submit import StageOutcome, submit_stages
from aistack.recipe import LoadedRecipe, load_recipe
from aistack.plan_records import PlannedJob, read_stage_records
from aistack.rundir import RunDir, RunLock


@dataclass
class Launch:
    pipeline: Pipeline
    profile: ClusterProfile
    outcomes: list[StageOutcome]
    followup: str | None = None  # Slurm id of the job that submits the next wave (a submit limit)

    # A plain recipe's one stage, as most callers want it.
    @property
    def loaded(self) -> LoadedRecipe:
        return self.pipeline.stages[0].loaded

    @property
    def plan(self) -> Plan:
        return self.pipeline.stages[0].plan

    @property
    def run(self) -> RunDir:
        return self.pipeline.stages[0].run

    @property
    def submitted(self) -> list[Submitted]:
        return [item for outcome in self.outcomes for item in outcome.submitted]

    def status(self) -> list[TaskStatus]:
        return run_status(self.run, [PlannedJob(j.name, j.num_tasks) for j in self.plan.jobs])


def executor_for(profile: ClusterProfile, dry_run: bool = False, launch_id: str | None = None) -> Executor:
    """The one place an executor is chosen. A dry run shows the sbatch scripts a Slurm
    profile would submit; on the local profile it shows them for the default partition."""
    # Imported here, not above: `plan` and `status` need neither executor (nor submitit).
    if profile.executor == "local" and not dry_run:
        from aistack.launch.local.executor import LocalExecutor

        return LocalExecutor(profile)
    from aistack.launch.slurm.executor import SlurmExecutor

    return SlurmExecutor(profile, launch_id, dry_run)


def start(loaded: LoadedRecipe, profile: ClusterProfile, dry_run: bool = False,
          progress: Progress | None = None, announce: Callable[[Pipeline, ClusterProfile], None] | None = None,
          launch_id: str | None = None, rehearse: bool = False) -> Launch:
    """Resolve and plan every stage (all bad input fails here, before anything is
    written), then hand the stages to the profile's executor. Under a submit limit, what
    did not fit is left to a follow-up job (waves.py); `launch_id`: the launch that
    follow-up continues. `rehearse`: the same jobs, each task a stand-in (rehearsal.py)."""
    executor = executor_for(profile, dry_run, launch_id)  # first: a Slurm one asks its limits meanwhile
    pipeline = resolve(loaded, allow_missing=dry_run)
    if rehearse:
        pipeline = rehearsal_of(pipeline)
    for stage in pipeline.stages:
        check_stage(stage, profile)
        check_outputs(stage.rehearses or stage)
    if announce:
        announce(pipeline, profile)
    if dry_run:
        return Launch(pipeline, profile, submit_stages(pipeline, executor, dry_run=True, progress=progress))
    # One launch at a time in this run directory (a pipeline's holds its stages' run
    # directories: a stage not started yet has none); a follow-up (launch_id) waits its turn.
    with RunLock([pipeline.top.path], wait_s=600 if launch_id else 0):
        outcomes = submit_stages(pipeline, executor, progress=progress)
        waiting = {stage.run: outcome.waiting for stage, outcome in zip(pipeline.stages, outcomes)}
        followup = executor.end_pass(loaded, pipeline.top, waiting, rehearse)
    return Launch(pipeline, profile, outcomes, followup)


def launch(recipe_path: str | Path, overrides=(), on: str | None = None, dry_run: bool = False,
           progress: Progress | None = None) -> Launch:
    """Load, start; a plain recipe run here raises JobFailed when a job failed."""
    result = start(load_recipe(recipe_path, overrides), load_profile(on or default_target()), dry_run, progress)
    if result.pipeline.is_single and result.outcomes[0].error:
        raise JobFailed(result.outcomes[0].error)
    return result


def prepare(recipe_path: str | Path, overrides=(), on: str | None = None) -> tuple[LoadedRecipe, Plan, RunDir, ClusterProfile]:
    """A plain recipe checked and planned, nothing written: (loaded, plan, run dir, profile)."""
    loaded = load_recipe(recipe_path, overrides)
    profile = load_profile(on or default_target())
    stage = resolve(loaded).stages[0]
    return loaded, stage.plan, stage.run, profile


def wait(launch_: Launch, timeout_s: float = 3600, poll_s: float = 2.0, on_poll=None) -> list[TaskStatus]:
    """Poll Slurm until every task of a plain recipe has finished (or the timeout)."""
    return poll(launch_.status, lambda rows: all(r.state in FINISHED for r in rows), on_poll, timeout_s, poll_s)


def wait_pipeline(pipeline_dir: RunDir, timeout_s: float = 6 * 3600, poll_s: float = 5.0, on_poll=None) -> list[StageState]:
    """Poll until nothing more happens in a pipeline without a new submission (or the timeout)."""
    return poll(lambda: stage_states(read_stage_records(pipeline_dir)), finished, on_poll, timeout_s, poll_s)


def poll(read: Callable[[], list], done: Callable[[list], bool], on_poll, timeout_s: float, poll_s: float) -> list:
    """The one loop behind `--wait`: read the states, hand them to `on_poll`, stop when `done`.
    While nothing changes it asks less often (up to 4x `poll_s`): every read is a query to
    the scheduler's accounting."""
    deadline = time.time() + timeout_s
    interval, last = poll_s, None
    while True:
        try:
            states = read()
        except RuntimeError:  # accounting briefly unavailable: ask again
            if time.time() > deadline:
                raise
            time.sleep(poll_s)
            continue
        if on_poll:
            on_poll(states)
        if done(states) or time.time() > deadline:
            return states
        interval = poll_s if states != last else min(interval * 1.5, 4 * poll_s)
        last = states
        time.sleep(interval)


def continue_launch(continuation: str) -> int:
    """What a follow-up job runs (waves.py): the same launch again, submitting the next wave."""
    path = Path(continuation)
    successor = waves.superseded_by(path)
    if successor:
        print(f"superseded by follow-up Slurm job {successor}: nothing to do", flush=True)
        return 0
    state = waves.read_continuation(path)
    result = start(state["loaded"], state["profile"], launch_id=state["launch"], rehearse=state.get("rehearse", False))
    for outcome in result.outcomes:
        for item in outcome.submitted:
            print(f"submitted {outcome.stage}/{item.job}: Slurm {item.job_id} ({len(item.task_ids)} tasks)", flush=True)
        if outcome.error:
            print(f"{outcome.stage}: {outcome.error}", flush=True)
    if result.followup:
        print(f"tasks left for a later wave: follow-up Slurm job {result.followup}", flush=True)
    else:
        print("nothing left to submit", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(continue_launch(sys.argv[1]))
