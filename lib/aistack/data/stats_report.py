"""A data run's report: the merged stats table and the funnel plot, from the run directory.

Used by the gather job at the end of a run and by `aistack report RUN` (which makes
the files again if they are missing). The table's `warnings` name each task that read
WARC records but kept none of them ("job filter: task 3 (input files ...) read ...").
A run whose whole input made no document fails in the gather job, after its table is
written (`no_documents` says why): an empty stage is a mistake in the recipe or the data,
and the stages after it would train or evaluate on nothing.
"""

from __future__ import annotations


from aistack.data.funnel import plot_funnel
from aistack.data.stats import funnel_points, job_summary, merge_task_rows, nothing_kept, write_tables
from aistack.plan_records import read_plan_jobs, read_plan_kind
from aistack.rundir import RunDir, read_json

# The job whose steps make the funnel, per kind.
FUNNEL_JOB = {"filter": "filter", "dedup": "filter", "tokenize": "tokenize"}


def build_report(run: RunDir) -> dict:
    kind = read_plan_kind(run)
    jobs, warnings = [], []
    for job in read_plan_jobs(run):
        if job.entry == "data_stats":
            continue
        results = [run.task_result(job.name, t) for t in range(job.tasks)]
        missing = [t for t, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"job {job.name} of run {run.name}: tasks {missing} have not finished")
        results = [r["result"] for r in results]
        warnings += [f"job {job.name}: {w}" for r in results for w in r.get("warnings", [])]
        summary = job_summary(job.name, results)
        summary["steps"] = merge_task_rows([r.get("steps", []) for r in results])
        jobs.append(summary)
    table = {"run": run.name, "kind": kind, "jobs": jobs, "warnings": warnings}
    json_path, csv_path = write_tables(run.path, table)
    funnel_job = next((j for j in jobs if j["job"] == FUNNEL_JOB.get(kind)), jobs[-1] if jobs else None)
    points = funnel_points(funnel_job["steps"]) if funnel_job else []
    funnel = plot_funnel(points or [("input", 0)], run.path / "funnel.png", f"{kind} {run.name}: documents kept")
    return {"table": table, "json": json_path, "csv": csv_path, "funnel": funnel}


def load_report(run: RunDir) -> dict:
    """The report files of a run, made if missing."""
    table = read_json(run.path / "stats.json")
    if table is None or not (run.path / "funnel.png").exists():
        return build_report(run)
    return {"table": table, "json": run.path / "stats.json", "csv": run.path / "stats.csv", "funnel": run.path / "funnel.png"}


class NoDocuments(RuntimeError):
    """The whole input of a data run made no document."""


def no_documents(table: dict) -> str | None:
    """Why a data run's whole input made no document; None when its reader made some.

    The first job with a reader step reads the run's input (filter, signatures, tokenize).
    """
    for job in table["jobs"]:
        reader = next((s for s in job.get("steps", []) if s.get("type") == "reader"), None)
        if reader is None:
            continue
        if reader["documents_out"]:
            return None
        why = []
        if reader.get("records"):
            why.append(nothing_kept(reader["records"], reader.get("skipped_by", {}), reader.get("not_html_types", {})))
        if bad := reader.get("dropped_by", {}).get("bad_files"):
            why.append(f"{bad} bad input files skipped (on_bad_file: skip)")
        tasks = f"{job['tasks']} task" + ("s" if job["tasks"] != 1 else "")
        return (f"job {job['job']} read no document from the whole input ({tasks}): "
                + ("; ".join(why) if why else "the input files hold no records"))
    return None
