"""Pipeline variants (`variants:` in a pipeline recipe): each variant runs from the first
stage it changes; the stages before it are one run, shared, run once; the report compares
the variants. Planned against the tiny end-to-end pipeline, run with smoke stages here and
on the local Slurm cluster."""

from __future__ import annotations

import pytest

from aistack.cli import main
from aistack.launch.stages import resolve
from aistack.recipe import load_recipe
from conftest import RECIPES, write_recipe

TINY = RECIPES / "pipelines" / "tiny-end-to-end.yaml"
SMOKE = RECIPES / "examples" / "smoke.yaml"

SWEEP = """
kind: pipeline
name: sweep
output: {{root: {root}}}
tracking: {{mode: disabled}}
stages:
  first:
    recipe: {smoke}
    overrides: {{smoke: {{tasks: 2, steps: 2, step_seconds: 0}}}}
  second:
    recipe: {smoke}
    after: [first]
    overrides: {{smoke: {{tasks: 1, steps: 2, step_seconds: 0}}}}
  third:
    recipe: {smoke}
    after: [second]
    overrides: {{smoke: {{tasks: 1, steps: 1, step_seconds: 0}}}}
variants:
  short: {{}}
  long:
    second: {{smoke.steps: 5}}
    third: {{smoke.steps: 3}}
"""


