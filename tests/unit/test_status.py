"""Where a run stands, read from its run directory (no scheduler needed for local runs)."""

from __future__ import annotations

import time
from pathlib import Path

from aistack.plan_records import PlannedJob, StageRecord
from aistack.rundir import RunDir
from aistack.launch.status import run_status
from aistack.launch.status import finished, stage_states


def _local_run(path) -> RunDir:
    run = RunDir(path)
    run.record_submission({"job": "map", "executor": "local", "job_id": "101", "task_ids": [0], "array": False, "time": 0})
    run.record_submission({"job": "map", "executor": "local", "job_id": "102", "task_ids": [1], "array": False, "time": 0})
    run.mark_done("map", 0, {"ok": True})
    run.set_task_state("map", 1, "FAILED", error="boom")
    return run


def test_task_states_come_from_markers_and_submissions(tmp_path):
    rows = run_status(_local_run(tmp_path / "r"), [PlannedJob("map", 3), PlannedJob("reduce", 1)])
    assert [(r.job, r.task_id, r.executor, r.job_id, r.state) for r in rows] == [
        ("map", 0, "local", "101", "COMPLETED"),
        ("map", 1, "local", "102", "FAILED"),
        ("map", 2, "-", "", "NOT_SUBMITTED"),
        ("reduce", 0, "-", "", "NOT_SUBMITTED"),
    ]


def test_a_stage_shows_its_failure_and_a_done_stage_completes(tmp_path):
    failing = _local_run(tmp_path / "a")
    done = RunDir(tmp_path / "b")
    done.mark_done("train", 0, {})
    records = [StageRecord("a", "smoke", failing, (PlannedJob("map", 2),), ()), StageRecord("b", "pretrain", done, (PlannedJob("train", 1),), ("a",)),
               StageRecord("c", "sft", RunDir(tmp_path / "never"), (PlannedJob("train", 1),), ("b",))]
    states = {s.name: s for s in stage_states(records)}
    assert (states["a"].state, states["a"].done, states["a"].total) == ("FAILED", 1, 2)
    assert (states["b"].state, states["b"].done) == ("COMPLETED", 1)
    assert states["c"].state == "NOT_SUBMITTED"
    assert finished(list(states.values()))


def test_a_preempted_task_is_on_its_way_back_not_failed():
    from aistack.launch.executor import FINISHED, INTERRUPTED

    assert "PREEMPTED" in INTERRUPTED and not INTERRUPTED & FINISHED  # `--wait` keeps following it


def test_a_failed_stage_is_followed_until_its_other_tasks_end(tmp_path):
    from aistack.launch.status import StageState

    def stage(state: str, active: bool) -> StageState:
        return StageState("a", "filter", RunDir(tmp_path / "a"), state, 1, 8, None, "-", [], active=active)

    assert not finished([stage("FAILED", active=True)]), "seven array tasks still running: `--wait` goes on"
    assert finished([stage("FAILED", active=False)])
    assert finished([stage("COMPLETED", active=False), stage("NOT_SUBMITTED", active=False)])


def test_the_wait_loop_asks_less_often_while_nothing_changes_and_stops_when_done():
    from aistack.launch.launcher import poll

    reads: list[float] = []
    states = iter([["PENDING"]] * 6 + [["RUNNING"], ["COMPLETED"]])

    def read():
        reads.append(time.monotonic())
        return next(states)

    seen: list[list[str]] = []
    out = poll(read, lambda s: s == ["COMPLETED"], seen.append, timeout_s=60, poll_s=0.05)
    assert out == ["COMPLETED"] and len(seen) == 8
    gaps = [b - a for a, b in zip(reads, reads[1:])]
    assert gaps[4] > gaps[0] * 2, f"backs off while PENDING stays PENDING: {gaps}"
    assert max(gaps) < 0.05 * 4 + 0.05, "never more than 4x the poll interval"
    assert gaps[6] < gaps[5], "a change resets the interval"


def test_a_pipeline_asks_slurm_once_per_poll_and_never_about_finished_jobs(tmp_path, monkeypatch):
    """`--wait` on a pipeline: one sacct for every stage, with only the jobs that still have
    a task without DONE (a finished 1000-task array is not asked about again)."""
    from aistack.launch import status

    asked: list[list[str]] = []

    def sacct(ids):
        asked.append(list(ids))
        return {"12_0": "RUNNING", "12_1": "PENDING", "30": "PENDING"}

    monkeypatch.setattr(status, "slurm_states", sacct)
    records = []
    for name, submissions in (("data", [("11", [0, 1, 2]), ("12", [3, 4])]), ("train", [("30", [0])])):
        run = RunDir(tmp_path / name)
        for job_id, tasks in submissions:
            run.record_submission({"job": "map", "executor": "slurm", "job_id": job_id, "task_ids": tasks, "array": True, "time": 0})
        records.append(StageRecord(name, "smoke", run, (PlannedJob("map", 5 if name == "data" else 1),), ()))
    for task in (0, 1, 2):  # array 11 has finished
        records[0].run.mark_done("map", task, {})
    states = {s.name: s for s in stage_states(records)}
    assert asked == [["12", "30"]], "one question, without the finished array 11"
    assert (states["data"].done, states["data"].state) == (3, "RUNNING") and states["train"].state == "PENDING"


