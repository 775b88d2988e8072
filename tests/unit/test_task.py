"""One task on the node (TaskRunner, outside Slurm): what it reads, what it writes, how often."""

from __future__ import annotations

import os
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from aistack import rundir as rundir_module
from aistack.rundir import RunDir
from aistack.runtime.task import TaskRunner
from aistack.recipe import load_recipe

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "smoke.yaml"
TASKS = 20  # more than 16: no W&B run per task, as in the large arrays this is about


def _planned(tmp_path, *overrides) -> RunDir:
    """A smoke run as planning leaves it: recipe.yaml written, the recipe kept on the RunDir."""
    loaded = load_recipe(SMOKE, [f"output.root={tmp_path}", f"smoke.tasks={TASKS}", "smoke.steps=3",
                                 "smoke.step_seconds=0", "tracking.mode=disabled", *overrides])
    run = RunDir.for_recipe(loaded)
    run.write_recipe(loaded)
    return run


def _runner(run: RunDir, task_id: int = 0) -> TaskRunner:
    # Through a pickle, as submitit hands it to the node.
    made = TaskRunner(str(run.path), "map", "smoke", task_id, TASKS, False, recipe=run.recipe)
    return pickle.loads(pickle.dumps(made))


def test_the_recipe_comes_in_the_pickle_not_from_recipe_yaml(tmp_path):
    run = _planned(tmp_path)
    runner = _runner(run)
    run.recipe_file.unlink()
    assert runner()["steps"] == 3
    assert run.is_done("map", 0)


def test_threads_the_set_up_starts_never_take_the_checkpoint_signal(tmp_path, monkeypatch):
    """W&B's threads start while the task sets up: they must inherit SIGUSR1 blocked, or one of
    them takes it and Python runs the quick save in the main thread mid-step (a model one step
    ahead saved under the step before). The job itself gets the signal unblocked."""
    import signal
    import threading

    masks: dict[str, set] = {}
    real = TaskRunner._make_context

    def make_context(self, run):
        def note():
            masks["thread"] = signal.pthread_sigmask(signal.SIG_BLOCK, [])

        helper = threading.Thread(target=note)
        helper.start()
        helper.join()
        return real(self, run)

    monkeypatch.setattr(TaskRunner, "_make_context", make_context)
    run = _planned(tmp_path)
    assert _runner(run)()["steps"] == 3
    assert signal.SIGUSR1 in masks["thread"], "a thread started during the set-up can take SIGUSR1"
    assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, []), "the main thread gets it back"


