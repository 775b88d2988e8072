"""Pipelines: stage references, hashes that chain, plans at cluster scale, container rendering
(fast, no cluster), and on the real local Slurm cluster: the tiny end-to-end pipeline with
its dependencies, reruns and changes, and a failure that stops what depends on it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from aistack.cli import main
from aistack.data.sample_crawl import build_corpus
from aistack.launch.profile import load_profile
from aistack.launch.launcher import executor_for
from aistack.launch.submit import submit_stages
from aistack.plan_records import read_stage_records
from aistack.launch.status import stage_states
from aistack.launch.stages import resolve
from aistack.post.reverse_task import write_task
from aistack.recipe import RecipeError, load_recipe
from aistack.track.metrics import read_metrics
from conftest import IMAGE_PYTHON, REPO, RECIPES, describe_unfinished, wait_until, write_recipe

TINY = RECIPES / "pipelines" / "tiny-end-to-end.yaml"
BIG = RECIPES / "pipelines" / "fineweb-llama-8b-1024gpu.yaml"
DOWNSTREAM_OF_SFT = {"sft", "distill", "evaluate", "bench", "report"}
DOWNSTREAM_OF_BENCH = {"bench", "report"}


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-inputs")
    build_corpus(root / "crawl", shards=2, real=120, near_dups=8)
    prompts = write_task(root / "chat")["prompts"]
    # 40 held-out prompts for the distillation's teacher to answer (the demo's 200 take a minute)
    prompts.write_text("".join(prompts.read_text().splitlines(keepends=True)[:40]))
    return root


@pytest.fixture
def tiny_env(tiny_inputs, runs_root, monkeypatch) -> Path:
    monkeypatch.setenv("AISTACK_SAMPLE_CRAWL", str(tiny_inputs / "crawl"))
    monkeypatch.setenv("AISTACK_CHAT_DIR", str(tiny_inputs / "chat"))
    monkeypatch.setenv("AISTACK_RUNS", str(runs_root))
    return runs_root


def stage_dirs(overrides=()) -> dict[str, str]:
    pipeline = resolve(load_recipe(TINY, overrides))
    return {s.name: s.run.name for s in pipeline.stages}


# --- planning (no cluster) --------------------------------------------------------------


def test_stage_hashes_chain_through_references(tiny_env):
    before = stage_dirs()
    assert list(before) == ["filter", "dedup", "tokenize", "pretrain", "sft", "distill", "evaluate", "bench", "report"]
    assert stage_dirs() == before  # deterministic
    after = stage_dirs(["stages.sft.overrides.train.lr=1e-3"])
    changed = {name for name in before if before[name] != after[name]}
    assert changed == DOWNSTREAM_OF_SFT
    # placement-only changes (time limits) rerun nothing
    assert stage_dirs(["stages.pretrain.overrides.resources.time=90"]) == before


def test_references_resolve_to_upstream_outputs(tiny_env):
    pipeline = resolve(load_recipe(TINY))
    tok, pre, sft = (pipeline.stage(n) for n in ("tokenize", "pretrain", "sft"))
    assert pre.loaded.recipe.data.paths[0].path == str(tok.run.path / "output" / "tokenize" / "data")
    assert sft.loaded.recipe.checkpoint.load == str(pre.run.path / "jobs" / "train" / "tasks" / "00000" / "checkpoints")
    assert pipeline.stage("sft").needs == ("pretrain", "tokenize")
    # the evaluation and the FP8 quality delta measure the documents tokenize kept out of training
    heldout = str(tok.run.path / "output" / "tokenize" / "heldout.jsonl")
    assert tok.loaded.recipe.tokenize.heldout_fraction > 0
    assert pipeline.stage("evaluate").loaded.recipe.evaluate.data_tasks["heldout_ppl"].data == heldout
    assert pipeline.stage("bench").loaded.recipe.bench.quality.text == heldout
    assert pipeline.stage("evaluate").loaded.recipe.evaluate.tasks == ["heldout_ppl", "reverse_words"]
    # the pretrained model's untrained baseline; the benchmark measures the SFT model on the evaluation's chat task
    evaluate, bench = pipeline.stage("evaluate").loaded.recipe.evaluate, pipeline.stage("bench").loaded.recipe.bench
    assert evaluate.untrained == [sft.loaded.recipe.checkpoint.load]
    assert bench.model == str(sft.run.path / "jobs" / "train" / "tasks" / "00000" / "checkpoints")
    assert bench.quality.task == "reverse_words" and bench.quality.data_tasks["reverse_words"] == evaluate.data_tasks["reverse_words"]
    assert pipeline.stage("report").needs[-1] == "bench"
    # dedup reads as many shards as the filter stage writes (its array size)
    assert pipeline.stage("dedup").plan.job("signatures").num_tasks == pipeline.stage("filter").plan.job("filter").num_tasks
    assert all(s.run.path.parent == pipeline.dir.path for s in pipeline.stages)
    # a stage that reads upstream outputs is validated again on the node, from recipe.yaml
    # (the checkpoints root becomes the latest step there); the first stage is not
    assert not pipeline.stage("filter").loaded.deferred
    assert pipeline.stage("evaluate").loaded.deferred and pipeline.stage("bench").loaded.deferred
    from aistack.rundir import RunDir

    node_copy = RunDir(pipeline.dir.path / "x")
    node_copy.write_recipe(pipeline.stage("evaluate").loaded)
    assert node_copy.recipe is None  # so its tasks carry no planned recipe object


def test_bad_references_are_errors_naming_the_key(tiny_env, tmp_path):
    forward = write_recipe(tmp_path / "forward.yaml", f"""
