"""A rehearsal submits what the real run would, each task a stand-in; its rendezvous meets
every rank or says which did not come. (The rehearsal on the local cluster: test_slurm_launch.)"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from aistack.launch.launcher import start
from aistack.launch.profile import ClusterProfile
from aistack.recipe import load_recipe
from aistack.runtime.rendezvous import RendezvousFailed, gather, master_port

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "examples" / "smoke.yaml"
PIPELINE = REPO / "recipes" / "pipelines" / "fineweb-llama-8b-1024gpu.yaml"


def _scripts(result) -> dict[str, list[str]]:
    scripts: dict[str, list[str]] = {}
    for outcome in result.outcomes:
        for item in outcome.submitted:
            scripts.setdefault(f"{outcome.stage}/{item.job}", []).append(item.sbatch)
    return scripts


def _without_paths(script: str, *roots: Path) -> str:
    for root in roots:
        script = script.replace(str(root), "<run>")
    return re.sub(r"--ntasks=\d+ --ntasks-per-node=1 ", "", script)


def test_a_rehearsal_submits_the_real_jobs_one_rank_per_node_in_its_own_run_directory(tmp_path):
    profile = ClusterProfile(name="t", max_array_size=4)
    overrides = [f"output.root={tmp_path}", "smoke.tasks=10", "resources.nodes=3", "resources.tasks_per_node=8",
                 "resources.gpus_per_node=8"]
    real = start(load_recipe(SMOKE, overrides), profile, dry_run=True)
    rehearsal = start(load_recipe(SMOKE, overrides), profile, dry_run=True, rehearse=True)
    real_run, rehearsal_run = real.pipeline.top.path, rehearsal.pipeline.top.path
    assert rehearsal_run == tmp_path / "rehearsals" / real_run.name
    want, got = _scripts(real), _scripts(rehearsal)
    assert [len(v) for v in got.values()] == [3, 1], "the same split arrays (10 tasks past MaxArraySize 4) and jobs"
    map_script = got[f"{real.pipeline.stages[0].name}/map"][0]
    assert "#SBATCH --nodes=3" in map_script and "#SBATCH --ntasks-per-node=8" in map_script
    assert "srun --unbuffered" in map_script and "--ntasks=3 --ntasks-per-node=1" in map_script
    for job, scripts in want.items():  # otherwise the very same scripts, paths aside
        assert [_without_paths(s, rehearsal_run) for s in got[job]] == [_without_paths(s, real_run) for s in scripts]
    assert not real_run.exists() and not rehearsal_run.exists(), "a dry run writes nothing"


def test_the_1024_gpu_pipeline_rehearses_every_stage_in_rehearsal_directories(tmp_path):
    loaded = load_recipe(PIPELINE, [f"output.root={tmp_path}"])
    real = start(loaded, ClusterProfile(name="t", max_array_size=1001), dry_run=True)
    rehearsal = start(load_recipe(PIPELINE, [f"output.root={tmp_path}"]), ClusterProfile(name="t", max_array_size=1001),
                      dry_run=True, rehearse=True)
    assert [s.name for s in rehearsal.pipeline.stages] == [s.name for s in real.pipeline.stages]
    for stage, real_stage in zip(rehearsal.pipeline.stages, real.pipeline.stages):
        assert stage.run.path == tmp_path / "rehearsals" / real_stage.run.path.relative_to(tmp_path)
        assert {job.entry for job in stage.plan.jobs} == {"rehearse"}
        assert [(j.name, j.num_tasks, j.resources) for j in stage.plan.jobs] == \
               [(j.name, j.num_tasks, j.resources) for j in real_stage.plan.jobs]
        assert stage.loaded.recipe.tracking.mode == "disabled", "no W&B runs for stand-ins"
    assert {len(v) for v in _scripts(rehearsal).values()} == {len(v) for v in _scripts(real).values()}


def _meet(world: int, ports: dict[int, int], timeout_s: float) -> dict[int, object]:
    results: dict[int, object] = {}

    def rank(r: int) -> None:
        try:
            results[r] = gather({"host": f"node{r}"}, r, world, "127.0.0.1", ports.get(r, ports[0]), timeout_s)
        except RendezvousFailed as err:
            results[r] = err

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_every_rank_gets_the_whole_table_in_rank_order():
    port = master_port("4242_1")
    results = _meet(4, {0: port}, timeout_s=20)
    tables = [results[r] for r in range(4)]
    assert all(t == tables[0] for t in tables)
    assert [row["host"] for row in tables[0]] == ["node0", "node1", "node2", "node3"]
    assert [row.get("rank", 0) for row in tables[0]] == [0, 1, 2, 3]


def test_a_rank_that_looks_elsewhere_fails_the_rendezvous_naming_who_came():
    port = master_port("4242_2")
    results = _meet(3, {0: port, 2: port + 1}, timeout_s=2)
    assert isinstance(results[0], RendezvousFailed) and "2 of 3 ranks came (ranks [0, 1])" in str(results[0])
    assert isinstance(results[2], RendezvousFailed) and f"rank 2 could not meet rank 0 at 127.0.0.1:{port + 1}" in str(results[2])
    with pytest.raises(RendezvousFailed):
        raise results[1]  # rank 1 met rank 0, which gave up before the table was whole


def test_a_stand_in_opens_no_wandb_run_so_the_node_never_validates_a_recipe_whose_inputs_a_rehearsal_never_writes(tmp_path):
    """A one-task job of a stage reading `${stages.X.output}` (dedup's clusters) validated its
    recipe on the node to open W&B, and failed: the real upstream output does not exist."""
    from aistack.launch.executor import wandb_per_task

    profile = ClusterProfile(name="t", max_array_size=1001)
    real = start(load_recipe(PIPELINE, [f"output.root={tmp_path}"]), profile, dry_run=True)
    rehearsal = start(load_recipe(PIPELINE, [f"output.root={tmp_path}"]), profile, dry_run=True, rehearse=True)
    clusters = lambda result: result.pipeline.stage("dedup").plan.job("clusters")  # noqa: E731
    assert wandb_per_task(clusters(real)) and not wandb_per_task(clusters(rehearsal))