@pytest.fixture
def tiny_inputs(tmp_path, monkeypatch):
    """The tiny pipeline's inputs (a crawl, the chat task), small: these tests only plan it."""
    from aistack.data.sample_crawl import build_corpus
    from aistack.post.reverse_task import write_task

    build_corpus(tmp_path / "crawl", shards=2, real=20, near_dups=2)
    write_task(tmp_path / "chat")
    monkeypatch.setenv("AISTACK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("AISTACK_SAMPLE_CRAWL", str(tmp_path / "crawl"))
    monkeypatch.setenv("AISTACK_CHAT_DIR", str(tmp_path / "chat"))


@pytest.mark.usefixtures("tiny_inputs")
def test_variants_share_the_stages_before_the_first_they_change(tmp_path):
    plain = {s.name: s.run.name for s in resolve(load_recipe(TINY), allow_missing=True).stages}
    sweep = write_recipe(tmp_path / "sweep.yaml", f"""
extends: {TINY}
name: sweep
variants:
  as-written: {{}}
  faster-sft:
    sft: {{train.lr: 1.0e-3}}
""")
    pipeline = resolve(load_recipe(sweep), allow_missing=True)
    runs = {s.name: s.run.name for s in pipeline.stages}
    for shared in ("filter", "dedup", "tokenize", "pretrain"):  # before the first stage a variant changes
        assert runs[shared] == plain[shared], shared
    for name in ("sft", "distill", "evaluate", "bench"):
        assert runs[f"{name}.as-written"] == plain[name], "the variant without overrides is the pipeline as written"
        assert runs[f"{name}.faster-sft"] != plain[name]
    assert len(set(runs.values())) == len(runs), "no run directory twice"
    stage = pipeline.stage("distill.faster-sft")
    assert set(stage.needs) == {"sft.faster-sft", "tokenize"} and stage.variant == "faster-sft"
    assert pipeline.stage("sft.faster-sft").loaded.recipe.train.lr == 1.0e-3
    assert pipeline.stage("sft.faster-sft").loaded.recipe.checkpoint.load == pipeline.stage("sft.as-written").loaded.recipe.checkpoint.load


@pytest.mark.usefixtures("tiny_inputs")
def test_seeds_repeat_each_variant_from_the_first_seeded_stage(tmp_path):
    sweep = write_recipe(tmp_path / "sweep.yaml", f"""
extends: {TINY}
name: seeded
variants:
  as-written: {{}}
  no-bad-words:
    filter: {{filter.badwords.enabled: false}}
seeds:
  values: [1, 2]
  set: {{pretrain: train.seed}}
""")
    pipeline = resolve(load_recipe(sweep), allow_missing=True)
    names = [s.name for s in pipeline.stages]
    # the filter differs per variant, not per seed; from pretraining on, one run per variant and seed
    assert names[:6] == ["filter.as-written", "dedup.as-written", "tokenize.as-written",
                         "pretrain.as-written.s1", "sft.as-written.s1", "distill.as-written.s1"]
    assert {n for n in names if n.startswith("pretrain.")} == {f"pretrain.{v}.s{seed}" for v in ("as-written", "no-bad-words")
                                                                 for seed in (1, 2)}
    assert len({s.run.path for s in pipeline.stages}) == len(names) == 2 * 3 + 4 * 5 + 1
    first, second = pipeline.stage("pretrain.as-written.s1"), pipeline.stage("pretrain.as-written.s2")
    assert (first.loaded.recipe.train.seed, second.loaded.recipe.train.seed) == (1, 2)
    assert (first.variant, first.seed) == ("as-written", 1)
    assert pipeline.stage("sft.as-written.s2").needs == ("pretrain.as-written.s2", "tokenize.as-written")
    shared = pipeline.stage("tokenize.no-bad-words")
    assert (shared.variant, shared.seed) == ("no-bad-words", None), "a stage every seed shares has no seed"
    report = pipeline.stages[-1].loaded.recipe.report.stages
    assert {(r.name, r.variant, r.seed) for r in report if r.kind == "pretrain"} == {
        (f"pretrain.{v}.s{seed}", v, seed) for v in ("as-written", "no-bad-words") for seed in (1, 2)}


def test_a_variant_naming_no_stage_of_the_pipeline_exits_2_naming_it(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "sweep.yaml", SWEEP.format(root=tmp_path / "runs", smoke=SMOKE)
                          + "  typo:\n    secnod: {smoke.steps: 3}\n")
    assert main(["plan", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "variants" in err and "secnod" in err and "first, second, third" in err


@pytest.mark.parametrize("variant", ["{pretrain: {train.seed: 7}}", "{pretrain: {train: {seed: 7}}}", "{pretrain: {train: 7}}"])
def test_a_variant_setting_the_seeded_key_exits_2_naming_both(tmp_path, capsys, variant):
    recipe = write_recipe(tmp_path / "sweep.yaml", f"""
extends: {TINY}
name: seeded
variants:
  pinned: {variant}
seeds:
  values: [1, 2]
  set: {{pretrain: train.seed}}
""")
    assert main(["plan", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "variants.pinned.pretrain" in err and "seeds.set.pretrain" in err and "train.seed" in err, err


def _run_sweep(tmp_path, on: str) -> None:
    recipe = write_recipe(tmp_path / "sweep.yaml", SWEEP.format(root=tmp_path / "runs", smoke=SMOKE))
    assert main(["run", str(recipe), "--on", on, *(["--wait"] if on == "slurm" else [])]) == 0
    pipeline = resolve(load_recipe(recipe))
    assert [s.name for s in pipeline.stages] == ["first", "second.short", "third.short", "second.long", "third.long", "report"]
    first = pipeline.stage("first").run
    # the shared stage ran once: each task submitted once, done in its first attempt
    assert _submitted_tasks(first) == [("map", 0), ("map", 1), ("reduce", 0)]
    assert all(first.task_state("map", t).get("attempt", 0) == 0 for t in range(2))
    assert pipeline.stage("third.long").needs == ("second.long",), "a variant's stage waits for its own variant's"
    assert pipeline.stage("second.long").run.task_result("map", 0)["result"]["steps"] == 5
    assert pipeline.stage("second.short").run.task_result("map", 0)["result"]["steps"] == 2
    for name in ("third.short", "third.long"):
        assert pipeline.stage(name).run.is_done("reduce", 0), name
    # a rerun of the sweep submits nothing
    assert main(["run", str(recipe), "--on", on, *(["--wait"] if on == "slurm" else [])]) == 0
    assert _submitted_tasks(first) == [("map", 0), ("map", 1), ("reduce", 0)]


def _submitted_tasks(run) -> list[tuple[str, int]]:
    return sorted((r["job"], task) for r in run.submissions() for task in r["task_ids"])


def test_a_sweep_runs_each_variant_and_the_shared_stage_once_locally(tmp_path):
    _run_sweep(tmp_path, "local")


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_sweep_runs_each_variant_and_the_shared_stage_once_on_slurm(tmp_path):
    _run_sweep(tmp_path, "slurm")
