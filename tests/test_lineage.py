"""Lineage: a training run records the data run it reads (lineage.json, W&B artifact used),
the data run logs its outputs as that artifact; offline, and through `aistack sync`."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml
from wandb_stand_in import StandInServer

from aistack.cli import main
from aistack.rundir import RunDir
from aistack.runtime.task import TaskContext
from aistack.recipe.schema import Tracking
from aistack.track import lineage, wandb_run
from aistack.track.wandb_run import offline_runs, read_offline_run, run_id

DUMMY_KEY = "dummykey_" + "0123456789abcdef" * 3


def _run_dir(root: Path, name: str, recipe: dict) -> RunDir:
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    run.recipe_file.write_text(yaml.safe_dump(recipe))
    return run


def _ctx(run: RunDir, kind: str, job: str, data: dict, tracked: bool = True) -> TaskContext:
    tracking = Tracking(mode="offline" if tracked else "disabled")
    wandb = wandb_run.start(tracking, run.path, run.name, kind, job, 0, data)
    return TaskContext(run=run, recipe=None, kind=kind, job=job, task_id=0, num_tasks=1, wandb=wandb, data=data)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A tokenize run with its outputs, and a pretrain run whose recipe reads them."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # wandb's artifact cache and settings
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "runs" / "pipe"
    _run_dir(root.parent, "pipe", {"kind": "pipeline", "name": "pipe"})  # the pipeline dir (output.root)
    data = _run_dir(root, "tokenize-0123abcdef", {"kind": "tokenize", "name": "tokenize"})
    out = data.path / "output" / "tokenize"
    out.mkdir(parents=True)
    (out / "data.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB: recorded by size
    (out / "data.idx").write_bytes(b"MMIDIDX\x00\x00" + bytes(range(64)))
    (out / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    image = tmp_path / "images" / "aistack.sqsh"
    image.parent.mkdir()
    image.write_bytes(b"not an input")
    train_data = {
        "kind": "pretrain", "name": "pretrain",
        "data": {"paths": [{"path": str(out / "data"), "weight": 1.0}], "tokenizer": str(out / "tokenizer.json")},
        "output": {"root": str(root)},
        "resources": {"container": {"image": str(image)}},
    }
    train = _run_dir(root, "pretrain-4567abcdef", train_data)
    return data, train, train_data


def _read_finished(folder: Path) -> dict:
    """The offline run once wandb's service has written all of it (it may lag `finish()`)."""
    deadline = time.time() + 30
    while True:
        run = read_offline_run(folder)
        if run["finished"] or time.time() > deadline:
            return run
        time.sleep(0.1)


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_data_run_manifest_and_artifact_and_training_lineage(runs, monkeypatch):
    data, train, train_data = runs
    monkeypatch.setenv("WANDB_API_KEY", DUMMY_KEY)  # present, and written nowhere
    out = data.path / "output" / "tokenize"

    ctx = _ctx(data, "tokenize", "stats", {"kind": "tokenize", "name": "tokenize"})
    manifest = lineage.log_dataset(ctx)
    ctx.wandb.finish()
    on_disk = json.loads((data.path / lineage.MANIFEST).read_text())
    assert on_disk["digest"] == manifest["digest"]
    files = {e["path"]: e for out_ in on_disk["outputs"].values() for e in out_["files"]}
    assert set(files) == {"output/tokenize/data.bin", "output/tokenize/data.idx", "output/tokenize/tokenizer.json"}
    assert files["output/tokenize/data.idx"]["sha256"] == hashlib.sha256((out / "data.idx").read_bytes()).hexdigest()
    assert files["output/tokenize/data.bin"]["bytes"] == 256 * 8192 and files["output/tokenize/data.bin"]["sha256"] is None

    (logged_run,) = offline_runs(data.path)
    logged = _read_finished(logged_run)
    assert logged["id"] == run_id(data.name, "stats", 0)
    (art,) = logged["artifacts"]
    assert art["type"] == "dataset" and art["name"] == data.name and not art["used"]
    assert art["metadata"]["digest"] == manifest["digest"] and art["metadata"]["stage_hash"] == "0123abcdef"
    entries = {e["path"]: e for e in art["entries"]}
    assert entries["output/tokenize/data.idx"]["ref"] == (out / "data.idx").as_uri()
    assert entries["output/tokenize/data.idx"]["digest"] == _md5_b64((out / "data.idx").read_bytes())  # by content
    assert entries["output/tokenize/data.bin"]["digest"] != _md5_b64((out / "data.bin").read_bytes())  # by path

    tctx = _ctx(train, "pretrain", "train", train_data)
    record = lineage.record_lineage(tctx)
    tctx.wandb.finish()
    written = json.loads((train.path / lineage.LINEAGE).read_text())
    assert written == record
    (ds,) = written["datasets"]
    assert ds["run"] == str(data.path) and ds["name"] == data.name and ds["kind"] == "tokenize"
    assert ds["stage_hash"] == "0123abcdef" and ds["digest"] == manifest["digest"]
    assert ds["used_as"] == {"data.paths.0.path": "output/tokenize/data", "data.tokenizer": "output/tokenize/tokenizer.json"}
    assert {e["path"]: e["sha256"] for e in ds["outputs"]}["output/tokenize/data.idx"] == files["output/tokenize/data.idx"]["sha256"]
    assert written["runs"] == [] and written["external"] == [], "no container image, no output root, no pipeline"

    (used_run,) = offline_runs(train.path)
    used = _read_finished(used_run)
    (uart,) = used["artifacts"]
    assert uart["used"] and uart["type"] == "dataset" and uart["name"] == data.name
    assert uart["digest"] == art["digest"], "the same artifact version on both sides"

    line = lineage.describe(train.path)
    assert line == f"lineage: {data.name} (digest {manifest['digest'][:12]})"
    for path in data.path.parent.rglob("*"):
        if path.is_file():
            assert DUMMY_KEY.encode() not in path.read_bytes(), path


