"""Run directories: named by what the recipe computes; DONE markers decide what is left."""

from __future__ import annotations

from pathlib import Path

from aistack.rundir import RunDir
from aistack.recipe import load_recipe

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "smoke.yaml"


def _run(tmp_path, *overrides) -> RunDir:
    return RunDir.for_recipe(load_recipe(SMOKE, [f"output.root={tmp_path}", *overrides]))


def test_name_changes_with_the_work_not_with_placement(tmp_path):
    plain = _run(tmp_path)
    assert plain.path.parent == tmp_path and plain.name.startswith("smoke-")
    assert _run(tmp_path, "resources.nodes=4", "resources.time=600", "tracking.mode=disabled").path == plain.path
    assert _run(tmp_path, "smoke.fail_tasks=[1]").path == plain.path  # failure injection is not identity
    assert _run(tmp_path, "smoke.steps=21").path != plain.path


def test_pending_tasks_are_those_without_done(tmp_path):
    run = _run(tmp_path)
    assert run.pending_tasks("map", 4) == [0, 1, 2, 3]
    run.mark_done("map", 2, {"total": 5})
    assert run.pending_tasks("map", 4) == [0, 1, 3]
    assert run.is_done("map", 2) and run.task_result("map", 2)["result"] == {"total": 5}


def test_a_torn_jsonl_line_is_skipped_and_the_next_record_starts_its_own_line(tmp_path, caplog):
    from aistack.track.metrics import MetricsFile, read_metrics

    run = RunDir(tmp_path / "run")
    run.record_submission({"job": "map", "job_id": "1", "task_ids": [0], "array": False, "executor": "slurm"})
    with open(run.submissions_file, "a") as handle:
        handle.write('{"job": "map", "job_id": "2", "task_')  # a node crashed mid-append
    assert [r["job_id"] for r in run.submissions()] == ["1"]
    assert "line 2 is not a whole JSON record" in caplog.text
    run.record_submission({"job": "map", "job_id": "3", "task_ids": [1], "array": False, "executor": "slurm"})
    assert [r["job_id"] for r in run.submissions()] == ["1", "3"]

    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    metrics.log(1, {"loss": 2.0})
    with open(metrics.path, "a") as handle:
        handle.write('{"step": 2, "lo')
    metrics.log(2, {"loss": 1.5})
    assert [(r["step"], r["loss"]) for r in read_metrics(metrics.path)] == [(1, 2.0), (2, 1.5)]
