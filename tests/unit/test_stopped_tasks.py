"""What state.json and `aistack status` say of a task that did not end on its own: a failed
quick-save, a local task whose processes are gone, a cancel of a task on another host."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aistack.launch.local import processes as localproc
from aistack.plan_records import PlannedJob, StageRecord
from aistack.rundir import RunDir
from aistack.launch.status import cancel_run, run_status
from aistack.runtime.task import TaskContext, TaskRunner
from aistack.launch.status import finished, stage_states
from aistack.recipe import load_recipe

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "smoke.yaml"
SLEEPER = "import time; time.sleep(60)"


def _local_task(path: Path, state: str = "RUNNING", job_id: str = "4242", **recorded) -> RunDir:
    """map task 0 of a local run, submitted under controller `job_id`, recorded `state`."""
    run = RunDir(path)
    run.record_submission({"job": "map", "executor": "local", "job_id": job_id, "task_ids": [0], "array": False, "time": 0})
    run.set_task_state("map", 0, state, attempt=0, job_id=job_id)
    if recorded:  # as another process (host, pid) wrote it
        record = run._state_record("map", 0) | recorded
        (run.task_dir("map", 0) / "state.json").write_text(json.dumps(record))
    return run


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fake_job(log_dir: Path) -> subprocess.Popen:
    """A controller leading its own session (as the local executor starts one), its rank, and
    a helper the rank started (a W&B service, say) that ignores SIGINT and names no log
    folder: only the job's process group holds it. The controller and the rank have the
    command lines of a real job's: `... submitit.local._local <log folder>`, `...
    submitit.core._submit <log folder>`."""
    helper = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    rank = (f"import subprocess, sys, time; h = subprocess.Popen([sys.executable, '-c', {helper!r}]); "
            "print(h.pid, flush=True); time.sleep(60)")
    controller = (f"import subprocess, sys; rank = subprocess.Popen([sys.executable, '-c', {rank!r}, "
                  f"'{localproc.TASK}', sys.argv[2]], stderr=subprocess.DEVNULL); print(rank.pid, flush=True); rank.wait()")
    job = subprocess.Popen([sys.executable, "-c", controller, localproc.CONTROLLER, str(log_dir)],
                           start_new_session=True, stdout=subprocess.PIPE, text=True)
    job.rank_pid = int(job.stdout.readline())
    job.helper_pid = int(job.stdout.readline())
    return job


def _end(job: subprocess.Popen) -> None:
    try:
        os.killpg(job.pid, 9)
    except ProcessLookupError:
        pass
    job.wait()
    job.stdout.close()


# --- the quick-save on the preemption / time-limit signal ------------------------------


def test_a_failed_quick_save_is_recorded_and_shown_by_status(tmp_path, capsys):
    from aistack.cli import _print_status

    loaded = load_recipe(SMOKE, [f"output.root={tmp_path}", "smoke.tasks=1", "tracking.mode=disabled"])
    run = RunDir.for_recipe(loaded)
    run.write_recipe(loaded)
    runner = pickle.loads(pickle.dumps(TaskRunner(str(run.path), "map", "smoke", 0, 1, False, recipe=run.recipe)))
    runner._ctx = TaskContext(run, None, "smoke", "map", 0, 1, data=loaded.data)
    run.set_task_state("map", 0, "RUNNING", attempt=0)
    run.record_submission({"job": "map", "executor": "local", "job_id": "77", "task_ids": [0], "array": False, "time": 0})

    def full_disk():
        raise OSError(28, "No space left on device")

    runner._ctx.on_preempt(full_disk)
    before = time.time()
    runner.checkpoint()
    state = run.task_state("map", 0)
    assert state["state"] == "REQUEUED"
    assert state["quick_save_error"] == "OSError: [Errno 28] No space left on device"
    assert before <= state["quick_save_failed_at"] <= time.time()

    rows = run_status(run, [PlannedJob("map", 1)])
    assert "quick-save failed" in rows[0].note and "No space left on device" in rows[0].note
    _print_status(rows)
    out = capsys.readouterr().out
    assert "map task 0: quick-save failed" in out and "No space left on device" in out
    notes = stage_states([StageRecord("s", "smoke", run, (PlannedJob("map", 1),), ())])[0].notes  # and in a pipeline's status
    assert len(notes) == 1 and notes[0].startswith("map task 0: quick-save failed")

    # a later quick-save that works: the requeued task resumed from it, nothing to show
    runner._ctx._on_preempt = [lambda: None]
    runner.checkpoint()
    assert run.task_state("map", 0)["quick_saved_at"] >= state["quick_save_failed_at"]
    assert run_status(run, [PlannedJob("map", 1)])[0].note == ""


# --- a local task recorded RUNNING whose processes are gone -------------------------------


def test_status_shows_a_dead_local_task_interrupted_and_its_stage_so(tmp_path):
    here = localproc.this_host()
    dead = _local_task(tmp_path / "dead", job_id=str(_dead_pid()), host=here, pid=_dead_pid())
    rows = run_status(dead, [PlannedJob("map", 1)])
    assert rows[0].state == "INTERRUPTED"
    stage = stage_states([StageRecord("a", "smoke", dead, (PlannedJob("map", 1),), ())])[0]
    assert stage.state == "INTERRUPTED" and finished([stage]), "nothing more happens without a rerun"

    # recorded on another host: this host cannot tell, the record stands
    elsewhere = _local_task(tmp_path / "elsewhere", job_id=str(_dead_pid()), host="another-host.example", pid=_dead_pid())
    assert run_status(elsewhere, [PlannedJob("map", 1)])[0].state == "RUNNING"

    # a pid of this host that is not the task (reused): still gone
    reused = _local_task(tmp_path / "reused", job_id=str(os.getpid()), host=here, pid=os.getpid())
    assert run_status(reused, [PlannedJob("map", 1)])[0].state == "INTERRUPTED"


def test_status_keeps_a_live_local_task_running(tmp_path):
    run = RunDir(tmp_path / "live")
    job = _fake_job(run.log_dir("map"))
    try:
        _local_task(run.path, job_id=str(job.pid), host=localproc.this_host(), pid=job.rank_pid)
        assert run_status(run, [PlannedJob("map", 1)])[0].state == "RUNNING"
    finally:
        _end(job)


# --- aistack cancel ------------------------------------------------------------------


def test_cancel_refuses_a_local_task_recorded_on_another_host(tmp_path):
    run = RunDir(tmp_path / "run")
    job = _fake_job(run.log_dir("map"))  # a live process with that pid here: not the task
    try:
        _local_task(run.path, job_id=str(job.pid), host="another-host.example", pid=job.rank_pid)
        result = cancel_run(run)
        assert result.cancelled == []
        assert result.elsewhere == [f"map task 0 (pid {job.rank_pid} on host another-host.example)"]
        time.sleep(0.2)
        assert job.poll() is None and localproc.alive(job.rank_pid) and localproc.alive(job.helper_pid), \
            "a pid recorded on another host was signalled here"
        assert run.task_state("map", 0)["state"] == "RUNNING"
    finally:
        _end(job)


def test_cancel_ends_a_local_task_s_whole_process_group(tmp_path, capsys):
    from aistack.cli import main

    run = RunDir(tmp_path / "run")
    job = _fake_job(run.log_dir("map"))
    try:
        _local_task(run.path, job_id=str(job.pid), host=localproc.this_host(), pid=job.rank_pid)
        (run.path / "recipe.yaml").write_text("kind: smoke\n")
        assert main(["cancel", str(run.path)]) == 0
        assert f"cancelled: map task 0 (pid {job.pid})" in capsys.readouterr().out
        job.wait(timeout=10)
        assert not localproc.alive(job.rank_pid)
        assert not localproc.alive(job.helper_pid), "the job's process group was not ended"
        assert run.task_state("map", 0)["state"] == "CANCELLED"
        assert run_status(run, [PlannedJob("map", 1)])[0].state == "CANCELLED"
    finally:
        _end(job)


def test_cli_cancel_says_it_cannot_from_here(tmp_path, capsys):
    from aistack.cli import main

    run = _local_task(tmp_path / "run", job_id="4242", host="another-host.example", pid=4243)
    (run.path / "recipe.yaml").write_text("kind: smoke\n")
    assert main(["cancel", str(run.path)]) == 1
    err = capsys.readouterr().err
    assert "cannot cancel from here" in err and "another-host.example" in err


@pytest.mark.parametrize("error", ["KeyboardInterrupt: ", None])
def test_a_stopped_task_keeps_its_own_pid_and_host(tmp_path, error):
    run = _local_task(tmp_path / "run", host="node7", pid=1234)
    if error:
        run.set_task_state("map", 0, "FAILED", error=error, traceback="...")
        record = run._state_record("map", 0) | {"host": "node7", "pid": 1234}
        (run.task_dir("map", 0) / "state.json").write_text(json.dumps(record))
    run.set_stopped_state("map", 0, "INTERRUPTED", interrupted_by="SIGINT")
    state = run.task_state("map", 0)
    assert (state["state"], state["host"], state["pid"], state["interrupted_by"]) == ("INTERRUPTED", "node7", 1234, "SIGINT")
    assert "error" not in state and "traceback" not in state


def test_what_a_tasks_forked_is_ended_and_nothing_else(tmp_path):
    # A rank's child carries the rank's command line (submitit.core._submit <log folder>); a
    # process naming another job's folder, or only the controller module, is not touched.
    from aistack.launch.local.executor import end_strays

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", SLEEPER, *args])

    log_dir = tmp_path / "logs" / "map"
    stray = start(localproc.TASK, str(log_dir))
    other_job = start(localproc.TASK, str(tmp_path / "logs" / "reduce"))
    controller = start(localproc.CONTROLLER, str(log_dir))
    try:
        time.sleep(0.5)  # exec'd: /proc shows the new command line
        assert end_strays(log_dir) == [stray.pid]
        assert stray.wait(timeout=10) == -9
        assert other_job.poll() is None and controller.poll() is None
    finally:
        for p in (stray, other_job, controller):
            p.kill()
            p.wait()
