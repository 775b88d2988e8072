"""The records of a run's plan (plan.json: its jobs) and of a pipeline's stages (stages.json),
read and written here. Apart from aistack.rundir, which every array task imports: these
are for the commands that plan and look (launch, status, report), not for the tasks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aistack.rundir import PLAN_FILE, STAGES_FILE, RunDir, atomic_write_json, elapsed_of, read_json, span


@dataclass(frozen=True)
class PlannedJob:
    """One job of a run's plan, as plan.json records it."""

    name: str
    tasks: int
    entry: str = ""
    depends_on: tuple[str, ...] = ()


def read_plan_kind(run: RunDir) -> str:
    """The kind of the recipe the run's plan.json was made from."""
    return _read_plan(run)["kind"]


def read_plan_jobs(run: RunDir, missing_ok: bool = False) -> list[PlannedJob]:
    """The jobs of the run's plan.json, in plan order ([] when absent and `missing_ok`)."""
    if missing_ok and not (run.path / PLAN_FILE).exists():
        return []
    return [PlannedJob(j["name"], int(j["tasks"]), j.get("entry", ""), tuple(j.get("depends_on", ())))
            for j in _read_plan(run)["jobs"]]


def _read_plan(run: RunDir) -> dict[str, Any]:
    plan = read_json(run.path / PLAN_FILE)
    if plan is None:
        raise FileNotFoundError(f"{run.path} has no {PLAN_FILE}: not a run directory aistack wrote")
    return plan


@dataclass(frozen=True)
class StageRecord:
    """One stage of a pipeline run, as stages.json records it."""

    name: str
    kind: str
    run: RunDir
    jobs: tuple[PlannedJob, ...]
    needs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "run": str(self.run.path), "needs": list(self.needs),
                "jobs": [{"name": j.name, "tasks": j.tasks, "depends_on": list(j.depends_on)} for j in self.jobs]}


def write_stage_records(pipeline_dir: RunDir, records: list[StageRecord]) -> None:
    atomic_write_json(pipeline_dir.path / STAGES_FILE, {"stages": [r.to_json() for r in records]})


def read_stage_records(pipeline_dir: RunDir) -> list[StageRecord]:
    """The stages of the pipeline's latest run, in order."""
    data = read_json(pipeline_dir.path / STAGES_FILE)
    if data is None:
        raise FileNotFoundError(f"{pipeline_dir.path} is not a pipeline run (no {STAGES_FILE})")
    return [StageRecord(r["name"], r["kind"], RunDir(Path(r["run"])),
                        tuple(PlannedJob(j["name"], int(j["tasks"]), "", tuple(j.get("depends_on", ()))) for j in r["jobs"]),
                        tuple(r["needs"]))
            for r in data["stages"]]


def elapsed(run: RunDir, jobs: list[PlannedJob] | tuple[PlannedJob, ...]) -> float | None:
    """From the first task's start to the last task's end (or its last update)."""
    return elapsed_of(span(state) for job in jobs for t, state in run.task_states(job.name).items() if t < job.tasks)
