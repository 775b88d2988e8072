"""One live launch per run directory: a second one is refused naming the holder, and the
lock goes with its holder however it ends (kill -9 included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from aistack.rundir import LOCK_FILE, RunBusy, RunLock


def test_a_second_launch_is_refused_naming_the_holder_then_runs_once_it_is_released(tmp_path):
    a, b = tmp_path / "pipeline", tmp_path / "stage"
    with RunLock([a, b]):
        with pytest.raises(RunBusy, match=rf"{b} is being run by pid {os.getpid()} on host .*`aistack status"):
            with RunLock([b]):
                pass
    with RunLock([b, a]):
        assert (a / LOCK_FILE).exists() and (b / LOCK_FILE).exists()


def test_a_holder_killed_outright_leaves_no_lock_behind(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from aistack.rundir import RunLock\n"
        f"lock = RunLock([{str(tmp_path)!r}]).__enter__(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy, match=f"pid {holder.pid}"):
            RunLock([tmp_path]).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with RunLock([tmp_path]):
        pass


def test_a_waiting_launch_gets_the_lock_when_the_holder_lets_go(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from aistack.rundir import RunLock\n"
        f"with RunLock([{str(tmp_path)!r}]):\n    print('held', flush=True); time.sleep(1.5)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with RunLock([tmp_path], wait_s=30):
            assert time.monotonic() - start > 0.5
    finally:
        holder.wait(timeout=30)