@pytest.mark.parametrize("wandb_per_task", [False, True], ids=["array-task", "small-job-tracking-off"])
def test_unpickling_and_running_a_task_imports_no_schema(tmp_path, wandb_per_task):
    run = _planned(tmp_path)  # tracking.mode=disabled
    blob = tmp_path / "runner.pkl"
    blob.write_bytes(pickle.dumps(TaskRunner(str(run.path), "map", "smoke", 1, TASKS, wandb_per_task, recipe=run.recipe)))
    code = ("import pickle, sys; r = pickle.load(open(sys.argv[1], 'rb')); r(); "
            "heavy = sorted(m for m in ('pydantic', 'yaml', 'wandb', 'aistack.recipe') if m in sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code, str(blob)], check=True, capture_output=True, timeout=60)
    assert run.is_done("map", 1)


def test_a_slurm_array_task_imports_only_what_it_needs(tmp_path):
    # A 1000-task array pays each import of the node entry 1000 times (bench_node_entry.py):
    # typing, tempfile, socket, dataclasses, subprocess and W&B's helpers cost a small task more
    # CPU than its work. Run as Slurm runs it: the node entry on a tasks file.
    from aistack.runtime.node import write_tasks_file

    run = _planned(tmp_path)
    tasks_file = tmp_path / "tasks.pkl"
    write_tasks_file(tasks_file, TaskRunner(str(run.path), "map", "smoke", -1, TASKS, False, recipe=run.recipe), [0, 1, 2], 3)
    code = ("import runpy, sys\n"
            "bare = set(sys.modules)\n"
            "sys.argv = ['node', sys.argv[1]]\n"
            "try:\n"
            "    runpy.run_module('aistack.runtime.node', run_name='__main__')\n"
            "except SystemExit as end:\n"
            "    assert not end.code, end.code\n"
            "print(' '.join(sorted(set(sys.modules) - bare)))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="7", SLURM_ARRAY_JOB_ID="6", SLURM_ARRAY_TASK_ID="2")
    done = subprocess.run([sys.executable, "-c", code, str(tasks_file)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = set(done.stdout.strip().splitlines()[-1].split())
    assert run.is_done("map", 2)
    avoidable = {"typing", "tempfile", "socket", "dataclasses", "subprocess", "netrc", "importlib.abc", "platform",
                 "submitit", "pydantic", "yaml", "wandb", "aistack.recipe", "aistack.plan_records"}
    assert imported & avoidable == set()


def test_a_task_writes_state_once_and_done_durably(tmp_path, monkeypatch):
    run = _planned(tmp_path)
    writes: list[tuple[str, bool]] = []
    real = rundir_module.atomic_write_text
    monkeypatch.setattr(rundir_module, "atomic_write_text",
                        lambda path, text, durable=True: (writes.append((path.name, durable)), real(path, text, durable))[1])
    _runner(run)()
    assert writes == [("state.json", False), ("DONE", True)]
    state = run.task_state("map", 0)
    assert state["state"] == "COMPLETED" and state["attempt"] == 0
    assert abs(state["ended_at"] - run.task_result("map", 0)["finished_at"]) < 1 and state["ended_at"] >= state["started_at"]


def test_done_is_fsynced_renamed_then_its_directory_fsynced(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(dst))), real_replace(src, dst))[1])
    run.mark_done("map", 0, {"total": 1})
    done = run.done_file("map", 0)
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert Path(events[0][1]).parent == done.parent and events[0][1] != str(done)  # the temp file
    assert events[1][1] == str(done) and events[2][1] == str(done.parent)


def test_a_done_marker_that_fails_to_write_leaves_nothing(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        run.mark_done("map", 0, {"total": 1})
    assert not run.is_done("map", 0)
    assert list(run.task_dir("map", 0).iterdir()) == []  # no temp file left behind


def test_a_failure_records_its_error_and_traceback(tmp_path):
    run = _planned(tmp_path, "smoke.fail_tasks=[0]", "smoke.fail_at_step=2")
    with pytest.raises(RuntimeError, match="injected failure"):
        _runner(run)()
    state = run.task_state("map", 0)
    assert state["state"] == "FAILED"
    assert state["error"] == "RuntimeError: injected failure in task 0 at step 2 (smoke.fail_tasks)"
    assert "jobs/smoke.py" in state["traceback"] and state["ended_at"] >= state["started_at"]
    assert not run.is_done("map", 0)


def test_a_rerun_resumes_from_the_checkpoint_as_the_next_attempt(tmp_path):
    failing = _planned(tmp_path, "smoke.fail_tasks=[0]", "smoke.fail_at_step=3", "smoke.checkpoint_every=1")
    with pytest.raises(RuntimeError):
        _runner(failing)()
    run = _planned(tmp_path)  # failure injection is not identity: the same run directory
    assert run.path == failing.path
    # Mark the checkpoint: a rerun that starts from it carries the mark to its result; one
    # that starts over (never reads it) does not.
    saved = run.task_dir("map", 0) / "checkpoint.json"
    state = json.loads(saved.read_text())
    assert state["step"] == 2
    saved.write_text(json.dumps({**state, "total": state["total"] + 1000}))
    result = _runner(run)()
    clean = _runner(_planned(tmp_path / "clean"))()
    assert result["total"] == clean["total"] + 1000, "resumed from the checkpoint, not from step 0"
    assert result["digest"] == clean["digest"]  # the hash chain: each step ran exactly once
    assert run.task_state("map", 0)["attempt"] == 1


def test_the_requeued_runner_carries_the_recipe_not_the_live_context(tmp_path):
    run = _planned(tmp_path)
    runner = _runner(run)
    runner._ctx = runner._make_context(run)  # as during a run, when the checkpoint signal comes
    again = pickle.loads(pickle.dumps(runner.checkpoint().function))
    assert again._ctx is None and again.recipe_data == runner.recipe_data
    run.recipe_file.unlink()
    assert again()["steps"] == 3


def test_a_runner_built_without_the_recipe_reads_recipe_yaml(tmp_path):
    run = _planned(tmp_path)
    runner = pickle.loads(pickle.dumps(TaskRunner(str(run.path), "map", "smoke", 0, TASKS, False)))
    assert runner()["steps"] == 3


def test_a_sigterm_while_the_task_sets_up_does_not_end_it(tmp_path):
    # Under Slurm, SIGTERM is a preemption's notice: a job that ends by itself within the
    # grace time is recorded as failed, not requeued. A task preempted while it sets up (its
    # W&B run starts, seconds) goes on like one preempted later.
    run = _planned(tmp_path)
    blob = tmp_path / "runner.pkl"
    blob.write_bytes(pickle.dumps(TaskRunner(str(run.path), "map", "smoke", 2, TASKS, False, recipe=run.recipe)))
    code = ("import os, pickle, signal, sys\n"
            "from aistack.runtime import task\n"
            "real = task.TaskRunner._make_context\n"
            "def set_up(self, run):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return real(self, run)\n"
            "task.TaskRunner._make_context = set_up\n"
            "pickle.load(open(sys.argv[1], 'rb'))()\n")
    env = {**os.environ, "SLURM_JOB_ID": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SIGTERM: preempted or cancelled" in done.stderr
    assert run.is_done("map", 2)


@pytest.mark.parametrize("under_slurm", [True, False])
def test_the_node_entry_catches_sigterm_before_it_imports_anything_of_aistack(under_slurm):
    # A preemption while the step starts (its imports) must not end the step: the handler
    # is set before the node imports aistack's modules; here that import is made to fail.
    code = ("import runpy, signal, sys\n"
            "sys.modules['aistack.rundir'] = None\n"
            "try:\n"
            "    runpy.run_module('aistack.runtime.node', run_name='__main__')\n"
            "except ImportError:\n"
            "    print(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**env, **({"SLURM_JOB_ID": "1"} if under_slurm else {})})
    assert done.stdout.strip() == str(under_slurm), done.stderr[-2000:]


def test_a_slurm_task_runs_as_many_openmp_threads_as_its_cpus_per_task_unless_told():
    from aistack.runtime.task import share_cpus

    env = {"SLURM_CPUS_PER_TASK": "3"}
    share_cpus(env)
    assert env["OMP_NUM_THREADS"] == "3"
    env = {"SLURM_CPUS_PER_TASK": "3", "OMP_NUM_THREADS": "8"}
    share_cpus(env)
    assert env["OMP_NUM_THREADS"] == "8", "the user's setting stays"
    env = {}
    share_cpus(env)
    assert env == {}, "outside Slurm the executor decides"


@pytest.mark.parametrize("told", [None, "3"])
def test_local_tasks_share_the_cores_between_the_processes_that_run_at_once(tmp_path, monkeypatch, told):
    from aistack.launch import launcher

    if told:
        monkeypatch.setenv("OMP_NUM_THREADS", told)
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = launcher.launch(SMOKE, [f"output.root={tmp_path}", "smoke.tasks=2", "smoke.steps=1", "smoke.step_seconds=0",
                                     "resources.array_parallelism=2", "tracking.mode=disabled"], on="local")
    threads = {result.run.task_result("map", t)["result"]["ran_in"]["omp_threads"] for t in (0, 1)}
    assert threads == {told or str(max(1, (os.cpu_count() or 1) // 2))}
