"""The processes of jobs run on this machine, found by what their command lines name.

submitit's LocalExecutor runs a job as a controller (`python -m submitit.local._local
<log folder>`) that starts one process per rank (`python -u -m submitit.core._submit
<log folder>`). The local executor starts each controller as the leader of a new session,
so the job's process group holds the controller, its ranks and whatever they fork, and a
Ctrl-C at the terminal reaches only the aistack process, which stops its jobs itself
(stop_jobs). Nothing here imports submitit: `aistack status` and `cancel` use it too.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLER = "submitit.local._local"
TASK = "submitit.core._submit"
# How long a stopped task has to exit after its SIGINT (a KeyboardInterrupt in the task)
# before its whole process group is killed.
STOP_GRACE_S = 5.0
KILL_WAIT_S = 5.0  # after SIGKILL, for the processes to be gone
# Recorded states of a local task that mean "its processes should be alive".
LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "PREEMPTED"})


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP reached the aistack process while it ran a plan here (the
    handler `aistack run` installs raises it). `stopped`: (run directory, job, task ids) of
    the tasks the local executor stopped on its way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.stopped: list[tuple[Path, str, list[int]]] = []

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def this_host() -> str:
    return socket.gethostname()


@dataclass
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str  # R, S, D, Z, ... as in /proc/<pid>/stat

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X", "x")


def proc(pid: int) -> Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ", comm may hold spaces
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0])


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    found = proc(pid)
    return found is not None and found.alive


def _marker(module: str, log_dir: Path) -> bytes:
    return f"{module}\0{log_dir}\0".encode()  # the whole argument after the module


def is_job_process(pid: int, log_dir: Path, module: str = TASK) -> bool:
    """A live process here that is a controller (module=CONTROLLER) or a rank (TASK) of a job
    whose log folder is `log_dir`: a pid alone may since name anything else."""
    return alive(pid) and _marker(module, Path(log_dir)) in cmdline(pid)


def job_processes(log_dir: Path, modules: tuple[str, ...] = (CONTROLLER, TASK)) -> list[Proc]:
    """Live processes here whose command line names the log folder (controllers, ranks and
    what the ranks forked; `modules`: which of them), this process excepted."""
    markers = tuple(_marker(module, Path(log_dir)) for module in modules)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        line = cmdline(int(entry.name))
        if not any(m in line for m in markers):
            continue
        info = proc(int(entry.name))
        if info is not None and info.alive:
            found.append(info)
    return found


def task_gone(log_dir: Path, controller: str | int | None, marker: dict, record_host: str | None = None) -> bool:
    """A local task recorded as live (RUNNING, REQUEUED, ...) whose processes are gone: its
    aistack process was killed, or the machine restarted. Known only on the host that ran it:
    recorded elsewhere, it is not gone as far as this host can tell."""
    host = marker.get("host") or record_host
    if host is None or host != this_host():
        return False
    pid = marker.get("pid")
    if pid and is_job_process(int(pid), log_dir, TASK):
        return False
    if controller not in (None, "") and str(controller).isdigit() and is_job_process(int(controller), log_dir, CONTROLLER):
        return False
    return True


def stop_jobs(jobs: list[tuple[int, Path]], grace_s: float = STOP_GRACE_S) -> list[int]:
    """End jobs running here, each given by its controller's pid and its log folder: SIGINT
    to each rank (a KeyboardInterrupt: the task may clean up; its controller, seeing its
    ranks end, exits), up to `grace_s` for them to end, then SIGKILL to each job's process
    group and to any process still naming a log folder. Returns the pids signalled."""
    own_group = os.getpgrp()
    members: dict[int, list[Proc]] = {}  # controller -> its job's processes
    for controller, log_dir in jobs:
        members[controller] = [p for p in job_processes(log_dir)
                               if p.pid == controller or p.pgid == controller or p.ppid == controller]
    signalled: list[int] = []
    for controller, log_dir in jobs:
        tasks = {p.pid for p in members[controller] if _marker(TASK, Path(log_dir)) in cmdline(p.pid)}
        for p in members[controller]:
            if p.pid in tasks and p.ppid not in tasks:  # the ranks, not what they forked
                _signal(p.pid, signal.SIGINT, signalled)
    # The job's own process group, seen holding a process that names its log folder (an old
    # job started inside the aistack process's group has none: its processes are found by
    # their command lines alone). What a rank started that names no log folder (a W&B
    # service, a compiler) is in the group too.
    groups = {c for c, log_dir in jobs if c != own_group and _leads_job_group(c, log_dir, members[c])}
    watched = {p.pid for procs in members.values() for p in procs}
    deadline = time.monotonic() + grace_s
    while any(alive(pid) for pid in watched) and time.monotonic() < deadline:
        time.sleep(0.05)
    for controller, log_dir in jobs:
        if controller in groups:
            try:
                os.killpg(controller, signal.SIGKILL)
                signalled.append(controller)
            except (ProcessLookupError, PermissionError):
                pass
        for p in job_processes(log_dir):
            _signal(p.pid, signal.SIGKILL, signalled)
    # SIGKILL takes effect when each process next runs: wait (briefly) until they are gone,
    # so that a stopped job has no process left when this returns.
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline and (any(_group_alive(c) for c in groups)
                                           or any(job_processes(log_dir) for _, log_dir in jobs)):
        time.sleep(0.05)
    return signalled


def _group_alive(pgid: int) -> bool:
    """A live process here in process group `pgid` (this process excepted)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            found = proc(int(entry.name))
            if found is not None and found.pgid == pgid and found.alive:
                return True
    return False


def _leads_job_group(pgid: int, log_dir: Path, members: list[Proc]) -> bool:
    """`pgid` is the process group of the job: its leader, alive, is one of the job's processes
    (a controller started in a session of its own), or is gone and left members that are."""
    leader = proc(pgid)
    if leader is not None and leader.alive:
        return leader.pgid == pgid and any(m.pid == pgid for m in members)
    return any(m.pgid == pgid for m in members)


def _signal(pid: int, signum: int, signalled: list[int]) -> None:
    try:
        os.kill(pid, signum)
        signalled.append(pid)
    except (ProcessLookupError, PermissionError):
        pass
