"""What a pipeline achieved, in a few lines at the top of its report: documents read and
kept, tokens trained, each evaluated model against the untrained baseline, the FP8
benchmark's speed and quality. Each line is read from the files the stages wrote; a stage
without results gives no line (the sections below say why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aistack.recipe.kinds import spec_for
from aistack.report.compare import STDERR, clear_best, higher_is_better
from aistack.report.results import csv_rows, number
from aistack.report.seeds import pool_seeds
from aistack.rundir import RunDir, read_json


def summary_lines(stages: list[dict[str, str]], labels: dict[str, str]) -> list[str]:
    """`labels`: run directory name -> what the report calls that model."""
    lines = []
    by_section = {section: [s for s in stages if spec_for(s["kind"]).report == section]
                  for section in ("data", "training", "evaluation", "benchmark")}
    variants = list(dict.fromkeys(s.get("variant") for s in by_section["data"] if s.get("variant")))
    for variant in variants or [None]:  # a sweep: each variant's data from the crawl to its last data stage
        mine = [s for s in by_section["data"] if s.get("variant") in (None, variant)]
        if line := _data_line(mine, variant):
            lines.append(line)
    lines += [line for s in by_section["training"] if (line := _training_line(s))]
    for stage in by_section["evaluation"]:
        lines += _eval_lines(stage, labels)
    if len(by_section["evaluation"]) > 1:
        rows = [row for s in by_section["evaluation"] for row in csv_rows(Path(s["run"]) / "results.csv") or []]
        rows, pooled = pool_seeds(rows, stages)
        lines += _winner_lines(rows, {**labels, **pooled})
    lines += [line for s in by_section["benchmark"] if (line := _bench_line(s))]
    return lines


def _data_line(stages: list[dict[str, str]], variant: str | None = None) -> str | None:
    """Documents the first data stage read, and what the last one kept."""
    tables = [read_json(Path(s["run"]) / "stats.json") for s in stages]
    tables = [t for t in tables if t]
    if not tables:
        return None
    read = next((step["documents_out"] for job in tables[0]["jobs"] for step in job["steps"]
                 if step.get("type") == "reader"), None)
    last = [step for job in tables[-1]["jobs"] for step in job["steps"] if step["documents_out"]]
    if read is None or not last:
        return None
    kept = last[-1]["documents_out"]
    share = f" ({100 * kept / read:.0f}%)" if read else ""
    title = f"Data ({variant})" if variant else "Data"
    return f"**{title}**: {read:,} documents read, {kept:,} kept{share} after {', '.join(s['name'] for s in stages)}"


def _training_line(stage: dict[str, str]) -> str | None:
    result = (RunDir(Path(stage["run"])).task_result("train", 0) or {}).get("result") or {}
    if "steps" not in result:
        return None
    tokens = f", {_count(result['tokens'])} tokens" if result.get("tokens") else ""
    loss = f", final loss {result['loss']:.3g}" if isinstance(result.get("loss"), (int, float)) else ""
    return f"**{stage['name']}** ({stage['kind']}): {result['steps']:,} steps{tokens}{loss}"


def _eval_lines(stage: dict[str, str], labels: dict[str, str]) -> list[str]:
    """A line per evaluated model: each task's metric, beside the untrained baseline's."""
    rows = csv_rows(Path(stage["run"]) / "results.csv") or []
    if not rows:
        return []
    baseline: dict[tuple[str, str, str], str] = {}  # (run, task, metric) -> value of the untrained model
    models: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        if (row.get("checkpoint") or "").startswith("untrained:"):
            baseline[(row["run"], row["task"], row["metric"])] = row["value"]
        else:
            models.setdefault((row["run"], row["step"]), []).append(row)
    lines = []
    order = {run: i for i, run in enumerate(labels)}  # the pipeline's stage order
    for (run, step), model_rows in sorted(models.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][0])):
        parts = []
        for row in sorted(model_rows, key=lambda r: (r["task"], r["metric"])):
            if row["metric"].endswith("_stderr") or not _headline(row["metric"], {r["metric"] for r in model_rows
                                                                                  if r["task"] == row["task"]}):
                continue
            text = f"{row['task']} {row['metric']} {_fmt(row['value'])}"
            stderr = next((r["value"] for r in model_rows if r["task"] == row["task"]
                           and r["metric"] == row["metric"] + "_stderr"), None)
            if stderr not in (None, ""):
                text += f" ± {_fmt(stderr)}"
            if (untrained := baseline.get((run, row["task"], row["metric"]))) is not None:
                text += f" (untrained {_fmt(untrained)})"
            parts.append(text)
        lines.append(f"**{labels.get(run, run)}** (step {step}): " + "; ".join(parts))
    return lines


def _winner_lines(rows: list[dict[str, str]], labels: dict[str, str]) -> list[str]:
    """Of a pipeline's variants (their evaluations' rows, seeds pooled), the model that leads
    each task's headline metric by more than two standard errors, or that none does."""
    models: dict[str, dict[tuple[str, str], float | None]] = {}
    for row in rows:
        if (row.get("checkpoint") or "").startswith("untrained:"):
            continue
        label = f"{labels.get(row['run'], row['run'])} (step {row['step']})"
        models.setdefault(label, {})[(row["task"], row["metric"])] = number(row["value"])
    columns = sorted({col for values in models.values() for col in values if not col[1].endswith(STDERR)})
    lines = []
    for task, metric in columns:
        if not _headline(metric, {m for t, m in columns if t == task}) or higher_is_better(metric) is None:
            continue
        best = clear_best((task, metric), list(models.values()))
        if best is None:
            lines.append(f"**{task} {metric}**: no model leads by more than two standard errors")
            continue
        winner = next(label for label, values in models.items() if values.get((task, metric)) == best)
        others = ", ".join(f"{label} {_fmt(values[(task, metric)])}" for label, values in models.items()
                           if label != winner and values.get((task, metric)) is not None)
        noise = ("" if any((task, metric + STDERR) in values for values in models.values())
                 else " (no standard error for this metric: one run each; `seeds:` in the pipeline measures the noise)")
        lines.append(f"**{task} {metric}**: best {winner}, {_fmt(best)} (vs {others}){noise}")
    return lines


