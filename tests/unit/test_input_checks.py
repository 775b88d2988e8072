"""Bad input is refused at load time, naming the file, the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.launch.plan import make_plan
from aistack.launch.profile import load_profile
from aistack.recipe import RecipeError, load_recipe

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "smoke.yaml"


def test_a_key_given_twice_is_an_error_with_its_line(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("kind: smoke\nname: t\nsmoke: {tasks: 3}\nsmoke: {steps: 5}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert str(recipe) in str(err.value) and "line 4" in str(err.value) and "duplicate key 'smoke'" in str(err.value)
    profile = tmp_path / "site.yaml"
    profile.write_text("name: site\npartition: a\npartition: b\n")
    with pytest.raises(RecipeError, match="duplicate key 'partition'"):
        load_profile(str(profile))


@pytest.mark.parametrize("override", ["output.root=/tmp/r\nid>/tmp/x;#", "name=a\tb", "resources.partition=gpu\x1b[0m"])
def test_control_characters_never_reach_a_script(override, tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, [override])
    assert override.split("=")[0] in str(err.value)


def test_control_characters_from_the_environment_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AISTACK_RUNS", "/tmp/r\nrm -rf /")
    with pytest.raises(RecipeError, match="output.root"):
        load_recipe(SMOKE)
    monkeypatch.setenv("AISTACK_RUNS", str(tmp_path))
    assert load_recipe(SMOKE, ["description=line one\nline two"]).recipe.output.root == str(tmp_path)  # prose may


@pytest.mark.parametrize("text, key", [
    ("env: {'BAD-NAME': x}", "env"),
    ("env: {WANDB_API_KEY: abc}", "env"),
    ("env: {HF_HOME: \"/a\\nb\"}", "env"),
    ("sbatch_defaults: {'exclusive; rm': true}", "sbatch_defaults"),
    ("sbatch_defaults: {constraint: \"h100 && reboot\"}", "sbatch_defaults"),
])
def test_profile_env_and_sbatch_defaults_are_checked(text, key, tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text(f"name: site\n{text}\n")
    with pytest.raises(RecipeError) as err:
        load_profile(str(profile))
    assert str(profile) in str(err.value) and key in str(err.value)


def test_task_counts_have_a_bound_and_a_million_tasks_plan(tmp_path):
    with pytest.raises(RecipeError, match="at most 1,000,000 array tasks"):
        load_recipe(SMOKE, ["smoke.tasks=100000000"])
    plan = make_plan(load_recipe(SMOKE, [f"output.root={tmp_path}", "smoke.tasks=1000000"]))
    assert plan.jobs[0].num_tasks == 1_000_000


@pytest.mark.parametrize("data, what", [
    (b"name: site\npartition: caf\xe9\n", "a UTF-8 cluster profile"),
    (b"name: site\nsignal_delay_s: -5\n", "signal_delay_s"),
    (b"name: site\nmax_submit_jobs: 1\n", "max_submit_jobs"),
])
def test_a_bad_profile_is_a_named_error_not_a_traceback(data, what, tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_bytes(data)
    with pytest.raises(RecipeError) as err:
        load_profile(str(profile))
    assert str(profile) in str(err.value) and what in str(err.value)