def test_changed_data_changes_the_digest_and_untracked_runs_still_write_lineage(runs):
    data, train, train_data = runs
    idx = data.path / "output" / "tokenize" / "data.idx"
    ctx = _ctx(data, "tokenize", "stats", {"kind": "tokenize"}, tracked=False)
    before = lineage.log_dataset(ctx)["digest"]
    assert offline_runs(data.path) == []
    idx.write_bytes(idx.read_bytes()[:-1] + b"\xff")  # same size: only the content digest sees it
    record = lineage.record_lineage(_ctx(train, "pretrain", "train", train_data, tracked=False))
    assert record["datasets"][0]["digest"] != before
    assert record["datasets"][0]["digest"] == lineage.dataset_manifest(data, "tokenize")["digest"]
    assert (train.path / lineage.LINEAGE).exists() and offline_runs(train.path) == []


def test_lineage_syncs_as_one_artifact_version_logged_by_the_data_run_and_used_by_the_training_run(runs, monkeypatch, capsys):
    data, train, train_data = runs
    ctx = _ctx(data, "tokenize", "stats", {"kind": "tokenize", "name": "tokenize"})
    lineage.log_dataset(ctx)
    ctx.wandb.finish()
    tctx = _ctx(train, "pretrain", "train", train_data)
    lineage.record_lineage(tctx)
    tctx.wandb.finish()
    for run in (data, train):
        assert _read_finished(offline_runs(run.path)[0])["finished"]
    with StandInServer() as server:
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        monkeypatch.setenv("WANDB_API_KEY", DUMMY_KEY)
        assert main(["sync", str(train.path)]) == 0  # its data run first, though not asked for
    out = capsys.readouterr().out
    assert f"data run {data.name}: synced 1 folder(s)" in out and "synced 1 folder(s)" in out.splitlines()[-1]
    (art,) = server.artifacts.values()
    assert art.name == data.name and art.type == "dataset" and art.committed
    assert art.run == run_id(data.name, "stats", 0)
    assert art.used_by == [run_id(train.name, "train", 0)]
    assert set(art.manifest["contents"]) == {"output/tokenize/data.bin", "output/tokenize/data.idx", "output/tokenize/tokenizer.json"}


