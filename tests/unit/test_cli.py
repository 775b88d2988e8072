"""The CLI's exit codes and messages: 0 ok, 1 a job failed, 2 bad input (nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "examples" / "smoke.yaml"


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.mark.parametrize("args, names", [
    (["smoke.tasks=0"], ["smoke.tasks", "0"]),
    (["smoke.taskz=3"], ["smoke.taskz"]),
    (["kind=nope"], ["kind", "nope", "one of"]),
    (["resources.partition=a;rm -rf /"], ["resources.partition"]),
])
def test_bad_input_exits_2_naming_file_key_and_value(args, names, root, capsys):
    assert main(["run", str(SMOKE), f"output.root={root}", *args, "--on", "local"]) == 2
    err = capsys.readouterr().err
    for name in [str(SMOKE), *names]:
        assert name in err
    assert not root.exists()


def test_missing_recipe_and_unknown_profile_exit_2(root, capsys):
    assert main(["plan", str(root / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["plan", str(SMOKE), "--on", "no-such-cluster"]) == 2
    assert "no-such-cluster" in capsys.readouterr().err


def test_plan_prints_the_jobs_and_scripts_and_writes_nothing(root, capsys):
    assert main(["plan", str(SMOKE), f"output.root={root}", "smoke.tasks=5", "--on", "local"]) == 0
    out = capsys.readouterr().out
    assert "sbatch script of job map" in out and "#SBATCH --array=0-4" in out
    assert not root.exists()


def test_status_of_an_unknown_run_exits_2_and_no_runs_is_fine(root, capsys):
    assert main(["status", "nope", "--root", str(root)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["status", "--root", str(root)]) == 0
    assert "no runs under" in capsys.readouterr().out


def test_local_run_exits_0_then_1_when_a_task_fails(root, capsys):
    base = ["run", str(SMOKE), f"output.root={root}", "smoke.tasks=2", "smoke.steps=2", "smoke.step_seconds=0",
            "tracking.mode=disabled", "--on", "local"]
    assert main(base) == 0
    assert "done" in capsys.readouterr().out
    assert main(base) == 0
    assert "already done" in capsys.readouterr().out
    assert main([*base, "smoke.steps=3", "smoke.fail_tasks=[1]", "smoke.fail_at_step=2"]) == 1
    assert "injected failure in task 1" in capsys.readouterr().err


def test_run_names_are_found_where_aistack_runs_put_them(tmp_path, monkeypatch, capsys):
    """Recipes write under $AISTACK_RUNS (output.root reads it): status, logs, report find
    runs there by name, from any folder."""
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("AISTACK_RUNS", str(elsewhere))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(SMOKE), "smoke.tasks=1", "smoke.steps=1", "smoke.step_seconds=0", "tracking.mode=disabled",
                 "--on", "local"]) == 0
    name = next(elsewhere.glob("smoke-*")).name
    capsys.readouterr()
    assert main(["status", name[:8]]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert main(["logs", name, "--job", "map"]) == 0


def test_piped_tables_take_the_width_their_content_needs(capsys, monkeypatch):
    import sys
    from types import SimpleNamespace

    from rich.console import Console

    from aistack import cli
    from aistack.cli import _print_status

    monkeypatch.delenv("COLUMNS", raising=False)  # a width the user asked for is kept (pytest-xdist sets 80)
    monkeypatch.setattr(cli, "console", Console(highlight=False, width=cli._width(sys.stdout)))

    job = "tokenize-with-a-name-longer-than-eighty-columns-would-leave-room-for"
    _print_status([SimpleNamespace(job=job, task_id=0, executor="slurm", job_id="123_0", state="COMPLETED", attempt=0, note="")])
    assert job in capsys.readouterr().out, "not cut to `tokenize-wi…`"
