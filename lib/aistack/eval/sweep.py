"""The gather step of an evaluation sweep: one table (JSON + CSV) and a plot per metric vs step.

    <run>/results.json   {"rows": [...], "table": {task/metric: {checkpoint label: value}}}
    <run>/results.csv    run, step, checkpoint, task, metric, value, backend (one row per value)
    <run>/plots/<task>__<metric>.png   each metric against training step, one line per run
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from aistack.rundir import RunDir, atomic_write_json, atomic_write_text

COLUMNS = ["run", "step", "checkpoint", "task", "metric", "value", "backend"]


def collect(run: RunDir, job: str, num_tasks: int) -> list[dict[str, Any]]:
    """Every eval task's result, flattened to one row per metric value."""
    results = [run.task_result(job, t) for t in range(num_tasks)]
    missing = [t for t, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"{run.name}: eval tasks {missing} have no result (the gather job runs afterok the array)")
    rows = []
    for done in results:
        res = done["result"]
        for task, metrics in res["metrics"].items():
            for metric, value in sorted(metrics.items()):
                rows.append({"run": res["run"], "step": res["step"], "checkpoint": res["checkpoint"], "task": task,
                             "metric": metric, "value": value, "backend": res["backend"]})
    rows.sort(key=lambda r: (r["task"], r["metric"], r["run"], r["step"] if r["step"] is not None else -1))
    return rows


def write_tables(out_dir: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    table: dict[str, dict[str, float]] = {}
    for r in rows:
        table.setdefault(f"{r['task']}/{r['metric']}", {})[f"{r['run']}@{r['step']}"] = r["value"]
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    atomic_write_json(json_path, {"rows": rows, "table": table})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def plot_metrics(out_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """One PNG per (task, metric): value against training step, one line per source run."""
    from aistack.track.figures import pyplot, save_png

    plt = pyplot()
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    series: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = {}
    for r in rows:
        if r["metric"].endswith("_stderr"):  # a value's standard error: the tables carry it, no plot of its own
            continue
        series.setdefault((r["task"], r["metric"]), {}).setdefault(r["run"], []).append((r["step"] or 0, r["value"]))
    paths = []
    for (task, metric), lines in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for run, points in sorted(lines.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=run)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_png(fig, plots_dir / f"{_safe(task)}__{_safe(metric)}.png"))
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def gather(run: RunDir, job: str, num_tasks: int) -> dict[str, Any]:
    rows = collect(run, job, num_tasks)
    json_path, csv_path = write_tables(run.path, rows)
    plots = plot_metrics(run.path, rows)
    return {"rows": rows, "json": json_path, "csv": csv_path, "plots": plots}
