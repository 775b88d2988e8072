"""No process a test starts outlives it: a pytest plugin (tests/conftest.py loads it).

Before each test the processes of this machine are noted (pid and start time: pids are
reused). After it, a process that did not exist before and is still alive is left over if
it descends from this pytest process, or if its command line names this session's temporary
directory: a local job's processes (submitit's controller and ranks, what they forked)
are reparented away from pytest when the process that ran them dies. Processes under
slurmstepd or slurmd, or of another Slurm job still running (tasks Slurm runs for a test),
are Slurm's, whatever they name; one carrying the id of a job that has ended is an orphan.

A leftover gets LINGER_S to exit; one still alive then is killed and the test errors,
naming it. When nothing is left the check is two scans of /proc, no sleep. Helpers that a
library starts once per process and keeps until that process exits (multiprocessing's
resource tracker, W&B's service) are not leftovers; a test that means to leave a process
behind is marked `leaves_processes`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

LINGER_S = float(os.environ.get("AISTACK_TEST_LINGER_S", "5"))
# Command-line parts of helpers a library keeps for the life of the process that started it.
LIBRARY_HELPERS = (
    b"multiprocessing.resource_tracker", b"multiprocess.resource_tracker", b"multiprocessing.forkserver",
    b"multiprocess.forkserver", b"/wandb/bin/wandb-", b"torch/_inductor/compile_worker",
)
SLURM_DAEMONS = ("slurmstepd", "slurmd")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    state: str
    start: int  # clock ticks after boot: with the pid, names one process

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X", "x")


def _read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    head, _, rest = text.rpartition(b")")
    fields = rest.split()
    return Proc(pid, int(fields[1]), head.partition(b"(")[2].decode(errors="replace"), fields[0].decode(), int(fields[19]))


def snapshot() -> dict[int, Proc]:
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = _read(int(name))
            if found is not None:
                procs[found.pid] = found
    return procs


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ancestors(proc: Proc, procs: dict[int, Proc]):
    seen = set()
    while proc.ppid in procs and proc.ppid not in seen:
        seen.add(proc.ppid)
        proc = procs[proc.ppid]
        yield proc


def leftovers(before: dict[int, Proc], root: int, temp_dir: str) -> list[Proc]:
    """Processes started since `before`, alive, that descend from `root` or name `temp_dir`."""
    now = snapshot()
    marker = temp_dir.rstrip("/").encode() + b"/"
    found = []
    for proc in now.values():
        old = before.get(proc.pid)
        if not proc.alive or proc.pid == root or (old is not None and old.start == proc.start):
            continue
        ancestry = list(_ancestors(proc, now))
        if proc.comm in SLURM_DAEMONS or any(a.comm in SLURM_DAEMONS for a in ancestry):
            continue
        line = _cmdline(proc.pid)
        if any(helper in line for helper in LIBRARY_HELPERS):
            continue
        if any(a.pid == root for a in ancestry):
            found.append(proc)
        elif marker in line and not _in_other_slurm_job(proc.pid):
            found.append(proc)
    return found


def _in_other_slurm_job(pid: int) -> bool:
    """A process of a live Slurm job other than the one pytest runs in (if any): Slurm's,
    even where its ancestry does not show it (a container runtime that reparents). One whose
    job has ended (or was requeued) is an orphan Slurm no longer tracks: a leftover."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    job = next((v[len(b"SLURM_JOB_ID="):] for v in environ if v.startswith(b"SLURM_JOB_ID=")), None)
    if job is None or job.decode(errors="replace") == os.environ.get("SLURM_JOB_ID"):
        return False
    return _slurm_job_runs(job.decode(errors="replace"))


# Job states in which the job's processes may still run (or be ending, under Slurm's care).
_RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}


def _slurm_job_runs(job: str) -> bool:
    """What the controller says of `job`; True when it cannot be asked (no cluster here)."""
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if out.returncode != 0:
        return "invalid job id" not in out.stderr.lower()  # purged from the controller: long ended
    states = set(out.stdout.split())
    return not states or bool(states & _RUNNING_STATES)


def _still_alive(procs: list[Proc]) -> list[Proc]:
    alive = []
    for proc in procs:
        now = _read(proc.pid)
        if now is not None and now.start == proc.start and now.alive:
            alive.append(now)
    return alive


def _describe(proc: Proc) -> str:
    line = _cmdline(proc.pid).replace(b"\0", b" ").decode(errors="replace").strip()
    return f"pid {proc.pid} ({proc.comm}): {line[:300]}"


def pytest_configure(config):
    config.addinivalue_line("markers", "leaves_processes: the test may leave processes behind (not checked)")


@pytest.fixture(autouse=True)
def _no_leftover_processes(request, tmp_path_factory):
    if request.node.get_closest_marker("leaves_processes"):
        yield
        return
    before = snapshot()
    yield
    left = leftovers(before, os.getpid(), str(tmp_path_factory.getbasetemp()))
    deadline = time.monotonic() + LINGER_S
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _still_alive(left)
    if not left:
        return
    described = [_describe(p) for p in left]
    for proc in left:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    pytest.fail(f"{len(left)} process(es) the test started outlived it by {LINGER_S:.0f} s (killed now):\n  "
                + "\n  ".join(described), pytrace=False)
