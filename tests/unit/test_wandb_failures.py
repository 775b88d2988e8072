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
