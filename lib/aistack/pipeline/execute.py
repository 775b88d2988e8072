"""Running a pipeline: every stage submitted at once with afterok on Slurm, or in order here.

Each stage is an ordinary run (its own run directory, plan.json, submissions, DONE
markers), so a stage whose tasks are all done submits nothing, and a rerun of the
pipeline resumes exactly what is missing. On Slurm a stage still queued or running from
an earlier submission is not submitted again: later stages wait on its live job ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aistack.launch.launcher import FINISHED_BAD, FINISHED_OK, plan_summary
from aistack.launch.local import JobFailed, LocalExecutor, Progress
from aistack.launch.profile import ClusterProfile
from aistack.launch.rundir import RunDir, atomic_write_json
from aistack.launch.slurm import SlurmExecutor, Submitted
from aistack.launch.status import run_status
from aistack.pipeline.stages import Pipeline, Stage, write_pipeline_files


@dataclass
class StageOutcome:
    stage: str
    submitted: list[Submitted] = field(default_factory=list)
    waits_on: list[str] = field(default_factory=list)  # Slurm ids of earlier stages it depends on
    in_flight: list[str] = field(default_factory=list)  # live ids of an earlier submission, reused
    error: str | None = None  # local: why it failed or did not run


def prepare_stage(stage: Stage, profile: ClusterProfile) -> None:
    stage.run.path.mkdir(parents=True, exist_ok=True)
    stage.run.write_recipe(stage.loaded)
    atomic_write_json(stage.run.path / "plan.json", plan_summary(stage.plan, profile))


def run_local(pipeline: Pipeline, profile: ClusterProfile, progress: Progress | None = None) -> list[StageOutcome]:
    """Stages in order on this machine; a failed stage stops the stages that need it."""
    write_pipeline_files(pipeline)
    outcomes: list[StageOutcome] = []
    failed: set[str] = set()
    for stage in pipeline.stages:
        outcome = StageOutcome(stage.name)
        outcomes.append(outcome)
        blocked = [n for n in stage.needs if n in failed]
        if blocked:
            outcome.error = f"not run: needs failed stage(s) {', '.join(blocked)}"
            failed.add(stage.name)
            continue
        prepare_stage(stage, profile)
        stage_progress = (lambda job, done, total, _s=stage.name: progress(f"{_s}/{job}", done, total)) if progress else None
        try:
            outcome.submitted = LocalExecutor(profile).run(stage.plan, stage.run, progress=stage_progress)
        except JobFailed as err:
            outcome.error = str(err)
            failed.add(stage.name)
    return outcomes


def submit_slurm(pipeline: Pipeline, profile: ClusterProfile, dry_run: bool = False) -> list[StageOutcome]:
    """Every stage at once, each job waiting (afterok) on the jobs of the stages it needs."""
    executor = SlurmExecutor(profile)
    if not dry_run:
        write_pipeline_files(pipeline)
    ids: dict[str, list[str]] = {}
    outcomes: list[StageOutcome] = []
    for stage in pipeline.stages:
        outcome = StageOutcome(stage.name, waits_on=[i for n in stage.needs for i in ids.get(n, [])])
        outcomes.append(outcome)
        live = [] if dry_run else in_flight(stage)
        if live:
            outcome.in_flight = live
            ids[stage.name] = live
            continue
        if not dry_run:
            prepare_stage(stage, profile)
        outcome.submitted = executor.submit(stage.plan, stage.run, dry_run=dry_run, after=outcome.waits_on)
        ids[stage.name] = [s.job_id for s in outcome.submitted]
    return outcomes


def in_flight(stage: Stage) -> list[str]:
    """Slurm job ids of this stage still queued or running from an earlier submission."""
    if not stage.run.submissions_file.exists():
        return []
    jobs = [(j.name, j.num_tasks) for j in stage.plan.jobs]
    if not any(stage.run.pending_tasks(name, n) for name, n in jobs):
        return []
    rows = run_status(stage.run, jobs)
    live = {r.job_id.split("_")[0] for r in rows
            if r.executor == "slurm" and r.state not in FINISHED_OK | FINISHED_BAD | {"UNKNOWN", "NOT_SUBMITTED"}}
    return sorted(live)


def stage_runs(pipeline_dir: RunDir) -> list[tuple[str, str, RunDir, list[tuple[str, int]], list[str]]]:
    """(name, kind, run dir, [(job, tasks)], needs) of each stage of the pipeline's latest run."""
    from pathlib import Path

    from aistack.pipeline.stages import read_stage_records

    return [(r["name"], r["kind"], RunDir(Path(r["run"])), [(j["name"], j["tasks"]) for j in r["jobs"]], r["needs"])
            for r in read_stage_records(pipeline_dir)]
