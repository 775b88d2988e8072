"""Reading job states back from Slurm: sacct for every job and array task (accounting keeps
them after they end), squeue for what the controller still holds. One call per batch of
jobs, never one per task."""

from __future__ import annotations

import re
import subprocess
import time

_ARRAY_RANGE_RE = re.compile(r"^(?P<id>\d+)_\[(?P<ranges>[^\]%]+)(%\d+)?\]$")


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{'123_4': 'COMPLETED', '124': 'RUNNING', ...} from sacct: accounting has every task,
    pending array tasks folded into ranges (expanded by parse_sacct)."""
    if not job_ids:
        return {}
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)]
    for attempt in range(5):  # slurmdbd can be briefly busy under a burst of job records
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            break
        time.sleep(0.5 * (attempt + 1))
    else:
        raise RuntimeError(f"sacct failed (exit {out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return parse_sacct(out.stdout)


def in_queue(job_ids: list[str]) -> set[str]:
    """Which of these jobs (or arrays) the controller still has queued or running."""
    if not job_ids:
        return set()
    out = subprocess.run(["squeue", "-h", "-o", "%F", "-j", ",".join(sorted(set(job_ids)))], capture_output=True,
                         text=True, timeout=60)
    # squeue exits non-zero when none of the ids is known any more
    return {line.strip() for line in out.stdout.splitlines() if line.strip()} if out.returncode == 0 else set()


def queued_names(job_ids: list[str]) -> dict[str, str]:
    """{job or array id: its job name} of these jobs that the controller still holds."""
    if not job_ids:
        return {}
    out = subprocess.run(["squeue", "-h", "-o", "%F|%j", "-j", ",".join(sorted(set(job_ids)))], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:  # none of the ids is known any more
        return {}
    return dict(line.strip().split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -X -n -P -o JobID,State` output -> {job or array task id: state}. Pending
    array ranges ("123_[4-6,9%2]") are expanded to one entry per task."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        jid, state = line.split("|", 1)
        state = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        match = _ARRAY_RANGE_RE.match(jid)
        if match:
            for index in _expand(match["ranges"]):
                states[f"{match['id']}_{index}"] = state
        else:
            states[jid] = state
    return states


def _expand(ranges: str) -> list[int]:
    out: list[int] = []
    for part in ranges.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