kind: pipeline
name: forward
stages:
  a:
    recipe: {RECIPES}/examples/smoke.yaml
    overrides: {{description: "${{stages.b.run}}"}}
  b:
    recipe: {RECIPES}/examples/smoke.yaml
""")
    with pytest.raises(RecipeError) as err:
        resolve(load_recipe(forward))
    assert "stages.a.overrides" in str(err.value) and "listed before a" in str(err.value)

    missing = write_recipe(tmp_path / "missing.yaml", "kind: pipeline\nname: m\nstages:\n  a: {recipe: nope.yaml}\n")
    with pytest.raises(RecipeError) as err:
        resolve(load_recipe(missing))
    assert "stages.a.recipe" in str(err.value) and "nope.yaml" in str(err.value)

    assert main(["plan", str(RECIPES / "examples" / "smoke.yaml"), "description=${stages.x.output}"]) == 2

    with pytest.raises(RecipeError) as err:  # a bad value in a stage names the stage, the key and the value
        resolve(load_recipe(TINY, ["stages.sft.overrides.train.lr=-1"]))
    assert "stage sft of" in str(err.value) and "'train.lr' = -1" in str(err.value)


def test_cluster_scale_pipeline_plan(capsys):
    assert main(["plan", str(BIG), "--on", "example-h100"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours: at most" in out
    assert "128 x 8" in out  # the pretraining job: 128 nodes x 8 GPUs
    assert "input not found on this machine (plan only)" in out
    assert "--dependency='afterok:" in out
    pipeline = resolve(load_recipe(BIG), allow_missing=True)
    outcomes = {o.stage: o for o in submit_stages(pipeline, executor_for(load_profile("example-h100"), dry_run=True), dry_run=True)}
    filter_arrays = [len(s.task_ids) for s in outcomes["filter"].submitted if s.job == "filter"]
    assert filter_arrays == [1001] * 7 + [993]  # split at MaxArraySize
    signatures = next(s for s in outcomes["dedup"].submitted if s.job == "signatures")
    assert f"--dependency=afterok:{outcomes['filter'].submitted[0].job_id}" in signatures.sbatch.replace("'", "")
    # a real run of the same recipe refuses the missing crawl before submitting anything
    assert main(["run", str(BIG), "--on", "example-h100"]) == 2


@pytest.mark.parametrize("profile, expected", [
    ("cluster-pyxis.yaml", ["--container-image=nvcr.io/example/aistack:1.0", "--container-mounts=/lustre:/lustre", "--gpus-per-node=8"]),
    ("cluster-apptainer.yaml", ["apptainer exec --nv", "--bind /lustre:/lustre", "/images/aistack.sif", "--gpus-per-node=8"]),
])
def test_container_commands_in_a_pipeline_dry_run(profile, expected, tmp_path, capsys):
    image = "nvcr.io/example/aistack:1.0" if "pyxis" in profile else "/images/aistack.sif"
    recipe = write_recipe(tmp_path / "p.yaml", f"""
