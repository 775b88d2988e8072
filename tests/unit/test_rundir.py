"""Run directories: named by what the recipe computes; DONE markers decide what is left."""

from __future__ import annotations

from pathlib import Path

from aistack.launch.rundir import RunDir
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