def test_a_large_array_is_a_few_rows_folded_where_tasks_differ():
    from aistack.launch.status import TaskStatus, task_ranges

    rows = [TaskStatus("map", t, "slurm", f"500_{t}", "COMPLETED", 0) for t in range(1001)]
    rows += [TaskStatus("map", 1001 + i, "slurm", f"501_{i}", "COMPLETED", 0) for i in range(3000 - 1001)]
    rows[1500] = TaskStatus("map", 1500, "slurm", "501_499", "FAILED", 1)
    rows += [TaskStatus("map", t, "-", "", "WAITING", 0) for t in range(3000, 4000)]
    rows += [TaskStatus("reduce", 0, "local", "4242", "PENDING", 0), TaskStatus("reduce", 1, "local", "4243", "PENDING", 0)]
    assert [(r.job, r.tasks, r.job_id, r.state, r.attempt) for r in task_ranges(rows)] == [
        ("map", "0-1000", "500_[0-1000]", "COMPLETED", 0),
        ("map", "1001-1499", "501_[0-498]", "COMPLETED", 0),
        ("map", "1500", "501_499", "FAILED", 1),
        ("map", "1501-2999", "501_[500-1998]", "COMPLETED", 0),
        ("map", "3000-3999", "", "WAITING", 0),
        ("reduce", "0", "4242", "PENDING", 0),  # processes of their own: a row each
        ("reduce", "1", "4243", "PENDING", 0),
    ]


def test_status_reads_each_task_s_files_once_per_look(tmp_path, monkeypatch):
    """A 10,000-task run on a shared file system: status reads each task's state.json once
    (not again for the stage's time) and no task's result (DONE: only whether it exists, when)."""
    import aistack.rundir as rundir

    run = RunDir(tmp_path / "r")
    run.record_submission({"job": "map", "executor": "local", "job_id": "7", "task_ids": list(range(50)), "array": False,
                           "time": 0})
    for t in range(50):
        run.set_task_state("map", t, "RUNNING", started_at=100.0 + t)
        run.mark_done("map", t, {})
    opened: list[str] = []
    real_read = rundir.read_json
    monkeypatch.setattr(rundir, "read_json", lambda path, default=None: opened.append(str(path)) or real_read(path, default))
    (stage,) = stage_states([StageRecord("s", "smoke", run, (PlannedJob("map", 50),), ())])
    assert (stage.state, stage.done) == ("COMPLETED", 50) and stage.elapsed_s is not None
    per_task = [p for p in opened if "/tasks/" in p]
    assert len(per_task) == 50 and {Path(p).name for p in set(per_task)} == {"state.json"} and len(set(per_task)) == 50


def test_a_task_with_done_is_completed_while_accounting_lags(tmp_path, monkeypatch):
    """slurmdbd lags minutes behind a busy controller (the 128-node rehearsal: 700 finished
    tasks shown as 47 for 90 s): a task's DONE says it is complete, whatever sacct says yet."""
    from aistack.launch import status

    monkeypatch.setattr(status, "slurm_states", lambda ids: {"7_0": "RUNNING", "7_1": "PENDING", "7_2": "RUNNING"})
    run = RunDir(tmp_path / "r")
    run.record_submission({"job": "map", "executor": "slurm", "job_id": "7", "task_ids": [0, 1, 2], "array": True, "time": 0})
    run.mark_done("map", 0, {})
    run.mark_done("map", 1, {})
    assert [r.state for r in run_status(run, [PlannedJob("map", 3)])] == ["COMPLETED", "COMPLETED", "RUNNING"]


def test_aistack_status_reads_a_run_without_the_recipe_schema_or_submitit(tmp_path):
    # `aistack status` of a large run is asked every minute: pydantic, the kinds' schemas, yaml
    # and submitit (0.3 s) are for planning and submitting, not for reading run directories.
    import subprocess
    import sys

    from aistack.launch.plan import make_plan, plan_summary
    from aistack.recipe import load_recipe
    from aistack.rundir import PLAN_FILE, atomic_write_json

    smoke = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "smoke.yaml"
    loaded = load_recipe(smoke, [f"output.root={tmp_path}", "smoke.tasks=3", "tracking.mode=disabled"])
    run = RunDir.for_recipe(loaded)
    run.path.mkdir(parents=True)
    run.write_recipe(loaded)
    atomic_write_json(run.path / PLAN_FILE, plan_summary(make_plan(loaded), "test"))
    run.record_submission({"job": "map", "executor": "local", "job_id": "1", "task_ids": [0, 1, 2], "array": False, "time": 0})
    run.mark_done("map", 0, {})
    code = ("import sys\n"
            "from aistack.cli import main\n"
            "code = main(['status', sys.argv[1]])\n"
            "print(sorted(m for m in ('pydantic', 'yaml', 'submitit', 'aistack.recipe.schema') if m in sys.modules))\n"
            "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "map" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
