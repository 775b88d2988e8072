"""The local executor (no scheduler): same plan, same markers, same resume rules as on Slurm."""

from __future__ import annotations

import json

import pytest

from aistack.launch import launcher
from aistack.launch.local import JobFailed
from aistack.track.metrics import read_metrics
from conftest import RECIPES

SMOKE = RECIPES / "examples" / "smoke.yaml"


def test_local_run_completes_and_rerun_skips_finished_tasks(runs_root):
    overrides = [f"output.root={runs_root}", "smoke.tasks=3", "smoke.steps=6", "tracking.mode=disabled"]
    first = launcher.launch(SMOKE, overrides, on="local")
    summary = first.run.task_result("reduce", 0)["result"]
    assert summary["ok"] and summary["total"] == summary["expected"] == (1 + 2 + 3) * 21
    steps = [r["step"] for r in read_metrics(first.run.task_dir("map", 1) / "metrics.jsonl")]
    assert steps == list(range(1, 7))
    assert {r.state for r in first.status()} == {"COMPLETED"}

    again = launcher.launch(SMOKE, overrides, on="local")
    assert again.run.path == first.run.path
    assert again.submitted == [], "a finished run submits nothing"


def test_local_failure_stops_dependents_and_rerun_finishes_only_the_rest(runs_root):
    base = [f"output.root={runs_root}", "smoke.tasks=3", "smoke.steps=4", "smoke.checkpoint_every=2", "tracking.mode=disabled"]
    with pytest.raises(JobFailed, match="injected failure in task 1"):
        launcher.launch(SMOKE, [*base, "smoke.fail_tasks=[1]", "smoke.fail_at_step=3"], on="local")
    run = launcher.prepare(SMOKE, base, on="local")[2]
    assert run.is_done("map", 0) and run.is_done("map", 2) and not run.is_done("map", 1)
    assert not run.is_done("reduce", 0), "reduce must not run after a failed map task"
    assert run.task_state("map", 1)["state"] == "FAILED"
    finished_before = {t: run.done_file("map", t).stat().st_mtime_ns for t in (0, 2)}
    # the task resumes from its last checkpoint (step 2), not from scratch
    assert json.loads((run.task_dir("map", 1) / "checkpoint.json").read_text())["step"] == 2

    fixed = launcher.launch(SMOKE, base, on="local")
    assert fixed.run.path == run.path, "failure injection is not part of the run's identity"
    assert [(s.job, s.task_ids) for s in fixed.submitted] == [("map", [1]), ("reduce", [0])]
    assert {t: run.done_file("map", t).stat().st_mtime_ns for t in (0, 2)} == finished_before
    assert "resuming from step 2" in (run.log_dir("map")).joinpath(
        f"{run.task_state('map', 1)['job_id']}_0_log.out").read_text()
    assert run.task_result("reduce", 0)["result"]["ok"]
