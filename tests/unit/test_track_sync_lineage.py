"""aistack.track.sync and .lineage without a W&B service: routing, targets, messages."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from aistack.rundir import RunDir
from aistack.track import lineage, sync
from aistack.track.wandb_run import WandbRun


class FakeRun:
    def __init__(self, offline: bool):
        self.offline = offline
        self.calls: list[tuple] = []

    def use_artifact(self, artifact):
        if self.offline:
            raise TypeError("Cannot use artifact when in offline mode.")
        self.calls.append(("use_artifact", artifact))

    def _log_artifact(self, artifact, is_user_created=False, use_after_commit=False):
        self.calls.append(("_log_artifact", artifact, is_user_created, use_after_commit))

    def log_artifact(self, artifact):
        self.calls.append(("log_artifact", artifact))


def test_use_artifact_offline_logs_it_as_used_and_online_uses_it():
    offline, online = FakeRun(offline=True), FakeRun(offline=False)
    WandbRun(lambda: offline).use_artifact("ds")
    WandbRun(lambda: online).use_artifact("ds")
    assert offline.calls == [("_log_artifact", "ds", True, True)]
    assert online.calls == [("use_artifact", "ds")]
    broken = WandbRun(lambda: FakeRun(offline=False))
    broken._run.use_artifact = lambda a: (_ for _ in ()).throw(ConnectionResetError("gone"))
    broken.use_artifact("ds")  # no exception: W&B is a mirror
    assert broken.error == "ConnectionResetError: gone" and not broken.enabled


def _run(path: Path, recipe: dict) -> RunDir:
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return RunDir(path)


def test_pipeline_targets_say_why_a_stage_has_nothing(tmp_path, capsys):
    from aistack.cli import main

    pipe = _run(tmp_path / "p", {"kind": "pipeline", "name": "p"})
    done = _run(tmp_path / "p" / "a-111", {"kind": "smoke", "tracking": {"mode": "disabled"}})
    stages = [{"name": "a", "kind": "smoke", "run": str(done.path), "needs": [], "jobs": []},
              {"name": "b", "kind": "smoke", "run": str(tmp_path / "p" / "b-222"), "needs": ["a"], "jobs": []}]
    (pipe.path / "stages.json").write_text(json.dumps({"stages": stages}))
    assert [t.label for t in sync.targets(pipe)] == ["stage a", "stage b"]
    assert main(["sync", str(pipe.path)]) == 0  # b may still log: not "cannot"
    out = capsys.readouterr().out
    assert "stage a: no W&B runs (tracking.mode: disabled)" in out and "stage b: no W&B runs (not run yet)" in out


def test_a_failing_wandb_exit_code_fails_the_sync(tmp_path, monkeypatch):
    run = _run(tmp_path / "r-1", {"kind": "smoke"})
    folder = run.path / "wandb" / "offline-run-20260101_000000-abc"
    folder.mkdir(parents=True)
    (folder / "run-abc.wandb").write_bytes(b"")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)

    def wandb_marks_but_fails(argv, **kwargs):
        (folder / "run-abc.wandb.synced").write_text("")
        return subprocess.CompletedProcess(argv, 3)

    result = sync.sync(run, runner=wandb_marks_but_fails)
    assert result.code == sync.FAILED and result.lines[-1] == "wandb sync exited with 3"


def test_recipe_inputs_only_and_relative_paths_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "train.jsonl").write_text('{"messages": []}\n')
    run = _run(tmp_path / "runs" / "sft-1", {"kind": "sft"})
    data = {"kind": "sft", "data": {"train": ["chat/train.jsonl", "chat/missing-*.jsonl"], "tokenizer": "gpt2"},
            "resources": {"container": {"image": str(tmp_path / "chat" / "train.jsonl")}}}
    record = lineage.lineage(run, "sft", data)
    (ext,) = record["external"]
    assert ext["path"] == str(tmp_path / "chat" / "train.jsonl") and ext["used_as"] == "data.train.0"
    assert ext["files"][0]["sha256"] is not None and record["datasets"] == []
