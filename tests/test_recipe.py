"""Recipe loading: extends, overrides, ${env:...}, and the errors bad recipes get."""

from __future__ import annotations

import pytest

from aistack.cli import main
from aistack.recipe import RecipeError, load_recipe
from conftest import RECIPES, write_recipe


def test_extends_deep_merges_and_overrides_win(tmp_path):
    base = write_recipe(tmp_path / "base.yaml", "resources:\n  nodes: 2\n  cpus_per_task: 4\ntracking:\n  tags: [a]\n")
    child = write_recipe(
        tmp_path / "child.yaml",
        "extends: base.yaml\nkind: smoke\nname: c\nresources:\n  nodes: 3\nsmoke:\n  tasks: 7\n",
    )
    loaded = load_recipe(child, ["resources.time=02:30:00", "smoke.steps=9", "tracking.tags=[x, y]"])
    r = loaded.recipe
    assert (r.resources.nodes, r.resources.cpus_per_task, r.resources.time) == (3, 4, 150)
    assert (r.smoke.tasks, r.smoke.steps) == (7, 9)
    assert r.tracking.tags == ["x", "y"]
    assert loaded.sources["resources.cpus_per_task"] == str(base)


def test_env_interpolation_keeps_types_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("AISTACK_TEST_TASKS", "12")
    monkeypatch.delenv("AISTACK_TEST_UNSET", raising=False)
    path = write_recipe(
        tmp_path / "r.yaml",
        "kind: smoke\nname: e\nsmoke:\n  tasks: ${env:AISTACK_TEST_TASKS}\noutput:\n  root: ${env:AISTACK_TEST_UNSET,/scratch}/runs\n",
    )
    r = load_recipe(path).recipe
    assert r.smoke.tasks == 12
    assert r.output.root == "/scratch/runs"


def test_run_directory_hash_ignores_placement_but_not_work(tmp_path):
    path = RECIPES / "examples" / "smoke.yaml"
    plain = load_recipe(path).identity_hash()
    assert load_recipe(path, ["resources.time=600", "resources.nodes=4"]).identity_hash() == plain
    assert load_recipe(path, ["smoke.steps=21"]).identity_hash() != plain


BAD = {
    "unknown key": ("kind: smoke\nname: a\nsmoke:\n  taskz: 3\n", [], "smoke.taskz", "unknown key"),
    "wrong type": ("kind: smoke\nname: a\nresources:\n  nodes: many\n", [], "resources.nodes", "integer"),
    "missing extends": ("extends: nowhere/base.yaml\nkind: smoke\nname: a\n", [], "extends", "file not found"),
    "bad override": ("kind: smoke\nname: a\n", ["resources.nodes"], "resources.nodes", "key.path=value"),
    "shell in name": ("kind: smoke\nname: ok\n", ["name=x; rm -rf ~"], "'name' = 'x; rm -rf ~'", "no spaces or shell"),
    "shell in partition": ("kind: smoke\nname: a\nresources:\n  partition: 'gpu$(reboot)'\n", [], "resources.partition", "Slurm name"),
    "unknown kind": ("kind: pretrian\nname: a\n", [], "kind", "one of"),
    "secret from env": ("kind: smoke\nname: a\noutput:\n  root: ${env:WANDB_API_KEY}\n", [], "output.root", "secret"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_is_one_paragraph_exit_2_and_nothing_written(case, tmp_path, capsys, monkeypatch):
    text, overrides, key, expected = BAD[case]
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path / "bad.yaml", text)
    with pytest.raises(RecipeError):
        load_recipe(path, overrides)
    code = main(["run", str(path), *overrides, "--on", "local"])
    err = capsys.readouterr().err
    assert code == 2
    message = " ".join(err.split())
    assert str(path) in message and key in message and expected in message, message
    assert len(err.strip().splitlines()) <= 4, "one short paragraph, not a traceback"
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "nothing is written for a bad recipe"


def test_yaml_syntax_error_names_line(tmp_path):
    path = write_recipe(tmp_path / "broken.yaml", "kind: smoke\nname: a\nresources:\n  nodes: [1\n")
    with pytest.raises(RecipeError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_recipe(path)


def test_yaml_tags_that_construct_python_objects_are_refused(tmp_path):
    path = write_recipe(tmp_path / "evil.yaml", "kind: smoke\nname: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
