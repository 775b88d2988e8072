"""A pipeline's report: one page over its stages' outputs, as report.md and report.html.

Sections: what the pipeline achieved (report/summary.py), the stages (kind, run directory,
tasks, time), each data stage's funnel (one table over its jobs) and plot, the training stages' loss curves, the evaluation table and the FP8
benchmark tables. Each section is read from the files the stage's own jobs wrote; a
stage whose outputs are missing is reported as such, never invented.
"""

from __future__ import annotations

import html
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aistack.recipe.kinds import spec_for
from aistack.report.compare import STDERR, clear_best
from aistack.report.seeds import pool_seeds
from aistack.report.results import csv_rows, number
from aistack.plan_records import elapsed, read_plan_jobs
from aistack.rundir import RunDir, atomic_write_text, read_json
from aistack.track.metrics import read_metrics


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[list[list[str]]] = field(default_factory=list)  # header row first
    images: list[Path] = field(default_factory=list)


def build(title: str, stages: list[dict[str, str]], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each kind names the section it feeds (KindSpec.report).
    feeds = {section: [s for s in stages if spec_for(s["kind"]).report == section]
             for section in ("data", "training", "evaluation", "benchmark")}
    from aistack.report.summary import summary_lines

    results = Section("Results", text=summary_lines(stages, model_labels(stages)))
    sections = ([results] if results.text else []) + [_overview(stages)]
    sections += [_data_section(s) for s in feeds["data"]]
    if feeds["training"]:
        sections.append(_training_section(feeds["training"], out_dir))
    if len(feeds["evaluation"]) > 1:  # a pipeline's variants: every model they made in one table
        sections.append(_compared_section(feeds["evaluation"], stages))
    sections += [_eval_section(s, stages) for s in feeds["evaluation"]]
    sections += [_bench_section(s) for s in feeds["benchmark"]]
    images = _copy_images(sections, out_dir)
    md = out_dir / "report.md"
    page = out_dir / "report.html"
    atomic_write_text(md, _markdown(title, sections, images))
    atomic_write_text(page, _html(title, sections, images))
    return {"markdown": str(md), "html": str(page), "sections": [s.title for s in sections], "images": len(images)}


# --- sections -------------------------------------------------------------------------


def _overview(stages: list[dict[str, str]]) -> Section:
    rows = [["stage", "kind", "run", "tasks done", "elapsed (s)"]]
    for s in stages:
        run = RunDir(Path(s["run"]))
        jobs = read_plan_jobs(run, missing_ok=True)
        total = sum(j.tasks for j in jobs)
        done = sum(run.is_done(j.name, t) for j in jobs for t in range(j.tasks))
        rows.append([s["name"], s["kind"], run.name, f"{done}/{total}", _fmt(elapsed(run, jobs))])
    return Section("Stages", tables=[rows])


def _data_section(stage: dict[str, str]) -> Section:
    from aistack.data.stats_report import load_report

    section = Section(f"Data: {stage['name']} ({stage['kind']})")
    try:
        report = load_report(RunDir(Path(stage["run"])))
    except (RuntimeError, FileNotFoundError) as err:
        section.text.append(f"no stats: {err}")
        return section
    # tasks that read WARC records and kept none (no HTML found where HTML was expected)
    section.text += [f"warning: {w}" for w in report["table"].get("warnings", [])]
    section.tables.append(data_funnel(report["table"]["jobs"]))
    quiet = [f"{job['job']} ({job['tasks']} tasks)" for job in report["table"]["jobs"] if not _moves_documents(job)]
    if quiet:  # MinHash's bucket and cluster jobs, a tokenizer's training, a merge: no document passes them
        section.text.append("jobs that pass no document through: " + ", ".join(quiet))
    section.images.append(Path(report["funnel"]))
    return section


def data_funnel(jobs: list[dict]) -> list[list[str]]:
    """One table for a data stage, its jobs in order: each step that documents pass through
    (a job's steps where nothing comes in and nothing goes out are left out)."""
    rows = [["job", "step", "documents in", "out", "dropped", "why"]]
    for job in jobs:
        for row in job["steps"]:
            if not (row["documents_in"] or row["documents_out"]):
                continue
            why = ", ".join(f"{k} {v}" for k, v in row["dropped_by"].items())
            rows.append([job["job"], row["name"], str(row["documents_in"]), str(row["documents_out"]), str(row["dropped"]), why])
    return rows


def _moves_documents(job: dict) -> bool:
    return any(row["documents_in"] or row["documents_out"] for row in job["steps"])


def _training_section(stages: list[dict[str, str]], out_dir: Path) -> Section:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    section = Section("Training: loss curves")
    rows = [["stage", "kind", "steps", "first loss", "last loss", "last val loss"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in stages:
        records = read_metrics(Path(s["run"]) / "jobs" / "train" / "tasks" / "00000" / "metrics.jsonl")
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if train:
            ax.plot(*zip(*train), label=f"{s['name']} train")
        if val:
            ax.plot(*zip(*val), "o--", label=f"{s['name']} val")
        rows.append([s["name"], s["kind"], str(train[-1][0]) if train else "-", _fmt(train[0][1] if train else None),
                     _fmt(train[-1][1] if train else None), _fmt(val[-1][1] if val else None)])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "loss.png"
    tmp = path.with_name(".loss.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    section.tables.append(rows)
    section.images.append(path)
    return section


def _eval_section(stage: dict[str, str], stages: list[dict[str, str]] | None = None) -> Section:
    """A pivot: one row per evaluated model (its stage's name), one column per task and metric,
    the best value of each column in bold."""
    section = Section(f"Evaluation: {stage['name']}")
    rows = csv_rows(Path(stage["run"]) / "results.csv")
    if rows is None:
        section.text.append("no results.csv: the evaluation has not finished")
        return section
    section.tables.append(eval_pivot(rows, model_labels(stages or [])))
    section.text.append("one row per model, one column per task and metric, ± its standard error where lm-eval gives one; "
                        "bold: the best of a column when it beats every other model by more than two standard errors "
                        "(higher is better for accuracy and exact match, lower for perplexity and bits per byte)")
    return section


def _compared_section(evaluations: list[dict[str, str]], stages: list[dict[str, str]]) -> Section:
    section = Section("Evaluation: the variants compared")
    rows = [row for s in evaluations for row in csv_rows(Path(s["run"]) / "results.csv") or []]
    if not rows:
        section.text.append("no results.csv yet: the evaluations have not finished")
        return section
    rows, pooled = pool_seeds(rows, stages)
    section.tables.append(eval_pivot(rows, {**model_labels(stages), **pooled}))
    section.text.append("every evaluated model of every variant (a stage the variants share is evaluated once per "
                        "variant, with the same figures); bold: a lead of more than two standard errors")
    if pooled:
        section.text.append("a model trained at several seeds is one row: the mean over its seeds, ± the standard error "
                            "of that mean (the seeds' spread); each seed's own figures are in its evaluation's section")
    return section


def model_labels(stages: list[dict[str, str]]) -> dict[str, str]:
    """Run directory name -> the stage's name; a distilled student says whose student it is."""
    labels = {Path(s["run"]).name: s["name"] for s in stages}
    for s in stages:
        if s["kind"] != "distill":
            continue
        recipe = read_yaml(Path(s["run"]) / "recipe.yaml")
        teacher = str((recipe.get("teacher") or {}).get("checkpoint") or "")
        for other in stages:
            if other is not s and teacher and (teacher + "/").startswith(str(Path(other["run"])) + "/"):
                labels[Path(s["run"]).name] = f"{s['name']} (student of {other['name']})"
    return labels


def eval_pivot(rows: list[dict[str, str]], labels: dict[str, str]) -> list[list[str]]:
    """results.csv rows (run, step, task, metric, value) -> [header, *one row per model]. A value
    with a standard error shows it (± se); the best of a column is bold only when it beats every
    other model's by more than two standard errors of the difference (a win, not noise)."""
    columns = sorted({(r["task"], r["metric"]) for r in rows if not r["metric"].endswith(STDERR)})
    models: dict[tuple[str, str], dict[tuple[str, str], float | None]] = {}
    untrained = set()  # evaluate.untrained: a run's model freshly initialised (its checkpoint column says so)
    for r in rows:
        models.setdefault((r["run"], r["step"]), {})[(r["task"], r["metric"])] = number(r["value"])
        if (r.get("checkpoint") or "").startswith("untrained:"):
            untrained.add((r["run"], r["step"]))
    best = {col: value for col in columns if (value := clear_best(col, list(models.values()))) is not None}
    table = [["model", "step", *(f"{task} {metric}" for task, metric in columns)]]
    order = {run: i for i, run in enumerate(labels)}  # the pipeline's stage order
    for (run, step), values in sorted(models.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][0],
                                                                     number(kv[0][1]) or 0)):
        cells = []
        for col in columns:
            value = values.get(col)
            text = _fmt(value)
            if value is not None and (se := values.get((col[0], col[1] + STDERR))) is not None:
                text += f" ± {_fmt(se)}"
            cells.append(f"**{text}**" if value is not None and best.get(col) == value else text)
        label = labels.get(run, run) + (f" (untrained, step {step or 0})" if (run, step) in untrained else "")
        table.append([label, step or "-", *cells])
    return table


def _bench_section(stage: dict[str, str]) -> Section:
    run = Path(stage["run"])
    section = Section(f"FP8 inference benchmark: {stage['name']}")
    rows = csv_rows(run / "results.csv")
    if rows is None:
        section.text.append("no results.csv: the benchmark has not finished")
        return section
    keep = [c for c in ("precision", "fp8_mode", "decode", "batch", "prompt_len", "gen_len", "ttft_ms", "decode_tok_s", "peak_mem_mb")
            if c in rows[0]]
    section.tables.append([keep] + [[r[k] if not number(r[k]) else _fmt(number(r[k])) for k in keep] for r in rows])
    quality = read_json(run / "results.json", {}).get("quality") or {}
    if quality.get("bf16"):
        q_rows = [["metric", "bf16", "fp8", "fp8 - bf16"]]
        for key, value in quality["bf16"].items():
            q_rows.append([key, _fmt(value), _fmt(quality.get("fp8", {}).get(key)),
                           _fmt(quality.get("delta_fp8_minus_bf16", {}).get(key))])
        section.tables.append(q_rows)
    if (run / "report.md").exists():
        section.text.append(f"full benchmark report: {run / 'report.md'}")
    if (run / "throughput.png").exists():
        section.images.append(run / "throughput.png")
    return section


# --- rendering ----------------------------------------------------------------------


def _copy_images(sections: list[Section], out_dir: Path) -> dict[Path, str]:
    """Images next to the report, so the page works when the folder is copied."""
    names: dict[Path, str] = {}
    for section in sections:
        for image in section.images:
            if not image.exists():
                continue
            name = image.name if image.parent == out_dir else f"{Path(image).parents[0].name}-{image.name}"
            if image.parent != out_dir:
                shutil.copyfile(image, out_dir / name)
            names[image] = name
    return names


def _markdown(title: str, sections: list[Section], images: dict[Path, str]) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [*(t + "\n" for t in s.text)]
        for table in s.tables:
            lines.append("| " + " | ".join(table[0]) + " |")
            lines.append("|" + "---|" * len(table[0]))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table[1:]]
            lines.append("")
        lines += [f"![{s.title}]({images[i]})\n" for i in s.images if i in images]
    return "\n".join(lines) + "\n"


def _html(title: str, sections: list[Section], images: dict[Path, str]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}img{max-width:100%}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        parts += [f"<p>{_html_text(t)}</p>" for t in s.text]
        for table in s.tables:
            head = "".join(f"<th>{e(c)}</th>" for c in table[0])
            body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in table[1:])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        parts += [f"<img src='{e(images[i])}' alt='{e(s.title)}'>" for i in s.images if i in images]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_text(text: str) -> str:
    """A line of text with the markdown's **bold** as <b>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def _html_cell(cell: str) -> str:
    if len(cell) > 4 and cell.startswith("**") and cell.endswith("**"):  # the markdown's bold: the best value
        return f"<td><b>{html.escape(cell[2:-2])}</b></td>"
    return f"<td>{html.escape(cell)}</td>"


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return str(int(value)) if isinstance(value, (int, float)) else str(value)