def _bench_line(stage: dict[str, str]) -> str | None:
    """FP8 against BF16 at the largest batch measured: decode speed and the quality delta."""
    run = Path(stage["run"])
    rows = csv_rows(run / "results.csv") or []
    if not rows or "decode_tok_s" not in rows[0]:
        return None
    batch = max(int(r["batch"]) for r in rows if r.get("batch"))
    speed = {r["precision"]: float(r["decode_tok_s"]) for r in rows if r.get("batch") == str(batch) and r["decode_tok_s"]}
    fp8 = next((p for p in speed if p.startswith("fp8")), None)
    if "bf16" not in speed or fp8 is None:
        return None
    line = (f"**FP8 benchmark** ({stage['name']}): decode {speed[fp8]:,.0f} tokens/s in {fp8} vs {speed['bf16']:,.0f} in "
            f"BF16 at batch {batch} ({speed[fp8] / speed['bf16']:.2f}x)")
    delta = (read_json(run / "results.json", {}).get("quality") or {}).get("delta_fp8_minus_bf16") or {}
    shown = [k for k in delta if _headline(k, set(delta))]
    if shown:
        line += "; quality, FP8 minus BF16: " + ", ".join(f"{k} {_fmt(delta[k], signed=True)}" for k in shown)
    return line


def _headline(metric: str, siblings: set[str]) -> bool:
    """Whether a metric makes the summary: bits per byte speaks for the perplexities beside it
    (byte, word, token), and counts of tokens are not results."""
    name = metric.rsplit("/", 1)[-1]
    if name.endswith("tokens"):
        return False
    has_bpb = any(other.rsplit("/", 1)[-1].endswith("bits_per_byte") for other in siblings)
    return not (has_bpb and "perplexity" in name)


def _count(n: Any) -> str:
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


def _fmt(value: Any, signed: bool = False) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:+.4g}" if signed else f"{number:.4g}"
