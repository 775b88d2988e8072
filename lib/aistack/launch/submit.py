"""Running the stages of a pipeline (a plain recipe is a pipeline of one) on one executor.

Each stage is an ordinary run (its own run directory, plan.json, submissions, DONE
markers), so a stage whose tasks are all done submits nothing, and a rerun of the
pipeline resumes exactly what is missing. On Slurm every stage is submitted at once,
its first jobs waiting (afterok) on the jobs of the stages it needs, and a stage still
queued or running from an earlier submission is not submitted again: later stages wait
on its live job ids. Here, stages run in order and a failed stage skips its dependents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aistack.launch.executor import Executor, Progress, Submitted
from aistack.launch.plan import plan_summary
from aistack.launch.rehearsal import write_rehearsal_file
from aistack.launch.stages import Pipeline, Stage, moved_outputs, write_pipeline_files
from aistack.rundir import PLAN_FILE, atomic_write_json, claim_output, write_input_manifest


@dataclass
class StageOutcome:
    stage: str
    submitted: list[Submitted] = field(default_factory=list)
    waits_on: list[str] = field(default_factory=list)  # Slurm ids of earlier stages it depends on
    in_flight: list[str] = field(default_factory=list)  # live ids of an earlier submission, reused
    waiting: dict[str, int] = field(default_factory=dict)  # job -> tasks left for a later wave
    error: str | None = None  # why it failed or did not run (known at once only on this machine)


def submit_stages(pipeline: Pipeline, executor: Executor, dry_run: bool = False,
                  progress: Progress | None = None) -> list[StageOutcome]:
    if not dry_run and not pipeline.is_single:
        write_pipeline_files(pipeline)
    ids: dict[str, list[str]] = {}
    failed: set[str] = set()
    deferred: set[str] = set()  # stages with tasks left for a later wave (a submit limit)
    outcomes: list[StageOutcome] = []
    for stage in pipeline.stages:
        outcome = StageOutcome(stage.name, waits_on=[i for n in stage.needs for i in ids.get(n, [])])
        outcomes.append(outcome)
        blocked = [n for n in stage.needs if n in failed]
        if blocked:
            outcome.error = f"not run: needs failed stage(s) {', '.join(blocked)}"
            failed.add(stage.name)
            continue
        if not dry_run:
            prepare_stage(stage, executor.profile.name)
        if any(n in deferred for n in stage.needs):  # the follow-up submits it after the last wave
            for job in stage.plan.jobs:
                left = len(stage.run.pending_tasks(job.name, job.num_tasks))
                if left:
                    outcome.waiting[job.name] = left
            deferred.add(stage.name)
            continue
        result = executor.submit(stage.plan, stage.run, after=outcome.waits_on, dry_run=dry_run,
                                 progress=_labelled(progress, stage, pipeline.is_single))
        outcome.submitted, outcome.waiting, outcome.error = result.submitted, result.waiting, result.error
        if result.error:
            failed.add(stage.name)
        # A stage still queued or running from an earlier submission is not submitted
        # again: its live ids are what later stages wait on.
        outcome.in_flight = [] if outcome.submitted else list(result.live_ids)
        ids[stage.name] = [s.job_id for s in outcome.submitted] + list(result.live_ids)
        if outcome.waiting:
            deferred.add(stage.name)
    return outcomes


def prepare_stage(stage: Stage, profile_name: str) -> None:
    stage.run.path.mkdir(parents=True, exist_ok=True)
    stage.run.write_recipe(stage.loaded)
    atomic_write_json(stage.run.path / PLAN_FILE, plan_summary(stage.plan, profile_name))
    if stage.loaded.input_manifest is not None:
        write_input_manifest(stage.run, stage.loaded.input_manifest)
    if stage.rehearses is not None:  # a rehearsal writes no output: it claims no folder
        write_rehearsal_file(stage)
        return
    for folder in moved_outputs(stage):
        claim_output(Path(folder), stage.run)


def _labelled(progress: Progress | None, stage: Stage, single: bool) -> Progress | None:
    """Progress bars named `stage/job` in a pipeline, `job` for a plain recipe."""
    if progress is None or single:
        return progress
    return lambda job, done, total: progress(f"{stage.name}/{job}", done, total)