kind: pipeline
name: containers
output: {{root: {tmp_path}/runs}}
resources: {{container: {{image: "{image}"}}}}   # one image for every stage
stages:
  smoke:
    recipe: {RECIPES}/examples/smoke.yaml
    overrides:
      resources: {{gpus_per_node: 8}}
""")
    assert main(["run", str(recipe), "--on", str(REPO / "tests" / "data" / profile), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for flag in expected:
        assert flag in out, flag
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


# --- on the local Slurm cluster -----------------------------------------------------------


def task_times(run) -> tuple[float, float]:
    """(first start, last end) over every task of a stage's run."""
    # jobs/<job>/tasks/<id>/state.json; the end of a finished task is read from its DONE marker
    records = [run.task_state(p.parts[-4], int(p.parts[-2])) for p in run.path.glob("jobs/*/tasks/*/state.json")]
    return min(r["started_at"] for r in records), max(r["ended_at"] for r in records)


def done_markers(run) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in run.path.glob("jobs/*/tasks/*/DONE")}


# The cluster in miniature: GPU-kind stages ask for a (fake) GPU and go to `gpu`, the data
# stages and the report to `cpu`; every job runs under QOS `limited` (MaxSubmitJobsPerUser=60)
# and in the container image (slurm/clusters/local-oci.yaml).
GPU_STAGES = ("pretrain", "sft", "distill", "evaluate", "bench")
ON_GPUS = [f"stages.{name}.overrides.resources.gpus_per_node=1" for name in GPU_STAGES]


def limited_profile(tmp_path: Path, base: str = "local") -> Path:
    """slurm/clusters/<base>.yaml with every job (GPU and CPU) under QOS `limited`."""
    text = (REPO / "slurm" / "clusters" / f"{base}.yaml").read_text()
    text = re.sub(r"(?m)^qos: null.*$", "qos: limited", text).replace(f"name: {base}\n", f"name: {base}-limited\n")
    profile = tmp_path / f"{base}-limited.yaml"
    profile.write_text(text + "  qos: limited\n")  # the `cpu:` block is the file's last
    return profile


def stage_jobs(run) -> dict[str, tuple[str, str]]:
    """{Slurm job id: (partition, QOS)} of a stage's jobs, from accounting."""
    ids = sorted({r["job_id"] for r in run.submissions()})
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,Partition,QOS", "-j", ",".join(ids)],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {jid: (partition, qos) for jid, partition, qos in rows if jid in ids}


