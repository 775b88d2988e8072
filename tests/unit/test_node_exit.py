"""A task that ends with os._exit (the requeue after the checkpoint signal) takes what it
started with it: megatron's checkpoint writer leaves a multiprocessing manager process that
atexit would have stopped; orphaned, it escaped the job (found alive after the suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SCRIPT = """
import multiprocessing as mp
from aistack.runtime import node
manager = mp.get_context("spawn").Manager()
queue = manager.Queue()  # as megatron's FileSystemWriterAsync makes one at the first save
print(manager._process.pid, flush=True)
node._exit(3)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_exit_for_the_requeue_ends_the_processes_the_task_started(tmp_path):
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as stdout, open(err, "w") as stderr:  # files, not pipes: a survivor would hold a pipe open
        done = subprocess.run([sys.executable, "-c", SCRIPT], stdout=stdout, stderr=stderr, timeout=60)
    assert done.returncode == 3, err.read_text()[-2000:]
    helper = int(out.read_text().split()[0])
    deadline = time.time() + 5
    while _alive(helper) and time.time() < deadline:
        time.sleep(0.1)
    survived = _alive(helper)
    if survived:
        os.kill(helper, signal.SIGKILL)
    assert not survived, "the manager process outlived the task"