def _trained(root: Path, name: str, step: int) -> RunDir:
    """A pretrain run directory whose training task has a complete checkpoint at `step`."""
    run = _run_dir(root, name, {"kind": "pretrain", "name": "pretrain"})
    ckpts = run.task_dir("train", 0) / "checkpoints"
    (ckpts / f"step_{step:06d}").mkdir(parents=True)
    (ckpts / f"step_{step:06d}" / "metadata.json").write_text("{}")
    (ckpts / f"step_{step:06d}" / "aistack.json").write_text(json.dumps({"step": step, "tokens": step * 512}))
    (ckpts / "latest").write_text(f"step_{step:06d}\n")
    return run


def test_a_model_is_logged_by_its_training_run_used_by_its_evaluation_and_the_results_follow(runs, monkeypatch, capsys):
    data, train, train_data = runs
    trained = _trained(train.path.parent, "pretrain-89abcdef01", 40)
    ctx = _ctx(trained, "pretrain", "train", {"kind": "pretrain"})
    lineage.log_model(ctx)
    ctx.wandb.finish()
    (logged,) = _read_finished(offline_runs(trained.path)[0])["artifacts"]
    checkpoint = trained.task_dir("train", 0) / "checkpoints" / "step_000040"
    assert logged["type"] == "model" and logged["name"] == trained.name and not logged["used"]
    assert logged["metadata"]["step"] == 40 and logged["metadata"]["checkpoint"] == "step_000040"
    # the checkpoint's files by reference, each named by its path: listed, not read
    assert sorted((e["path"], e["ref"]) for e in logged["entries"]) == [
        (f"step_000040/{f}", (checkpoint / f).as_uri()) for f in ("aistack.json", "metadata.json")]
    assert all(e["digest"] != _md5_b64((checkpoint / e["path"].split("/")[1]).read_bytes()) for e in logged["entries"])

    eval_data = {"kind": "evaluate", "name": "eval", "evaluate": {"checkpoints": [str(trained.path)], "tasks": ["x"]}}
    evaluation = _run_dir(train.path.parent, "eval-2345abcdef", eval_data)
    results = [evaluation.path / "results.json", evaluation.path / "results.csv"]
    results[0].write_text('{"rows": []}')
    results[1].write_text("run,step,task,metric,value\n")
    ectx = _ctx(evaluation, "evaluate", "gather", eval_data)
    record = lineage.record_lineage(ectx)
    lineage.log_results(ectx, results)
    ectx.wandb.finish()
    assert record["runs"] == [{"run": str(trained.path), "name": trained.name, "kind": "pretrain",
                               "stage_hash": "89abcdef01", "used_as": {"evaluate.checkpoints.0": "."}}]
    arts = {a["type"]: a for a in _read_finished(offline_runs(evaluation.path)[0])["artifacts"]}
    assert arts["model"]["used"] and arts["model"]["digest"] == logged["digest"], "the same model version on both sides"
    out = arts["eval-results"]
    assert not out["used"] and {e["path"] for e in out["entries"]} == {"results.json", "results.csv"}
    assert {e["path"]: e["digest"] for e in out["entries"]}["results.json"] == _md5_b64(b'{"rows": []}')

    with StandInServer() as server:
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        monkeypatch.setenv("WANDB_API_KEY", DUMMY_KEY)
        assert main(["sync", str(trained.path)]) == 0
        assert main(["sync", str(evaluation.path)]) == 0
    capsys.readouterr()
    model = next(a for a in server.artifacts.values() if a.type == "model")
    assert model.name == trained.name and model.committed and model.run == run_id(trained.name, "train", 0)
    assert model.used_by == [run_id(evaluation.name, "gather", 0)]
    assert any(a.type == "eval-results" and a.run == run_id(evaluation.name, "gather", 0) for a in server.artifacts.values())
