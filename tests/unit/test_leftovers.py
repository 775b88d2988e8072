"""The suite's leftover-process check (tests/leftovers.py), run on a small test file of its own."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

INNER = r'''
import os, shlex, subprocess, sys
import pytest

SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


def test_clean(tmp_path):
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_child_left_running():
    subprocess.Popen(SLEEP)


def test_child_that_ends_soon_after():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])


def test_orphan_naming_the_tmp_path(tmp_path):
    # a local job's rank whose aistack process died: reparented away from pytest
    rank = shlex.join([*SLEEP, "submitit.core._submit", str(tmp_path / "logs")])
    subprocess.run(["sh", "-c", rank + " >/dev/null 2>&1 &"], check=True)


def test_slurm_task_naming_the_tmp_path(tmp_path):
    # a task Slurm runs for the test (under slurmstepd), still running after it: Slurm's
    task = shlex.join([sys.executable, "-c", "import time; time.sleep(8)", str(tmp_path)])
    stepd = shlex.quote(os.environ["FAKE_SLURMSTEPD"]) + " -c 'eval \"$TASK\"; true'"
    subprocess.run(["sh", "-c", stepd + " >/dev/null 2>&1 &"], env=dict(os.environ, TASK=task), check=True)


def test_slurm_job_process_reparented(tmp_path):
    # a Slurm task whose container runtime reparented it away from slurmstepd: its job's own
    task = shlex.join([sys.executable, "-c", "import time; time.sleep(8)", str(tmp_path)])
    subprocess.run(["sh", "-c", task + " >/dev/null 2>&1 &"], env=dict(os.environ, SLURM_JOB_ID="99999"), check=True)


def test_orphan_of_an_ended_slurm_job(tmp_path):
    # a helper a task started, left alive after its job ended or was requeued: Slurm's no more
    task = shlex.join([sys.executable, "-c", "import time; time.sleep(30)", str(tmp_path)])
    subprocess.run(["sh", "-c", task + " >/dev/null 2>&1 &"], env=dict(os.environ, SLURM_JOB_ID="88888"), check=True)


@pytest.mark.leaves_processes
def test_marked(tmp_path):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)", str(tmp_path)])
'''


def _processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_processes_a_test_leaves_running_make_it_error(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    stepd = tmp_path / "bin" / "slurmstepd"  # a shell by slurmstepd's name: its children count as Slurm's
    stepd.parent.mkdir()
    shutil.copy("/bin/sh", stepd)
    squeue = stepd.parent / "squeue"  # the controller: job 99999 runs, 88888 has ended
    squeue.write_text('#!/bin/sh\ncase "$*" in *99999*) echo RUNNING ;; *) echo COMPLETED ;; esac\n')
    squeue.chmod(0o755)
    base = tmp_path / "base"
    env = dict(os.environ, PYTHONPATH=str(TESTS), AISTACK_TEST_LINGER_S="1", FAKE_SLURMSTEPD=str(stepd),
               PATH=f"{stepd.parent}:{os.environ['PATH']}")
    try:
        inner = subprocess.run([sys.executable, "-m", "pytest", "-p", "leftovers", "-p", "no:cacheprovider", "-rA",
                                "--durations=0", "--durations-min=0", f"--basetemp={base}", "test_inner.py"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        out = inner.stdout
        found = re.findall(r"^(PASSED|ERROR) test_inner.py::(\w+)", out, re.M)
        assert {name for kind, name in found if kind == "ERROR"} == {
            "test_child_left_running", "test_orphan_naming_the_tmp_path", "test_orphan_of_an_ended_slurm_job"}, out
        assert {name for kind, name in found if kind == "PASSED"} >= {
            "test_clean", "test_child_that_ends_soon_after", "test_slurm_task_naming_the_tmp_path",
            "test_slurm_job_process_reparented", "test_marked"}, out
        assert "outlived it by 1 s (killed now)" in out and "time.sleep(30)" in out
        teardown = re.search(r"^([\d.]+)s teardown\s+test_inner.py::test_clean$", out, re.M)
        assert teardown is None or float(teardown.group(1)) < 0.2, "a clean test pays no wait"
        assert not [p for p in _processes_naming(str(base / "test_orphan_naming_the_tmp0")) if _alive(p)], "killed"
    finally:
        for pid in _processes_naming(str(tmp_path)):  # the fake Slurm task, or anything a failure left
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
