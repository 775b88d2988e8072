"""A data stage's inputs are fixed when it is planned: the manifest (files, sizes, mtimes) is
part of the run's identity and its tasks shard from it. An input folder that gains a file
plans a new run, never a reshuffle of the planned run's shards; a planned file changed or
removed stops the task, naming it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aistack.data.inputs import InputsChanged, planned_files
from aistack.launch.stages import resolve
from aistack.launch.submit import prepare_stage
from aistack.recipe import load_recipe
from aistack.rundir import read_input_manifest

REPO = Path(__file__).resolve().parents[2]
FINEWEB = REPO / "recipes" / "data" / "fineweb.yaml"


def _doc(folder: Path, name: str, text: str = "a document") -> Path:
    path = folder / name
    path.write_text(json.dumps({"text": text, "id": name}) + "\n")
    return path


def _stage(folder: Path, runs: Path):
    loaded = load_recipe(FINEWEB, [f"output.root={runs}", f"filter.input.paths=['{folder}']", "filter.input.format=jsonl"])
    return resolve(loaded).stages[0]


def test_a_file_added_to_the_input_folder_plans_a_new_run_and_leaves_the_planned_shards_alone(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.jsonl", "c.jsonl"):
        _doc(folder, name)
    stage = _stage(folder, tmp_path / "runs")
    prepare_stage(stage, "local")
    manifest = read_input_manifest(stage.run)
    assert [e["path"] for e in manifest["files"]] == [str(folder / "b.jsonl"), str(folder / "c.jsonl")]
    assert all(e["size"] > 0 and e["mtime_ns"] > 0 for e in manifest["files"])
    assert _stage(folder, tmp_path / "runs").run == stage.run, "the same inputs: the same run"

    _doc(folder, "a.jsonl")  # sorts first: listed now, it would shift every shard
    assert _stage(folder, tmp_path / "runs").run != stage.run, "changed inputs: a new run"
    block = stage.loaded.recipe.filter.input
    assert planned_files(stage.run, block) == [str(folder / "b.jsonl"), str(folder / "c.jsonl")]


@pytest.mark.parametrize("change", ["rewrite", "remove"])
def test_a_planned_input_changed_under_the_run_stops_its_task_naming_the_file(tmp_path, change):
    folder = tmp_path / "in"
    folder.mkdir()
    planned = _doc(folder, "b.jsonl")
    stage = _stage(folder, tmp_path / "runs")
    prepare_stage(stage, "local")
    if change == "rewrite":
        _doc(folder, "b.jsonl", "another, longer document")
        os.utime(planned, ns=(1, 1))
    else:
        planned.unlink()
        _doc(folder, "c.jsonl")  # the folder is not empty: the recipe still validates
    with pytest.raises(InputsChanged, match=rf"{planned} \((size \d+ -> \d+|gone)\).*run the recipe again"):
        planned_files(stage.run, stage.loaded.recipe.filter.input)


def test_a_task_checks_only_the_planned_files_of_its_own_shard(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    planned = [_doc(folder, f"{name}.jsonl") for name in "abcd"]
    stage = _stage(folder, tmp_path / "runs")
    prepare_stage(stage, "local")
    planned[1].unlink()  # shard 1 of 2 reads b and d
    block = stage.loaded.recipe.filter.input
    assert planned_files(stage.run, block, shard=(0, 2)) == [str(p) for p in planned], "a and c are unchanged"
    with pytest.raises(InputsChanged, match=rf"{planned[1]} \(gone\)"):
        planned_files(stage.run, block, shard=(1, 2))


def test_inputs_an_upstream_stage_writes_are_listed_when_the_task_runs(tmp_path):
    from aistack.data.inputs import input_manifest
    from aistack.recipe.deferred import deferring

    user, upstream = tmp_path / "user", tmp_path / "upstream-run" / "documents"
    user.mkdir()
    upstream.mkdir(parents=True)
    _doc(user, "u.jsonl")
    overrides = [f"output.root={tmp_path / 'runs'}", f"filter.input.paths=['{user}', '{upstream}']", "filter.input.format=jsonl"]
    with deferring({str(upstream): None}):  # as a pipeline plans it: the upstream stage has not run yet
        manifest = input_manifest(load_recipe(FINEWEB, overrides).recipe.filter.input)
    assert [e["path"] for e in manifest["files"]] == [str(user / "u.jsonl")] and manifest["deferred"] == [str(upstream)]
    _doc(upstream, "00000.jsonl")  # the upstream stage's output, written after the plan
    loaded = load_recipe(FINEWEB, overrides)  # as the task loads it, on the node
    stage = resolve(loaded).stages[0]
    stage.run.path.mkdir(parents=True)
    (stage.run.path / "inputs.json").write_text(json.dumps(manifest))
    assert planned_files(stage.run, loaded.recipe.filter.input) == [str(upstream / "00000.jsonl"), str(user / "u.jsonl")]


def test_an_output_folder_outside_the_run_holds_one_runs_output(tmp_path):
    from aistack.launch.stages import check_outputs
    from aistack.recipe import RecipeError

    folder = tmp_path / "in"
    folder.mkdir()
    _doc(folder, "b.jsonl")
    shared = tmp_path / "documents"

    def stage(*extra):
        loaded = load_recipe(FINEWEB, [f"output.root={tmp_path / 'runs'}", f"filter.input.paths=['{folder}']",
                                       "filter.input.format=jsonl", f"filter.output.path={shared}", *extra])
        return resolve(loaded).stages[0]

    first = stage()
    check_outputs(first)
    prepare_stage(first, "local")  # as its submission does: the folder is the first run's now
    check_outputs(stage())  # the same run again: its own folder
    other = stage("filter.language.threshold=0.9")  # another version of the recipe: another run
    assert other.run != first.run
    with pytest.raises(RecipeError, match=rf"key 'filter.output.path' = '{shared}'.*holds run {first.run.name}'s"):
        check_outputs(other)
