"""What a Slurm job runs on its nodes: `python -u -m aistack.runtime.node TASKS_FILE`, one
process per rank (srun starts the ranks of a multi-process job; the python of a
one-process job is the batch step itself).

The Slurm executor submits through submitit and writes one tasks file per array or job:
a TaskRunner and the task id of each array index. This module is submitit's node side
(submitit.core._submit) cut to what aistack uses, since importing submitit costs a small
task more CPU than its own work, paid by every task of a 1000-task array:
- the checkpoint signal (USR1, before the time limit or to requeue): rank 0 runs the
  job's quick saves, records REQUEUED and asks Slurm to requeue the job, at most
  `resources.max_requeues` times; the other ranks leave it to rank 0, as with submitit;
- SIGTERM (preemption, cancel): the task goes on until Slurm ends it (see task.py);
- the result is the task's DONE marker; there is no result pickle.
"""

from __future__ import annotations

import os
import signal
import time

# Before anything else is imported: a SIGTERM (preemption) while the step starts would end it
# "by itself" within the grace time, and Slurm then fails the job instead of requeuing it.
SIGTERM_AT: list[float] = []
if __name__ == "__main__" and "SLURM_JOB_ID" in os.environ:
    signal.signal(signal.SIGTERM, lambda signum, frame: SIGTERM_AT.append(time.time()))

import logging  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from aistack.rundir import RunDir, atomic_write_bytes  # noqa: E402
from aistack.runtime.task import TaskRunner, task_env, watch_sigterm  # noqa: E402

log = logging.getLogger("aistack")
CHECKPOINT_SIGNAL = signal.SIGUSR1


def write_tasks_file(path: Path, runner: TaskRunner, task_ids: list[int], max_requeues: int) -> None:
    """What the node reads: `runner` (its task id unset) runs task_ids[array index]."""
    atomic_write_bytes(path, pickle.dumps({"runner": runner, "task_ids": task_ids, "max_requeues": max_requeues}))


def main(tasks_file: str) -> int:
    sigterm_at = watch_sigterm(SIGTERM_AT)  # what came during the imports is kept
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = pickle.loads(Path(tasks_file).read_bytes())
    runner: TaskRunner = spec["runner"]
    runner.task_id = spec["task_ids"][int(os.environ.get("SLURM_ARRAY_TASK_ID") or 0)]
    rank, _, _, job_id = task_env()
    signal.signal(CHECKPOINT_SIGNAL, lambda signum, frame: _requeue(runner, rank, job_id, spec["max_requeues"]))
    log.info("job %s: %s task %d of %s, rank %d", job_id, runner.job, runner.task_id, runner.run_path, rank)
    runner(sigterm_at)
    return 0


def _requeue(runner: TaskRunner, rank: int, job_id: str, max_requeues: int) -> None:
    import subprocess

    if rank != 0:
        log.info("checkpoint signal: rank 0 saves and requeues")
        return
    run = RunDir(Path(runner.run_path))
    requeues = int(run.task_state(runner.job, runner.task_id).get("requeues", 0))
    runner.save_for_requeue()
    if requeues >= max_requeues:
        message = f"checkpoint signal after {requeues} requeues: not requeued again (resources.max_requeues)"
        log.error(message)
        run.set_task_state(runner.job, runner.task_id, "FAILED", error=message)
        _exit(1)
    run.set_task_state(runner.job, runner.task_id, "REQUEUED", requeues=requeues + 1)
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=120)
    log.warning("checkpoint signal: saved; requeue of %s %s", job_id,
                "asked" if done.returncode == 0 else f"refused: {done.stderr.strip()}")
    _exit(255)  # as submitit does: a job that was not requeued then ends FAILED, never COMPLETED


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    end_children()
    os._exit(code)  # now: the job's code is in the middle of a step


def end_children(grace_s: float = 5.0) -> None:
    """The processes the task started through multiprocessing end with it: os._exit runs no
    atexit hooks, so one they would have stopped (megatron's checkpoint writer keeps a
    multiprocessing manager process) would outlive the task, reparented away from the job,
    where Slurm without cgroups no longer finds it. SIGTERM, then SIGKILL after `grace_s`.
    (W&B's service is W&B's: the quick save flushed the run, and it ends with its client.)"""
    import multiprocessing

    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
