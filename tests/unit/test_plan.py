"""Planners and executors without running anything: recipe -> jobs -> what Slurm would get."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.launch.launcher import executor_for
from aistack.launch.plan import JobSpec, Plan, make_plan
from aistack.launch.profile import ClusterProfile
from aistack.rundir import RunDir
from aistack.recipe import RecipeError, Resources, load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_smoke_plan_is_a_map_array_then_a_cpu_reduce(tmp_path):
    loaded = load_recipe(RECIPES / "examples" / "smoke.yaml", [f"output.root={tmp_path}", "smoke.tasks=7",
                                                               "resources.gpus_per_node=8", "resources.nodes=2"])
    plan = make_plan(loaded)
    assert [(j.name, j.num_tasks, j.depends_on) for j in plan.jobs] == [("map", 7, ()), ("reduce", 1, ("map",))]
    map_job, reduce_job = plan.jobs
    assert (map_job.resources.nodes, map_job.resources.gpus_per_node) == (2, 8)
    assert (reduce_job.resources.nodes, reduce_job.resources.gpus_per_node, reduce_job.resources.ntasks_per_node) == (1, 0, 1)


def test_filter_plan_has_one_shard_per_input_file_and_no_gpus(tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    for i in range(3):
        (crawl / f"part-{i}.warc.gz").write_bytes(b"")
    loaded = load_recipe(RECIPES / "data" / "fineweb.yaml", [f"output.root={tmp_path}", f"filter.input.paths=[{crawl}]",
                                                             "resources.gpus_per_node=8"])
    plan = make_plan(loaded)
    assert [(j.name, j.num_tasks) for j in plan.jobs] == [("filter", 3), ("stats", 1)]
    assert all(j.resources.gpus_per_node == 0 for j in plan.jobs)


def test_pretrain_layout_that_does_not_divide_names_the_key(tmp_path):
    with pytest.raises(RecipeError) as err:
        make_plan(load_recipe(RECIPES / "pretrain" / "llama3-8b-1024gpu.yaml", [f"output.root={tmp_path}", "parallel.tensor=3"]))
    assert "parallel.tensor" in str(err.value)
    plan = make_plan(load_recipe(RECIPES / "pretrain" / "llama3-8b-1024gpu.yaml", [f"output.root={tmp_path}"]))
    (train,) = plan.jobs
    assert (train.name, train.entry, train.num_tasks, train.resources.nodes, train.resources.gpus_per_node) == ("train", "pretrain", 1, 128, 8)


def test_jobs_must_come_after_what_they_depend_on(tmp_path):
    loaded = load_recipe(RECIPES / "examples" / "smoke.yaml", [f"output.root={tmp_path}"])
    res = Resources()
    with pytest.raises(ValueError, match="depends on"):
        Plan(loaded, [JobSpec("reduce", "smoke_reduce", 1, res, ("map",)), JobSpec("map", "smoke", 2, res)]).ordered()


def _dry_run(tmp_path, overrides, profile: ClusterProfile):
    loaded = load_recipe(RECIPES / "examples" / "smoke.yaml", [f"output.root={tmp_path}", *overrides])
    plan, run = make_plan(loaded), RunDir.for_recipe(loaded)
    return plan, run, executor_for(profile, dry_run=True)


def test_dry_run_splits_arrays_and_chains_afterok_only_on_pending_tasks(tmp_path):
    profile = ClusterProfile(name="t", max_array_size=4)
    plan, run, executor = _dry_run(tmp_path, ["smoke.tasks=10"], profile)
    items = executor.submit(plan, run, dry_run=True).submitted
    assert [(i.job, i.task_ids) for i in items] == [
        ("map", [0, 1, 2, 3]), ("map", [4, 5, 6, 7]), ("map", [8, 9]), ("reduce", [0])]
    assert "--dependency=afterok:<map-0>:<map-1>:<map-2>" in items[-1].sbatch.replace("'", "")
    assert "--array=0-3%" in items[0].sbatch
    assert not run.path.exists()  # a dry run writes nothing

    for task in range(9):  # all but one map task done: only it, and the reduce after it, remain
        run.mark_done("map", task, {"task": task})
    items = executor.submit(plan, run, dry_run=True, after=["77"]).submitted
    assert [(i.job, i.task_ids) for i in items] == [("map", [9]), ("reduce", [0])]
    assert "--dependency=afterok:77" in items[0].sbatch.replace("'", "")  # waits on the earlier stage


def test_the_local_profile_runs_here_and_dry_runs_render_sbatch():
    from aistack.launch.local.executor import LocalExecutor
    from aistack.launch.profile import LOCAL
    from aistack.launch.slurm.executor import SlurmExecutor

    assert isinstance(executor_for(LOCAL), LocalExecutor)
    assert isinstance(executor_for(LOCAL, dry_run=True), SlurmExecutor)
    assert isinstance(executor_for(ClusterProfile(name="x")), SlurmExecutor)


def test_array_parallelism_holds_for_the_whole_job_when_split():
    from aistack.launch.slurm.executor import array_lanes

    assert array_lanes(3, 64) == [(0, 22), (1, 21), (2, 21)]
    many = array_lanes(100, 4)  # 100 arrays, 4 at a time: 4 lanes of 25 chained arrays, %1 each
    assert {lane for lane, _ in many} == {0, 1, 2, 3} and all(p == 1 for _, p in many)
    for arrays, parallelism in ((1, 256), (7, 3), (10, 10), (2, 5)):
        lanes = dict(array_lanes(arrays, parallelism))
        assert sum(lanes.values()) == parallelism if arrays >= parallelism else sum(lanes.values()) <= parallelism


def test_arrays_of_one_lane_are_chained_afterany(tmp_path):
    plan, run, executor = _dry_run(tmp_path, ["smoke.tasks=10", "resources.array_parallelism=2"],
                                   ClusterProfile(name="t", max_array_size=3))
    maps = [i for i in executor.submit(plan, run, dry_run=True).submitted if i.job == "map"]
    deps = [next((line for line in i.sbatch.splitlines() if "--dependency" in line), "").replace("'", "") for i in maps]
    assert [i.task_ids for i in maps] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert deps == ["", "", "#SBATCH --dependency=afterany:<map-0>", "#SBATCH --dependency=afterany:<map-1>"]
    assert all("%1" in i.sbatch for i in maps)


def test_cpu_jobs_go_to_the_cpu_partition_without_gpu_options(tmp_path):
    from aistack.launch.profile import JobClass

    site = ClusterProfile(name="site", partition="batch", qos="normal", account="team",
                          sbatch_defaults={"exclusive": True, "constraint": "h100", "wckey": "x"})
    plan, run, executor = _dry_run(tmp_path, ["resources.gpus_per_node=8"], site)
    scripts = {i.job: i.sbatch for i in executor.submit(plan, run, dry_run=True).submitted}
    assert "--partition=batch" in scripts["map"] and "--exclusive" in scripts["map"] and "--constraint=h100" in scripts["map"]
    # no `cpu` class: the same partition, but no GPU-only options
    assert "--partition=batch" in scripts["reduce"] and "--exclusive" not in scripts["reduce"]
    assert "--constraint" not in scripts["reduce"] and "--wckey=x" in scripts["reduce"]
    site.cpu = JobClass(partition="cpu", sbatch_defaults={"mem-per-cpu": "2G"})
    scripts = {i.job: i.sbatch for i in executor_for(site, dry_run=True).submit(plan, run, dry_run=True).submitted}
    assert "--partition=cpu" in scripts["reduce"] and "--mem-per-cpu=2G" in scripts["reduce"]
    assert "--qos=normal" in scripts["reduce"] and "--account=team" in scripts["reduce"]  # inherited
    assert "--partition=batch" in scripts["map"]


def test_local_tasks_see_the_gpus_the_recipe_asks_for(monkeypatch):
    from aistack.launch.local.executor import local_gpu_count

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert local_gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpu_count() == 0


def test_one_process_tasks_run_as_the_batch_step_and_get_the_signal_there(tmp_path):
    plan, run, executor = _dry_run(tmp_path, ["smoke.tasks=4", "resources.tasks_per_node=2"], ClusterProfile(name="t"))
    scripts = {i.job: i.sbatch for i in executor.submit(plan, run, dry_run=True).submitted}
    # two ranks: an srun step launches them, and the time-limit signal goes to the step
    assert "\nsrun " in scripts["map"] and "--signal=USR1@" in scripts["map"] and "\nexec " not in scripts["map"]
    # one process: python replaces the batch shell, so the batch signal (B:) reaches it
    assert "\nsrun " not in scripts["reduce"] and "--signal=B:USR1@" in scripts["reduce"]
    command = scripts["reduce"].strip().splitlines()[-1]
    assert command.startswith("exec ") and command.endswith(" -u -m aistack.runtime.node " + str(run.log_dir("reduce")))


def test_max_array_size_is_read_from_slurm_conf_without_asking_the_controller(tmp_path, monkeypatch):
    from aistack.launch.slurm.executor import DEFAULT_MAX_ARRAY_SIZE, max_array_size

    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n# MaxArraySize=7\nmaxarraysize=50 MaxJobCount=10000\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert max_array_size(ClusterProfile(name="x")) == 50
    assert max_array_size(ClusterProfile(name="x", max_array_size=20)) == 20, "the profile's own value first"
    conf.write_text("ClusterName=x\n")
    assert max_array_size(ClusterProfile(name="x")) == DEFAULT_MAX_ARRAY_SIZE


def test_a_sigterm_before_python_watches_it_does_not_end_a_one_process_job(tmp_path):
    """A preemption's SIGTERM while the batch shell starts python (a loaded node, a slow file
    system) must not end the job: one that ends by itself within GraceTime is not requeued."""
    import signal
    import subprocess
    import sys
    import time

    plan, run, executor = _dry_run(tmp_path, ["smoke.tasks=1"], ClusterProfile(name="t"))
    script = next(i.sbatch for i in executor.submit(plan, run, dry_run=True).submitted if i.job == "map")
    exec_line = next(line for line in script.splitlines() if line.startswith("exec "))
    assert "aistack.runtime.node" in exec_line
    # The script as rendered up to its python; then a python slow to reach the node entry.
    slow_start = f"exec {sys.executable} -c 'import time; time.sleep(1.5); print(\"started\")'\n"
    proc = subprocess.Popen(["bash", "-c", script[: script.index(exec_line)] + slow_start], stdout=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out.strip()) == (0, "started")