@pytest.mark.slurm
@pytest.mark.timeout(1500)  # a pipeline run on Slurm, a rerun of two stages, SFT once more here: ~10 min on 2 cores
@pytest.mark.usefixtures("slurm_cluster")
def test_tiny_pipeline_on_slurm_reruns_and_changes(tiny_env, tiny_inputs, bundle, tmp_path, monkeypatch):
    from aistack.cli import _follow_pipeline
    from test_preemption import preempt, sacct_states

    # Every job step in the image, through Slurm's own OCI support (profile local-oci): the
    # run directory is mounted by aistack, the inputs and the recipes' blocklist by the recipe.
    mounts = [f"{folder}:{folder}:ro" for folder in (tiny_inputs, RECIPES)]
    in_image = [f"resources.container.image={bundle}", f"resources.container.mounts={mounts}"]
    # What is tested here is the orchestration, not the models: less work than the demo where a
    # stage's size does not change what it submits (the student trains 60 steps, not 150; 2
    # MinHash bands, not 14; the chat task on 10 words; no untrained baseline; one batch size)
    overrides = [*ON_GPUS, *in_image, "stages.distill.overrides.train.steps=60",
                 "stages.dedup.overrides.dedup.minhash.num_buckets=2", "stages.evaluate.overrides.evaluate.untrained=[]",
                 "stages.evaluate.overrides.evaluate.data_tasks.reverse_words.max_docs=10",
                 "stages.bench.overrides.bench.batch_sizes=[1]"]
    profile_path = limited_profile(tmp_path, "local-oci")
    assert main(["run", str(TINY), *overrides, "--on", str(profile_path)]) == 0
    pipeline = resolve(load_recipe(TINY, overrides))
    # one preemption in the middle: an `urgent` job takes the node SFT trains on as soon as
    # SFT logged its first step (its run is 300 short steps; Slurm decides in ~10 s)
    sft = pipeline.stage("sft").run
    sft_metrics = sft.task_dir("train", 0) / "metrics.jsonl"
    sft_job = sft.submissions()[0]["job_id"]

    def training() -> bool:
        return sft_metrics.exists() and any("loss" in r for r in read_metrics(sft_metrics))

    wait_until(training, timeout=900, interval=0.5, what="SFT's first step")
    preempt(sft_job)
    states = _follow_pipeline(pipeline.dir, poll_s=3)
    assert {s.name: s.state for s in states} == {s.name: "COMPLETED" for s in pipeline.stages}, describe_unfinished(states)
    assert "PREEMPTED" in sacct_states(sft_job)
    steps = [r["step"] for r in read_metrics(sft_metrics) if "loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 300  # every step once, after the requeue
    for stage in pipeline.stages:  # a job that asks for GPUs to `gpu`, any other (a gather, a report) to `cpu`
        wants = {job.name: "gpu" if job.resources.gpus_per_node else "cpu" for job in stage.plan.jobs}
        placed = stage_jobs(stage.run)
        for record in stage.run.submissions():
            assert placed[record["job_id"]] == (wants[record["job"]], "limited"), (stage.name, record["job"])
        for state in stage.run.path.glob("jobs/*/tasks/*/state.json"):  # each task ran on the image's python
            assert json.loads(state.read_text())["python"] == IMAGE_PYTHON, (stage.name, str(state))
        assert stage.name not in GPU_STAGES or "gpu" in wants.values(), stage.name
    # no stage started before every stage it reads had finished
    for stage in pipeline.stages:
        start, _ = task_times(stage.run)
        for need in stage.needs:
            assert start >= task_times(pipeline.stage(need).run)[1], (stage.name, need)
    report = (pipeline.dir.path / "report.md").read_text()
    for heading in ("## Data: filter", "## Training: loss curves", "## Evaluation: evaluate", "## FP8 inference benchmark"):
        assert heading in report
    assert (pipeline.dir.path / "report.html").exists() and (pipeline.dir.path / "loss.png").exists()
    assert_lineage(pipeline)

    # an unchanged rerun submits nothing
    profile = load_profile(str(profile_path))
    outcomes = submit_stages(resolve(load_recipe(TINY, overrides)), executor_for(profile))
    assert [o.stage for o in outcomes if o.submitted or o.in_flight] == []

    # a changed benchmark reruns it and what reads it (the report), nothing before: on Slurm,
    # after the stages it reads finished (which stages a change reaches is planned alike for
    # every stage: test_stage_hashes_chain_through_references follows an SFT change)
    before = {s.name: done_markers(s.run) for s in pipeline.stages}
    changed = resolve(load_recipe(TINY, [*overrides, "stages.bench.overrides.bench.repeats=3"]))
    outcomes = submit_stages(changed, executor_for(profile))
    assert {o.stage for o in outcomes if o.submitted} == DOWNSTREAM_OF_BENCH

    final = _follow_pipeline(changed.dir, poll_s=3)
    assert all(s.state == "COMPLETED" for s in final), describe_unfinished(final)
    for stage in pipeline.stages:
        if stage.name not in DOWNSTREAM_OF_BENCH:
            assert done_markers(stage.run) == before[stage.name], stage.name
    assert changed.stage("bench").loaded.recipe.bench.repeats == 3
    rows = json.loads((changed.stage("bench").run.path / "results.json").read_text())["rows"]
    assert rows and {r["repeats"] for r in rows} == {3}, "the rerun measured with the changed recipe"

    # The preempted stage again, undisturbed, here without Slurm or the image, from the same
    # pretrained checkpoint and tokenizer (its recipe.yaml names them): the same loss trace step
    # by step. The stages after it read its checkpoint; the other stages ran once each (their
    # kill-and-rerun exactness is test_chaos's).
    from aistack.launch import launcher

    sft_stage = pipeline.stage("sft")
    alone = launcher.launch(sft_stage.run.path / "recipe.yaml", [
        f"output.root={tmp_path / 'undisturbed'}", "resources.container=null", "resources.gpus_per_node=0",
        "tracking.mode=disabled"], on="local")
    assert alone.run.path != sft_stage.run.path and alone.run.task_state("train", 0)["state"] == "COMPLETED"
    assert figures(sft_stage) == figures(alone.pipeline.stages[0]) and len(figures(sft_stage)) > 300


FAILING = """
kind: pipeline
name: failing
output: {{root: {root}}}
tracking: {{mode: disabled}}
stages:
  first:
    recipe: {smoke}
    overrides: {{smoke: {{tasks: 2, steps: 2, step_seconds: 0}}}}
  second:
    recipe: {smoke}
    after: [first]
    overrides: {{smoke: {{tasks: 2, steps: 4, step_seconds: 0, fail_tasks: {fail}, fail_at_step: 2}}}}
  third:
    recipe: {smoke}
    after: [second]
    overrides: {{smoke: {{tasks: 1, steps: 2, step_seconds: 0}}}}
"""


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_failed_stage_stops_its_dependents_and_a_rerun_completes(runs_root, tmp_path):
    smoke = RECIPES / "examples" / "smoke.yaml"
    recipe = write_recipe(tmp_path / "failing.yaml", FAILING.format(root=runs_root, smoke=smoke, fail="[1]"))
    assert main(["run", str(recipe), "--on", "slurm", "--wait"]) == 1
    pipeline = resolve(load_recipe(recipe))
    states = {s.name: s for s in stage_states(read_stage_records(pipeline.dir))}
    assert states["first"].state == "COMPLETED"
    assert states["second"].state == "FAILED" and states["second"].done < states["second"].total
    assert states["third"].done == 0 and states["third"].state in ("CANCELLED", "PENDING")
    if states["third"].state == "PENDING":  # never runnable: its dependency can no longer be satisfied
        main(["cancel", str(pipeline.dir.path)])
    first_done = done_markers(pipeline.stage("first").run)

    # the fix (failure injection is not part of a run's identity): same stage runs, resumed
    fixed = write_recipe(tmp_path / "fixed.yaml", FAILING.format(root=runs_root, smoke=smoke, fail="[]"))
    assert [s.run.name for s in resolve(load_recipe(fixed)).stages] == [s.run.name for s in pipeline.stages]
    assert main(["run", str(fixed), "--on", "slurm", "--wait"]) == 0
    states = {s.name: s for s in stage_states(read_stage_records(pipeline.dir))}
    assert all(s.state == "COMPLETED" for s in states.values())
    assert done_markers(pipeline.stage("first").run) == first_done  # finished work untouched
    assert pipeline.stage("third").run.task_result("reduce", 0) is not None


def test_failed_stage_stops_its_dependents_on_the_local_executor(runs_root, tmp_path, capsys):
    smoke = RECIPES / "examples" / "smoke.yaml"
    recipe = write_recipe(tmp_path / "failing.yaml", FAILING.format(root=runs_root, smoke=smoke, fail="[1]"))
    assert main(["run", str(recipe), "--on", "local"]) == 1
    assert "stage third:[/]" not in capsys.readouterr().err  # rich markup rendered, not printed
    pipeline = resolve(load_recipe(recipe))
    first, second, third = (pipeline.stage(n).run for n in ("first", "second", "third"))
    assert first.is_done("reduce", 0) and second.is_done("map", 0) and not second.is_done("map", 1)
    assert not third.path.exists()  # never started
    first_done = done_markers(first)
    fixed = write_recipe(tmp_path / "fixed.yaml", FAILING.format(root=runs_root, smoke=smoke, fail="[]"))
    assert main(["run", str(fixed), "--on", "local"]) == 0
    assert third.is_done("reduce", 0) and done_markers(first) == first_done
    assert (pipeline.dir.path / "report.md").exists()


WAVED = """
kind: pipeline
name: waved
output: {{root: {root}}}
tracking: {{mode: disabled}}
stages:
  wide:
    recipe: {smoke}
    overrides: {{smoke: {{tasks: 100, steps: 1, step_seconds: 0}}, resources: {{qos: limited}}}}
  after:
    recipe: {smoke}
    after: [wide]
    overrides: {{smoke: {{tasks: 2, steps: 1, step_seconds: 0}}}}
"""


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_stage_after_a_waved_stage_waits_for_its_last_wave(runs_root, tmp_path):
    # QOS `limited` (MaxSubmitJobsPerUser=60): `wide` goes in waves, its follow-ups submit
    # the rest and then `after`, which must start only once every task of `wide` is done.
    smoke = RECIPES / "examples" / "smoke.yaml"
    recipe = write_recipe(tmp_path / "waved.yaml", WAVED.format(root=runs_root, smoke=smoke))
    assert main(["run", str(recipe), "--on", "slurm", "--wait"]) == 0
    pipeline = resolve(load_recipe(recipe))
    states = stage_states(read_stage_records(pipeline.dir))
    assert all(s.state == "COMPLETED" for s in states), describe_unfinished(states)
    wide, after = pipeline.stage("wide").run, pipeline.stage("after").run
    waves = [r for r in wide.submissions() if r["job"] == "map"]
    assert len(waves) >= 2 and sorted(t for w in waves for t in w["task_ids"]) == list(range(100))
    assert task_times(after)[0] >= task_times(wide)[1]  # started after the last task of the last wave


def assert_lineage(pipeline) -> None:
    """W&B lineage, from the offline run files: dataset -> model -> eval results. Each training
    stage logs its model; the stages that start from it, distil from it or evaluate it use it."""
    from aistack.track.wandb_run import offline_runs, read_offline_run

    def artifacts(stage: str) -> set[tuple[str, str, bool]]:
        run = pipeline.stage(stage).run
        return {(a["type"], a["name"], a["used"]) for p in offline_runs(run.path) for a in read_offline_run(p)["artifacts"]}

    name = {s.name: s.run.name for s in pipeline.stages}
    assert ("dataset", name["tokenize"], True) in artifacts("pretrain")
    for trained in ("pretrain", "sft", "distill"):
        assert ("model", name[trained], False) in artifacts(trained), trained
    assert ("model", name["pretrain"], True) in artifacts("sft")  # checkpoint.load
    assert ("model", name["sft"], True) in artifacts("distill")  # the teacher
    evaluated = artifacts("evaluate")
    assert {("model", name[s], True) for s in ("pretrain", "sft", "distill")} <= evaluated
    assert ("eval-results", name["evaluate"], False) in evaluated


def figures(stage) -> object:
    """What a stage's part of the report says that does not depend on time or place; never
    empty (a missing results file fails here, not as an equal pair of empty figures)."""
    from aistack.data.stats_report import load_report
    from aistack.rundir import read_json

    run = stage.run
    if stage.kind in ("filter", "dedup", "tokenize"):
        jobs = load_report(run)["table"]["jobs"]
        found = [(j["job"], s["name"], s["documents_in"], s["documents_out"], s["dropped_by"]) for j in jobs for s in j["steps"]]
    elif stage.kind in ("pretrain", "sft", "distill"):
        found = [{k: v for k, v in r.items() if k in ("step", "loss", "val_loss")}
                 for r in read_metrics(run.task_dir("train", 0) / "metrics.jsonl") if "loss" in r or "val_loss" in r]
    elif stage.kind == "evaluate":
        rows = read_json(run.path / "results.json")["rows"]
        found = sorted((r["run"].rsplit("-", 1)[0], r["step"], r["task"], r["metric"], r["value"]) for r in rows)
    else:
        quality = read_json(run.path / "results.json")["quality"]
        found = {k: v for k, v in quality.items() if k != "text"}  # bench: the quality deltas (not timings)
    assert found, f"stage {stage.name}: no figures in {run.path}"
    return found
