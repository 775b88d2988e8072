"""`aistack sync`: offline W&B runs of a run (every stage of a pipeline) reach a W&B server.

No internet here: tests/wandb_stand_in.py is a loopback server that speaks the part of
W&B's protocol `wandb sync` uses (GraphQL, file stream, file uploads) and records what it
received; WANDB_BASE_URL points wandb at it, with a dummy API key from the environment.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import RECIPES, write_recipe
from wandb_stand_in import StandInServer

from aistack.cli import main
from aistack.rundir import RunDir, read_jsonl
from aistack.track import sync as track_sync
from aistack.track.wandb_run import offline_runs, run_id

DUMMY_KEY = "dummykey_" + "0123456789abcdef" * 3  # W&B wants 40+ characters

PIPELINE = """\
kind: pipeline
name: synced
report: false
output: {{root: {root}}}
tracking: {{mode: offline, project: sync-test}}
stages:
  first:
    recipe: {smoke}
    overrides: {{smoke: {{tasks: 2, steps: 3, step_seconds: 0}}}}
  second:
    recipe: {smoke}
    after: [first]
    overrides: {{smoke: {{tasks: 1, steps: 4, step_seconds: 0}}}}
"""


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """A clean W&B environment: no netrc or settings of this machine, no key yet."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_DIR", "WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """A two-stage pipeline of smoke runs, run here, tracked offline (made once: ~10 s)."""
    tmp = tmp_path_factory.mktemp("sync")
    root = tmp / "runs"
    recipe = write_recipe(tmp / "synced.yaml", PIPELINE.format(root=root, smoke=RECIPES / "examples" / "smoke.yaml"))
    assert main(["run", str(recipe), "--on", "local"]) == 0
    return root / "synced"


def _stage_runs(pipeline: Path) -> dict[str, RunDir]:
    stages = json.loads((pipeline / "stages.json").read_text())["stages"]
    return {s["name"]: RunDir(Path(s["run"])) for s in stages}


def _states(pipeline: Path):
    from aistack.launch.status import stage_states
    from aistack.plan_records import read_stage_records

    return stage_states(read_stage_records(RunDir(pipeline)))


def _logged(run: RunDir, job: str, task: int) -> list[dict]:
    return read_jsonl(run.task_dir(job, task) / "metrics.jsonl")


def _copy(pipeline: Path, dest: Path) -> Path:
    """A fresh copy of the pipeline (its stage runs inside it, stages.json pointing at them)."""
    import shutil

    shutil.copytree(pipeline, dest)
    text = (dest / "stages.json").read_text().replace(str(pipeline), str(dest))
    (dest / "stages.json").write_text(text)
    return dest


def test_sync_of_a_pipeline_uploads_every_stage_run(pipeline_run, tmp_path, wandb_env, capsys):
    pipeline = _copy(pipeline_run, tmp_path / "synced")
    stages = _stage_runs(pipeline)
    # smoke: map tasks log to W&B one run each, the reduce job one more
    expected = {("first", "map", 0), ("first", "map", 1), ("first", "reduce", 0), ("second", "map", 0), ("second", "reduce", 0)}
    assert all(s.wandb.endswith(" offline") for s in _states(pipeline))
    with StandInServer() as server:
        wandb_env.setenv("WANDB_BASE_URL", server.url)
        wandb_env.setenv("WANDB_API_KEY", DUMMY_KEY)
        assert main(["sync", str(pipeline)]) == 0
        out = capsys.readouterr()
        assert not any(s.wandb.endswith("offline") for s in _states(pipeline)), "status: synced"

        assert server.unknown == [] or set(server.unknown) <= {"POST /sdk/otel/v1/metrics"}, server.unknown
        assert set(server.runs) == {run_id(stages[s].name, job, task) for s, job, task in expected}
        for stage, job, task in expected:
            run = stages[stage]
            got = server.runs[run_id(run.name, job, task)]
            assert got.display_name == f"{run.name}/{job}/{task}"
            assert got.project == "sync-test" and got.group == "synced" and got.job_type == "smoke"
            assert got.config["kind"] == "smoke" and got.config["name"] == stage
            assert got.config["smoke"]["steps"] == (3 if stage == "first" else 4)
            assert got.complete and got.exitcode == 0
            assert "config.yaml" in got.files
            logged = _logged(run, job, task)
            assert logged, f"{stage}/{job}/{task} logged nothing"
            keys = [k for k in logged[0] if k not in ("step", "time")]
            sent = [{k: row[k] for k in ["_step", *keys]} for row in got.history]
            assert sent == [{"_step": row["step"], **{k: row[k] for k in keys}} for row in logged]
        # said per stage, and nothing of the key anywhere
        assert "stage first: synced 3 folder(s)" in out.out and "stage second: synced 2 folder(s)" in out.out
        assert DUMMY_KEY not in out.out + out.err
        for path in pipeline.rglob("*"):
            if path.is_file() and path.stat().st_size < 5_000_000:
                assert DUMMY_KEY.encode() not in path.read_bytes(), path

        # a second sync: nothing new, nothing sent
        before = list(server.operations)
        assert main(["sync", str(pipeline)]) == 0
        out = capsys.readouterr().out
        assert server.operations == before
        assert "stage first: 3 already synced" in out and "nothing new to sync" in out


def test_sync_of_one_stage_run(pipeline_run, tmp_path, wandb_env, capsys):
    pipeline = _copy(pipeline_run, tmp_path / "synced")
    second = _stage_runs(pipeline)["second"]
    with StandInServer() as server:
        wandb_env.setenv("WANDB_BASE_URL", server.url)
        wandb_env.setenv("WANDB_API_KEY", DUMMY_KEY)
        assert main(["sync", str(second.path)]) == 0
    assert set(server.runs) == {run_id(second.name, "map", 0), run_id(second.name, "reduce", 0)}
    assert server.runs[run_id(second.name, "map", 0)].history[-1]["total"] == 10  # 1+2+3+4
    assert "synced 2 folder(s)" in capsys.readouterr().out
    first = _stage_runs(pipeline)["first"]
    assert not any(track_sync.is_synced(f) for f in offline_runs(first.path)), "only the run asked for"


class RefusingServer(StandInServer):
    """A server that refuses to create runs (an expired key, no access to the project)."""

    def graphql(self, body):
        if body.get("operationName") == "UpsertBucket":
            self.operations.append("UpsertBucket")
            return {"errors": [{"message": "permission denied"}], "data": None}
        return super().graphql(body)


def test_a_refused_upload_is_a_failure_and_a_retry_completes_it(pipeline_run, tmp_path, wandb_env, capsys):
    pipeline = _copy(pipeline_run, tmp_path / "synced")
    with RefusingServer() as server:
        wandb_env.setenv("WANDB_BASE_URL", server.url)
        wandb_env.setenv("WANDB_API_KEY", DUMMY_KEY)
        assert main(["sync", str(pipeline)]) == 1  # wandb itself exits 0 here
        assert "UpsertBucket" in server.operations
    err = capsys.readouterr().err
    assert "not synced (5)" in err and "run `aistack sync` again" in err
    with StandInServer() as server:
        wandb_env.setenv("WANDB_BASE_URL", server.url)
        assert main(["sync", str(pipeline)]) == 0
        assert len(server.runs) == 5


def test_no_api_key_is_said_and_nothing_is_attempted(pipeline_run, tmp_path, wandb_env, capsys):
    pipeline = _copy(pipeline_run, tmp_path / "synced")
    calls = []
    wandb_env.setattr(track_sync.subprocess, "run", lambda *a, **k: calls.append(a))
    assert main(["sync", str(pipeline)]) == 2
    assert calls == []
    assert "no W&B API key: set WANDB_API_KEY" in capsys.readouterr().err


def test_the_wandb_command_parses_with_wandb_own_parser_and_carries_no_secret(pipeline_run, tmp_path, wandb_env):
    """What reaches wandb: `sync --yes FOLDER...`, accepted by wandb 0.31's click command
    (which refuses --include-offline), the key only in the environment."""
    from wandb.cli import cli as wandb_cli

    pipeline = _copy(pipeline_run, tmp_path / "synced")
    wandb_env.setenv("WANDB_API_KEY", DUMMY_KEY)
    seen = []

    def runner(argv, **kwargs):
        seen.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, 0)

    result = track_sync.sync(RunDir(pipeline), runner=runner)
    assert result.code == 1  # nothing was uploaded: no markers
    (argv, kwargs), = seen
    assert argv[1:4] == ["-m", "wandb", "sync"]
    assert DUMMY_KEY not in " ".join(argv)
    ctx = wandb_cli.sync.make_context("sync", list(argv[4:]))
    assert ctx.params["skip_confirmation"] is True
    assert ctx.params["include_offline"] is None and ctx.params["include_globs"] is None  # no removed option
    folders = sorted(f for run in _stage_runs(pipeline).values() for f in offline_runs(run.path))
    assert sorted(Path(p) for p in ctx.params["paths"]) == folders
    assert kwargs["stdin"] == subprocess.DEVNULL


def test_nothing_to_sync_messages_and_exit_codes(tmp_path, wandb_env, capsys):
    disabled = tmp_path / "runs" / "smoke-aaa"
    disabled.mkdir(parents=True)
    (disabled / "recipe.yaml").write_text("kind: smoke\nname: smoke\ntracking: {mode: disabled}\n")
    assert main(["sync", str(disabled)]) == 2
    assert "W&B tracking is disabled" in capsys.readouterr().err

    not_yet = tmp_path / "runs" / "smoke-bbb"
    not_yet.mkdir(parents=True)
    (not_yet / "recipe.yaml").write_text("kind: smoke\nname: smoke\ntracking: {mode: auto}\n")
    assert main(["sync", str(not_yet)]) == 0
    out = capsys.readouterr().out
    assert "no task has opened one" in out and "nothing to sync" in out


def test_a_run_still_being_written_is_uploaded_again_next_time(pipeline_run, tmp_path, wandb_env, capsys):
    """wandb marks a file synced however far it went: a run still logging (here: a file cut
    before its exit record) is unmarked again, so the next sync uploads the rest."""
    pipeline = _copy(pipeline_run, tmp_path / "synced")
    second = _stage_runs(pipeline)["second"]
    folder = next(f for f in offline_runs(second.path) if run_id(second.name, "map", 0) in f.name)
    (wandb_file,) = folder.glob("*.wandb")
    data = wandb_file.read_bytes()
    wandb_file.write_bytes(data[:_last_record_start(data)])  # as if the task were still running
    assert not track_sync.is_complete(folder)
    with StandInServer() as server:
        wandb_env.setenv("WANDB_BASE_URL", server.url)
        wandb_env.setenv("WANDB_API_KEY", DUMMY_KEY)
        assert main(["sync", str(second.path)]) == 0
        out = capsys.readouterr().out
        assert "synced 1 folder(s)" in out and "1 uploaded as far as written" in out
        assert server.runs[run_id(second.name, "map", 0)].history, "what was written went up"
        assert not track_sync.is_synced(folder)
        upserts = server.operations.count("UpsertBucket")
        assert main(["sync", str(second.path)]) == 0
        assert server.operations.count("UpsertBucket") > upserts, "uploaded again"
        assert "1 already synced" in capsys.readouterr().out


def _last_record_start(data: bytes) -> int:
    """Offset of the last record of a .wandb file (its exit record, for a finished run)."""
    import struct

    pos, starts = 7, []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, rtype = struct.unpack("<IHB", data[pos : pos + 7])
        if rtype in (1, 2):  # FULL, FIRST
            starts.append(pos)
        pos += 7 + length
    return starts[-1]
