"""A W&B failure never fails the work: metrics.jsonl has everything, W&B is a mirror."""

from __future__ import annotations

from aistack.track.wandb_run import WandbRun


class BrokenRun:
    """What wandb's Run does once its service process has died (SIGTERM of a preempted job)."""

    id = "abc"

    def log(self, values, step=None):
        raise ConnectionResetError("Connection lost")

    def finish(self, exit_code=0):
        raise ConnectionResetError("Connection lost")


def test_logging_into_a_dead_service_gives_up_and_goes_on():
    run = WandbRun(lambda: BrokenRun())
    run.log(1, {"loss": 2.0})  # no exception
    assert run.error == "ConnectionResetError: Connection lost"
    run.log(2, {"loss": 1.0})
    run.summary({"finished": True})
    run.finish()


def test_a_failing_finish_or_start_is_not_a_failure():
    class FinishFails(BrokenRun):
        def log(self, values, step=None):
            pass

    run = WandbRun(lambda: FinishFails())
    run.log(1, {"loss": 2.0})
    run.finish()
    assert run.error is not None

    def cannot_start():
        raise OSError("wandb-core did not start")

    started = WandbRun(cannot_start)
    started.log(1, {"loss": 1.0})
    assert started.error == "OSError: wandb-core did not start"


def test_a_task_opens_its_own_wandb_service_not_one_named_by_its_submitter(tmp_path):
    # wandb puts its service's address in WANDB_SERVICE of the process that started it, and
    # sbatch exports the submitter's environment: a task would talk to a service on another
    # host (or one long gone) and log nothing. The task starts its own.
    import os
    import subprocess
    import sys

    script = (
        "from pathlib import Path\n"
        "from aistack.recipe.schema import Tracking\n"
        "from aistack.track.wandb_run import start, offline_runs, read_offline_run\n"
        "run = start(Tracking(mode='offline'), Path(r'%s'), 'r', 'smoke', 'map', 0, {})\n"
        "run.log(1, {'loss': 2.0}); run.finish()\n"
        "assert run.error is None, run.error\n"
        "import time\n"
        "deadline = time.time() + 60\n"  # wandb's service may write the file a moment after finish()
        "while not (record := read_offline_run(offline_runs(Path(r'%s'))[0]))['finished'] and time.time() < deadline:\n"
        "    time.sleep(0.2)\n"
        "assert [row['loss'] for row in record['history']] == [2.0], record\n"
    ) % (tmp_path, tmp_path)
    env = {**os.environ, "WANDB_SERVICE": f"3-1-unix-{tmp_path / 'gone.sock'}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
