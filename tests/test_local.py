"""The local executor (no scheduler): same plan, same markers, same resume rules as on Slurm."""

from __future__ import annotations

import json

import pytest

from aistack.launch import launcher
from aistack.launch.executor import JobFailed
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


def test_wandb_offline_run_holds_recipe_config_and_metrics(runs_root, monkeypatch):
    from aistack.track.wandb_run import offline_runs, read_offline_run, run_id

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    result = launcher.launch(SMOKE, [f"output.root={runs_root}", "smoke.tasks=2", "smoke.steps=5"], on="local")
    runs = {r["id"]: r for r in map(read_offline_run, offline_runs(result.run.path))}
    task0 = runs[run_id(result.run.name, "map", 0)]
    assert [row["total"] for row in task0["history"]] == [1, 3, 6, 10, 15]
    assert task0["config"]["kind"] == "smoke" and task0["config"]["smoke"]["tasks"] == 2
    assert runs[run_id(result.run.name, "reduce", 0)]["history"][0]["ok"] is True


def test_a_task_restarted_from_scratch_logs_each_step_once_in_metrics_and_wandb(runs_root, monkeypatch):
    """Killed before its first checkpoint, a task starts over under the same W&B id: the
    steps the first attempt logged are redone, but neither file holds any step twice."""
    from aistack.track.wandb_run import offline_runs, read_offline_run, run_id

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    base = [f"output.root={runs_root}", "smoke.tasks=1", "smoke.steps=6", "smoke.checkpoint_every=1000", "tracking.mode=offline"]
    with pytest.raises(JobFailed, match="injected failure in task 0 at step 4"):
        launcher.launch(SMOKE, [*base, "smoke.fail_tasks=[0]", "smoke.fail_at_step=4"], on="local")
    result = launcher.launch(SMOKE, base, on="local")
    assert result.run.task_state("map", 0)["attempt"] == 1
    assert [r["step"] for r in read_metrics(result.run.task_dir("map", 0) / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    attempts = [r for r in map(read_offline_run, offline_runs(result.run.path)) if r["id"] == run_id(result.run.name, "map", 0)]
    assert len(attempts) == 2
    steps = sorted(row["_step"] for attempt in attempts for row in attempt["history"])
    assert steps == [1, 2, 3, 4, 5, 6], "each step once under the task's W&B id"


def test_secrets_never_land_in_the_run_directory_or_scripts(runs_root, monkeypatch, capsys):
    from aistack.cli import main

    secret = "s3cr3t-wandb-key-0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    result = launcher.launch(SMOKE, [f"output.root={runs_root}", "smoke.tasks=1", "smoke.steps=2", "tracking.mode=offline"], on="local")
    files = [p for p in result.run.path.rglob("*") if p.is_file()]
    assert len(files) > 10
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert leaked == []
    assert main(["run", str(SMOKE), f"output.root={runs_root}", "--on", "local", "--dry-run"]) == 0
    assert secret not in capsys.readouterr().out


def test_two_rank_task_all_reduces_locally(runs_root):
    overrides = [f"output.root={runs_root}", "smoke.tasks=1", "smoke.steps=1", "smoke.all_reduce=true",
                 "resources.tasks_per_node=2", "tracking.mode=disabled"]
    result = launcher.launch(SMOKE, overrides, on="local")
    out = result.run.task_result("map", 0)["result"]
    assert out["world_size"] == 2 and out["all_reduce"] == 3.0


def test_cli_run_status_logs_on_local(runs_root, capsys):
    from aistack.cli import main

    args = [str(SMOKE), f"output.root={runs_root}", "smoke.tasks=2", "smoke.steps=3", "tracking.mode=disabled"]
    assert main(["run", *args, "--on", "local"]) == 0
    run_dir = next(runs_root.iterdir())
    capsys.readouterr()
    assert main(["status", run_dir.name, "--root", str(runs_root)]) == 0
    assert "COMPLETED: 3" in capsys.readouterr().out
    assert main(["logs", str(run_dir), "--job", "map", "--task", "1"]) == 0
    assert "task 1: done, total=12" in capsys.readouterr().out
    assert main(["run", *args, "smoke.fail_tasks=[0]", "--on", "local"]) == 0, "finished run: nothing to redo"
    assert main(["status", "no-such-run", "--root", str(runs_root)]) == 2
