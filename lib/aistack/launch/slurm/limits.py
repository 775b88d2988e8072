"""How many more jobs this user may queue under the cluster's submit limits.

Slurm counts every array task as a job against a QOS's MaxSubmitJobsPerUser and an
association's MaxSubmitJobs. The limit comes from the cluster profile's
`max_submit_jobs`, or else from `sacctmgr` where accounting is readable; what is used
comes from `squeue -r` (array tasks one per line). An array bigger than the room left
is submitted in waves (see waves.py).
"""

from __future__ import annotations

import pwd
import os
import shutil
import subprocess
from dataclasses import dataclass


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


def submit_limit(max_submit_jobs: int | None, qos: str | None) -> SubmitLimit:
    """The profile's limit when it gives one (it applies to every job of the profile),
    else what sacctmgr says for this user and QOS (no limit when unreadable)."""
    if max_submit_jobs is not None:
        return SubmitLimit(qos=None, qos_limit=None, assoc_limit=max_submit_jobs)
    user = user_name()
    assoc = _run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=MaxSubmit"])
    if qos is None:
        qos = parse_default_qos(_run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=DefaultQOS"]) or "")
    qos_text = _run(["sacctmgr", "-n", "-P", "show", "qos", qos, "format=MaxSubmitPU"]) if qos else None
    return SubmitLimit(qos=qos, qos_limit=parse_limit_column(qos_text or ""), assoc_limit=parse_limit_column(assoc or ""))
