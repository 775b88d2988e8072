"""A sweep's seeds, pooled (a pipeline's `seeds:`): the models one variant trained at several
seeds become one row, each metric the mean over the seeds and its standard error their
spread (sample standard deviation / sqrt(seeds)). FineWeb's ablations compare data recipes
this way: a lead smaller than what a change of seed moves is not a win."""

from __future__ import annotations

import statistics
from pathlib import Path

from aistack.report.compare import STDERR
from aistack.report.results import number


def pool_seeds(rows: list[dict[str, str]], stages: list[dict]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """results.csv rows -> (rows with each seeded model's seeds pooled, {pooled run: label}).
    Rows of models no seed made pass through; so do all rows when no stage has a seed."""
    seeded = {Path(s["run"]).name: s for s in stages if s.get("seed") is not None}
    if not seeded:
        return rows, {}
    values: dict[tuple[str, str, str, str, bool], list[float]] = {}
    out = [r for r in rows if r["run"] not in seeded]
    for row in rows:
        stage = seeded.get(row["run"])
        value = number(row["value"])
        if stage is None or row["metric"].endswith(STDERR) or value is None:
            continue  # a seed's own standard error: the spread over the seeds replaces it
        pooled = stage["name"].removesuffix(f".s{stage['seed']}")
        untrained = (row.get("checkpoint") or "").startswith("untrained:")
        values.setdefault((pooled, row["step"], row["task"], row["metric"], untrained), []).append(value)
    labels: dict[str, str] = {}
    for (pooled, step, task, metric, untrained), seen in values.items():
        base = {"run": pooled, "step": step, "checkpoint": "untrained:" if untrained else "", "task": task}
        out.append({**base, "metric": metric, "value": repr(statistics.fmean(seen))})
        if len(seen) > 1:
            out.append({**base, "metric": metric + STDERR, "value": repr(statistics.stdev(seen) / len(seen) ** 0.5)})
        labels[pooled] = f"{pooled} (mean of {len(seen)} seeds)"
    return out, labels
