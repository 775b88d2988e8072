"""Stats of a data run: datatrove's per-step counters -> one table per run.

Each task returns (in its DONE result) compact rows, one per pipeline step:
documents in and out, dropped (in - out) and why, seconds. The gather job sums them
over the tasks of each job and writes stats.json and stats.csv in the run directory.

A WARC reader's row also has `records` (WARC records read) and `skipped_by` (records
that made no document, by reason; see aistack.data.readers). A task that read records
but kept none has a line in its result's `warnings`, and the run's table lists them.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from aistack.data import remote
from aistack.rundir import atomic_write_json, atomic_write_text

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


def nothing_kept(records: int, skipped: dict[str, int], not_html_types: dict[str, int]) -> str:
    """'read 5 WARC records but kept none: not_html 3 (text/xml 2, image/png 1), not_response 2'."""
    why = []
    for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])):
        types = ", ".join(f"{t} {c}" for t, c in sorted(not_html_types.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
        why.append(f"{reason} {n}" + (f" ({types})" if reason == "not_html" and types else ""))
    return f"read {records} WARC records but kept none: {', '.join(why) or 'no reason counted'}"


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
        if kind == "reader" and "records" in counts:  # WARC: the records that made no document, and why
            rows[-1]["records"] = int(counts["records"])
            rows[-1]["skipped_by"] = {k.removeprefix("skipped_"): int(v) for k, v in sorted(counts.items()) if v and k.startswith("skipped_")}
            rows[-1]["not_html_types"] = {k.removeprefix("not_html:"): int(v) for k, v in sorted(counts.items()) if v and k.startswith("not_html:")}
        previous_out = docs_out
    return rows


_BY = ("dropped_by", "skipped_by", "not_html_types")


def merge_task_rows(per_task: list[list[dict]]) -> list[dict]:
    """Sum the step rows of every task of one job (steps are the same in every task)."""
    merged: list[dict] = []
    for rows in per_task:
        for i, row in enumerate(rows):
            if i == len(merged):
                merged.append({**row, **{k: dict(row[k]) for k in _BY if k in row}})
                continue
            into = merged[i]
            for key in ("documents_in", "documents_out", "dropped", "bytes", "tokens", "seconds", "records"):
                if key in row:
                    into[key] = into.get(key, 0) + row[key]
            for by in _BY:
                for reason, n in row.get(by, {}).items():
                    into.setdefault(by, {})[reason] = into[by].get(reason, 0) + n
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
    fields = ["job", "step", "type", "name", "documents_in", "documents_out", "dropped", "dropped_by", "bytes", "tokens", "seconds",
              "records", "skipped_by"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    joined = lambda counts: ";".join(f"{k}={v}" for k, v in counts.items())  # noqa: E731
    for job in table["jobs"]:
        for i, row in enumerate(job["steps"]):
            writer.writerow({**row, "job": job["job"], "step": i, "dropped_by": joined(row["dropped_by"]),
                             "skipped_by": joined(row.get("skipped_by", {}))})
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


def task_warnings(task_id: int, rows: list[dict], inputs: list[str]) -> list[str]:
    """A reader that read WARC records and kept none of them (no HTML where HTML was expected)."""
    warnings = []
    for row in rows:
        if row.get("records") and not row["documents_out"]:
            files = ", ".join(inputs[:5]) + (f" and {len(inputs) - 5} more" if len(inputs) > 5 else "")
            where = f" (input files {files})" if files else ""
            warnings.append(f"task {task_id}{where} {nothing_kept(row['records'], row.get('skipped_by', {}), row.get('not_html_types', {}))}")
    return warnings


def task_result(task_id: int, rows: list[dict], seconds: float, inputs: list[str], outputs: list[str]) -> dict:
    """What a data task returns (its DONE result): the gather job reads these."""
    kept = funnel_points(rows)
    size = lambda paths: sum(remote.size(p) if remote.is_url(p) else Path(p).stat().st_size  # noqa: E731
                             for p in paths if remote.is_url(p) or Path(p).exists())
    return {
        "task": task_id,
        "documents_in": rows[0]["documents_out"] if rows else 0,
        "documents_out": kept[-1][1] if kept else 0,
        "tokens": sum(r["tokens"] for r in rows),
        "bytes_in": size(inputs),
        "bytes_out": size(outputs),
        "seconds": seconds,
        "steps": rows,
        "warnings": task_warnings(task_id, rows, inputs),
    }
