"""How many more jobs this user may queue under the cluster's submit limits.

Slurm counts every array task as a job against a QOS's MaxSubmitJobsPerUser and an
association's MaxSubmitJobs. The limit comes from the cluster profile's
`max_submit_jobs`, or else from `sacctmgr` where accounting is readable; what is used
comes from `squeue -r` (array tasks one per line). An array bigger than the room left
is submitted in waves (see waves.py).

sacctmgr answers slowly (a round trip to slurmdbd, about half a second here), and the
first job of a launch cannot be submitted before its limit is known: `LimitLookup` asks
both questions (the user's associations, every QOS) at once, in the background, from the
moment the executor is made, while the recipe is planned and its run directory written.
Its answers are kept for CACHE_TTL_S in the user's cache folder (keyed by the user and
the cluster's slurm.conf, path and mtime): a limit changes when an administrator changes
it, rarely, and a submission Slurm refuses drops them (the rerun asks again).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aistack.rundir import atomic_write_json

CACHE_TTL_S = 300.0


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout if out.returncode == 0 else None


def user_name() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def parse_limit_column(text: str) -> int | None:
    """The smallest limit in one `sacctmgr -n -P` column (empty: no limit)."""
    values = [int(v) for v in (line.strip().split("|")[0] for line in text.splitlines()) if v.isdigit()]
    return min(values) if values else None


def parse_default_qos(text: str) -> str | None:
    """The association's default QOS from `sacctmgr -n -P show assoc ... format=DefaultQOS`."""
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return names[0] if names else None


def count_queued(squeue_text: str, qos: str | None = None) -> int:
    """Jobs in `squeue -h -r -o %q` output (one QOS per line), in `qos` or in all."""
    rows = [line.strip() for line in squeue_text.splitlines() if line.strip()]
    return len(rows) if qos is None else sum(1 for r in rows if r == qos)


@dataclass
class SubmitLimit:
    qos: str | None  # the QOS the jobs go to (None: the association's default)
    qos_limit: int | None  # MaxSubmitJobsPerUser of that QOS
    assoc_limit: int | None  # MaxSubmitJobs of the user's association(s)

    @property
    def limited(self) -> bool:
        return self.qos_limit is not None or self.assoc_limit is not None

    def describe(self) -> str:
        parts = []
        if self.qos_limit is not None:
            parts.append(f"QOS {self.qos or '(default)'} MaxSubmitJobsPerUser={self.qos_limit}")
        if self.assoc_limit is not None:
            parts.append(f"association MaxSubmitJobs={self.assoc_limit}")
        return ", ".join(parts) or "no submit limit"

    def room(self) -> int | None:
        """How many more jobs may be queued now (None: no limit known)."""
        if not self.limited:
            return None
        queued = _run(["squeue", "-h", "-r", "-u", user_name(), "-o", "%q"])
        if queued is None:
            return None
        rooms = []
        if self.qos_limit is not None:
            rooms.append(self.qos_limit - count_queued(queued, self.qos))
        if self.assoc_limit is not None:
            rooms.append(self.assoc_limit - count_queued(queued))
        return max(0, min(rooms))


class LimitLookup:
    """This user's submit limits: from the cache, else asked of sacctmgr once per launch, in
    the background."""

    def __init__(self, max_submit_jobs: int | None):
        self.max_submit_jobs = max_submit_jobs
        self._answers: list[Future] = []
        self._cached: tuple[str, str] | None = None
        if max_submit_jobs is None:  # the profile's limit, when it gives one, needs no question
            user = user_name()
            self._cached = read_cached_answers(user)
            if self._cached is None:
                pool = ThreadPoolExecutor(2, thread_name_prefix="sacctmgr")
                self._answers = [
                    pool.submit(_run, ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=MaxSubmit,DefaultQOS"]),
                    pool.submit(_run, ["sacctmgr", "-n", "-P", "show", "qos", "format=Name,MaxSubmitPU"]),
                ]
                pool.shutdown(wait=False)  # the threads end with their question; nothing waits here

    def limit(self, qos: str | None) -> SubmitLimit:
        """The profile's limit when it gives one (it applies to every job of the profile),
        else what sacctmgr says for this user and QOS (no limit when unreadable)."""
        if self.max_submit_jobs is not None:
            return SubmitLimit(qos=None, qos_limit=None, assoc_limit=self.max_submit_jobs)
        if self._cached is None:
            assoc_answer, qos_answer = (answer.result() for answer in self._answers)
            if assoc_answer is not None and qos_answer is not None:
                write_cached_answers(user_name(), (assoc_answer, qos_answer))
            self._cached = (assoc_answer or "", qos_answer or "")
        assoc, qos_table = self._cached
        rows = [line.split("|") for line in assoc.splitlines() if line.strip()]
        qos = qos or parse_default_qos("\n".join(row[1] for row in rows if len(row) > 1))
        limits = dict(line.split("|")[:2] for line in qos_table.splitlines() if line.count("|") >= 1)
        return SubmitLimit(qos=qos, qos_limit=parse_limit_column(limits.get(qos or "", "")),
                           assoc_limit=parse_limit_column("\n".join(row[0] for row in rows)))


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aistack" / "submit-limits.json"


def _cache_key(user: str) -> str | None:
    """The user and the cluster (its slurm.conf: a rebuilt cluster is another one)."""
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    try:
        return f"{user}|{os.path.realpath(conf)}|{os.stat(conf).st_mtime_ns}"
    except OSError:
        return None


def read_cached_answers(user: str) -> tuple[str, str] | None:
    key = _cache_key(user)
    try:
        entry = json.loads(_cache_file().read_text()).get(key or "")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or not 0 <= time.time() - entry.get("at", 0) < CACHE_TTL_S:
        return None
    answers = entry.get("assoc"), entry.get("qos")
    return answers if all(isinstance(a, str) for a in answers) else None  # a torn or edited file: ask again


def write_cached_answers(user: str, answers: tuple[str, str]) -> None:
    key = _cache_key(user)
    if key is None:
        return
    try:
        atomic_write_json(_cache_file(), {key: {"at": time.time(), "assoc": answers[0], "qos": answers[1]}},
                          durable=False)
    except OSError:
        pass  # a read-only home: ask again next time


def forget_cached_answers() -> None:
    """After a submission Slurm refused: the next launch asks sacctmgr again."""
    _cache_file().unlink(missing_ok=True)
