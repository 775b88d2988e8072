"""Stats of a data run: datatrove's per-step counters -> one table per run.

Each task returns (in its DONE result) compact rows, one per pipeline step:
documents in and out, dropped (in - out) and why, seconds. The gather job sums them
over the tasks of each job and writes stats.json and stats.csv in the run directory.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from aistack.launch.rundir import atomic_write_json, atomic_write_text

# datatrove filters count drops as `dropped_<reason>`; these count documents (or
# files) lost some other way, so they are reasons too.
_LOSSES = {"timeout", "clean_error", "broken_process", "bad_files"}


def _count(value: Any) -> float:
    if isinstance(value, dict):
        return value.get("total", 0)
    return value or 0


def _split_name(name: str) -> tuple[str, str]:
    """'🔻 - FILTER: 🌍 Language ID' -> ('filter', 'Language ID') (no emoji in plots and CSVs)."""
    kind, _, label = name.rpartition(":")
    clean = lambda text: re.sub(r"\s+", " ", re.sub(r"[^\w\s.()-]", "", text)).strip(" -")  # noqa: E731
    return clean(kind).lower(), clean(label) or name


def step_rows(datatrove_steps: list[dict]) -> list[dict]:
    """One row per step: name, documents_in, documents_out, dropped, dropped_by, seconds."""
    rows = []
    previous_out = None
    for step in datatrove_steps:
        stats = step.get("stats", {})
        counts = {k: _count(v) for k, v in stats.items()}
        kind, label = _split_name(step["name"])
        if kind == "reader":
            docs_in = docs_out = counts.get("documents", 0)
        elif kind in ("writer", "format"):  # they count what they wrote/changed as `total`
            docs_in = docs_out = counts.get("total", 0)
        elif "total" in counts:  # filters, extractors: total = in, forwarded = out
            docs_in = counts["total"]
            lost = any(k.startswith("dropped") or k in _LOSSES for k in counts)
            # a sink (MinHash signatures, token writers) counts `total` only: nothing lost
            docs_out = counts.get("forwarded", 0 if lost else docs_in)
        else:  # no counters: no document reached it, or it passes all on uncounted
            docs_in = docs_out = previous_out or 0
        reasons = {k.removeprefix("dropped_"): v for k, v in counts.items() if v and (k.startswith("dropped_") or k in _LOSSES)}
        unexplained = docs_in - docs_out - sum(reasons.values())
        if unexplained > 0:  # the extractor counts documents left with no text only as `dropped`
            reasons[{"extrac": "no_text", "dedup": "near_duplicate"}.get(kind, "unspecified")] = unexplained
        rows.append({
            "name": label,
            "type": kind,
            "documents_in": int(docs_in),
            "documents_out": int(docs_out),
            "dropped": int(docs_in - docs_out),
            "dropped_by": {k: int(v) for k, v in sorted(reasons.items())},
            "bytes": int(_count(stats.get("doc_len", 0))),
            "tokens": int(counts.get("tokens", 0)),
            "seconds": float(step.get("time_stats", {}).get("total", 0.0)) if isinstance(step.get("time_stats"), dict) else 0.0,
        })
        previous_out = docs_out
    return rows


def merge_task_rows(per_task: list[list[dict]]) -> list[dict]:
    """Sum the step rows of every task of one job (steps are the same in every task)."""
    merged: list[dict] = []
    for rows in per_task:
        for i, row in enumerate(rows):
            if i == len(merged):
                merged.append({**row, "dropped_by": dict(row["dropped_by"])})
                continue
            into = merged[i]
            for key in ("documents_in", "documents_out", "dropped", "bytes", "tokens", "seconds"):
                into[key] += row[key]
            for reason, n in row["dropped_by"].items():
                into["dropped_by"][reason] = into["dropped_by"].get(reason, 0) + n
    return merged


def job_summary(job: str, results: list[dict]) -> dict:
    """Totals of one job over its tasks, from the tasks' DONE results."""
    seconds = [r.get("seconds", 0.0) for r in results]
    docs_in = sum(r.get("documents_in", 0) for r in results)
    return {
        "job": job,
        "tasks": len(results),
        "documents_in": docs_in,
        "documents_out": sum(r.get("documents_out", 0) for r in results),
        "tokens": sum(r.get("tokens", 0) for r in results),
        "bytes_in": sum(r.get("bytes_in", 0) for r in results),
        "bytes_out": sum(r.get("bytes_out", 0) for r in results),
        "task_seconds": sum(seconds),
        "documents_per_s_per_task": docs_in / sum(seconds) if sum(seconds) else 0.0,
    }


def write_tables(run_path: Path, table: dict) -> tuple[Path, Path]:
    """stats.json (everything) and stats.csv (one line per job step)."""
    json_path, csv_path = Path(run_path) / "stats.json", Path(run_path) / "stats.csv"
    atomic_write_json(json_path, table)
    buf = io.StringIO()
    fields = ["job", "step", "type", "name", "documents_in", "documents_out", "dropped", "dropped_by", "bytes", "tokens", "seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for job in table["jobs"]:
        for i, row in enumerate(job["steps"]):
            reasons = ";".join(f"{k}={v}" for k, v in row["dropped_by"].items())
            writer.writerow({**row, "job": job["job"], "step": i, "dropped_by": reasons})
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def funnel_points(steps: list[dict]) -> list[tuple[str, int]]:
    """(step, documents kept after it) along a job's pipeline, writers left out."""
    points = []
    for row in steps:
        if row.get("type") == "writer":
            continue
        points.append((row["name"], row["documents_out"]))
    return points


def task_result(task_id: int, rows: list[dict], seconds: float, inputs: list[str], outputs: list[str]) -> dict:
    """What a data task returns (its DONE result): the gather job reads these."""
    kept = funnel_points(rows)
    size = lambda paths: sum(Path(p).stat().st_size for p in paths if Path(p).exists())  # noqa: E731
    return {
        "task": task_id,
        "documents_in": rows[0]["documents_out"] if rows else 0,
        "documents_out": kept[-1][1] if kept else 0,
        "tokens": sum(r["tokens"] for r in rows),
        "bytes_in": size(inputs),
        "bytes_out": size(outputs),
        "seconds": seconds,
        "steps": rows,
    }
