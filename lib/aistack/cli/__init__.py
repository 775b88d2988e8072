"""The `aistack` command: run, plan, status, logs, cancel, sync.

Imports stay lazy so `aistack plan` and `--dry-run` answer in well under a second.
Exit codes: 0 ok, 1 a job failed, 2 bad input (recipe, override, profile, run name),
128 + the signal's number when SIGINT (130), SIGTERM (143) or SIGHUP (129) stopped a run here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from aistack import lean_imports


def _width(stream) -> int | None:
    """A terminal's own width; piped or logged output is not cut at rich's default of 80
    columns (stage names became `pretra…`): tables take the width their content needs."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 240


console = Console(highlight=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, width=_width(sys.stderr))


def _runs_root() -> str:
    """Where run names are looked up: the folder recipes write to (their `output.root` reads
    AISTACK_RUNS), else ./runs."""
    return os.environ.get("AISTACK_RUNS") or "runs"


def main(argv: list[str] | None = None) -> int:
    lean_imports.install()  # export, report: commands that load a model import megatron
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow options (`aistack run r.yaml --on local train.lr=1e-3`).
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from rich.markup import escape

    from aistack.launch.executor import SubmitRefused
    from aistack.recipe.errors import RecipeError
    from aistack.rundir import RunBusy

    # Messages quote recipe values: escaped, so that "[/]" in a value is shown, not taken as markup.
    try:
        return args.func(args)
    except RecipeError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    except FileNotFoundError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    except (SubmitRefused, RunBusy) as err:
        err_console.print(f"[bold red]refused:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    except KeyboardInterrupt:  # not a run here (those stop their tasks: _run_here)
        _say("interrupted")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aistack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_args(p):
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("overrides", nargs="*", help="dot-overrides such as train.lr=3e-4 resources.nodes=4")
        p.add_argument("--on", default=None, help="local | slurm | a cluster profile name or file (default: slurm if sbatch is installed, else local)")

    p = sub.add_parser("run", help="run a recipe (submits to Slurm, or runs here with --on local)")
    recipe_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and sbatch scripts; submit nothing")
    p.add_argument("--wait", action="store_true", help="on Slurm: follow the run until every task has finished")
    p.add_argument("--rehearse", action="store_true",
                   help="submit the same jobs, each task a stand-in that checks its ranks, GPUs, input shard and "
                        "checkpoint in seconds (run dirs under OUTPUT_ROOT/rehearsals; the real run is untouched)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="show the resolved recipe, its jobs, resources and sbatch scripts")
    recipe_args(p)
    p.set_defaults(func=cmd_plan)

    for name, helptext, func in (
        ("status", "each job and array task of a run with its state", cmd_status),
        ("cancel", "cancel every job of a run", cmd_cancel),
        ("sync", "upload a run's offline W&B files (run from a node with network access)", cmd_sync),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("run", nargs="?" if name == "status" else None, help="run directory, or its name under --root")
        p.add_argument("--root", default=_runs_root(), help="where run directories are (default: $AISTACK_RUNS, else ./runs)")
        p.set_defaults(func=func)

    p = sub.add_parser("report", help="a data run's stats table and funnel plot (made if missing)")
    p.add_argument("run", help="run directory, or its name under --root")
    p.add_argument("--root", default=_runs_root(), help="where run directories are (default: $AISTACK_RUNS, else ./runs)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="a training run's last checkpoint as a Hugging Face folder or a NeMo 2 checkpoint")
    p.add_argument("run", help="run directory, or its name under --root")
    p.add_argument("--to", choices=["hf", "nemo"], default="hf")
    p.add_argument("--out", default=None, help="output folder (default: RUN/export-hf or RUN/export-nemo)")
    p.add_argument("--root", default=_runs_root(), help="where run directories are (default: $AISTACK_RUNS, else ./runs)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("logs", help="print a task's stdout and stderr")
    p.add_argument("run")
    p.add_argument("--job", default=None, help="job of the run (default: the first)")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--root", default=_runs_root(), help="where run directories are (default: $AISTACK_RUNS, else ./runs)")
    p.set_defaults(func=cmd_logs)
    return parser


# --- run / plan ---------------------------------------------------------------------


def cmd_run(args) -> int:
    from aistack.launch.launcher import start
    from aistack.launch.profile import default_target, load_profile
    from aistack.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides)
    profile = load_profile(args.on or default_target())
    rehearse = getattr(args, "rehearse", False)
    if args.dry_run:
        _print_plan(start(loaded, profile, dry_run=True, rehearse=rehearse), scripts=True)
        console.print("[yellow]dry run: nothing was submitted[/]")
        return 0
    if profile.executor == "local":
        code = _run_here(lambda: _with_progress(lambda progress: start(loaded, profile, progress=progress, announce=_announce,
                                                                         rehearse=rehearse)))
        return _rehearsal_outcome(code, loaded, profile) if rehearse else code
    result = start(loaded, profile, announce=_announce, rehearse=rehearse)
    _print_submissions(result)
    if not result.submitted and not result.followup and not any(o.in_flight for o in result.outcomes):
        return 0  # every task done already
    if not args.wait:
        console.print(f"follow it with: aistack status {result.pipeline.top.path}")
        return 0
    if result.pipeline.is_single:
        rows = _follow(result)
        _print_status(rows)
        code = 0 if all(r.state == "COMPLETED" for r in rows) else 1
    else:
        states = _follow_pipeline(result.pipeline.dir)
        _print_stages(states)
        code = 0 if all(s.state == "COMPLETED" for s in states) else 1
    return _print_findings(result.pipeline, code) if rehearse else code


def _rehearsal_outcome(code: int, loaded, profile) -> int:
    """After a rehearsal here: what each job's stand-ins found."""
    from aistack.launch.rehearsal import rehearsal_of
    from aistack.launch.stages import resolve

    return _print_findings(rehearsal_of(resolve(loaded)), code) if code in (0, 1) else code


def _print_findings(pipeline, code: int) -> int:
    """One line per job of a rehearsal: passed, failed (why), not run; what a task saw."""
    from rich.markup import escape

    from aistack.launch.status import rehearsal_findings
    from aistack.plan_records import PlannedJob

    rows = rehearsal_findings([(stage.name, stage.run, [PlannedJob(j.name, j.num_tasks) for j in stage.plan.jobs])
                               for stage in pipeline.stages])
    for row in rows:
        where = f"{row['stage']}/{row['job']}" if not pipeline.is_single else row["job"]
        seen = row["seen"] or {}
        ranks = seen.get("ranks") or {}
        saw = (f"ranks {ranks.get('rehearsed')} of {ranks.get('planned_world_size')} on {len(ranks.get('nodes', []))} nodes"
               if ranks else "")
        colour = "red" if row["failed"] else ("yellow" if row["not_run"] else "green")
        console.print(f"[{colour}]rehearsal[/] {escape(where)}: {row['passed']}/{row['tasks']} passed"
                      + (f", {row['failed']} failed" if row["failed"] else "")
                      + (f", {row['not_run']} not run" if row["not_run"] else "") + (f"; {saw}" if saw else ""), soft_wrap=True)
        for error in row["errors"]:
            err_console.print(f"  [red]{escape(error)}[/]", soft_wrap=True)
    failed = any(row["failed"] or row["not_run"] for row in rows)
    return 1 if failed else code


def _run_here(work) -> int:
    """A run on this machine that SIGINT, SIGTERM or SIGHUP stops: the local executor ends
    its running tasks (process groups and all) and records them INTERRUPTED; finished tasks
    keep their DONE markers. One line says so; the exit code is 128 + the signal's number."""
    import signal

    from aistack.launch.local.processes import Interrupted

    caught: list[int] = []

    def interrupt(signum, frame):
        if caught:  # already stopping (a second Ctrl-C, or a signal sent to the whole group)
            return
        caught.append(signum)
        raise Interrupted(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, interrupt) for sig in handled}
    try:
        result = work()
    except Interrupted as stop:
        _say(_stopped_line(stop))
        return 128 + stop.signum
    except OSError:
        if not caught:
            raise
        return 128 + caught[0]  # stopped, and then the terminal was gone (a hangup): nothing to say it on
    finally:
        if not caught:  # once interrupted, later signals stay ignored until the exit
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return _local_outcome(result)


def _stopped_line(stop) -> str:
    parts = []
    for run_path, job, tasks in stop.stopped:
        ids = ", ".join(map(str, tasks))
        parts.append(f"job {job} task{'s' if len(tasks) > 1 else ''} {ids} of {Path(run_path).name}")
    what = f"stopped {'; '.join(parts)} (INTERRUPTED)" if parts else "no task was running"
    return f"interrupted by {stop.signal_name}: {what}; finished tasks are kept: rerun the same command to resume"


def _say(line: str) -> None:
    """One line on stderr; after a hangup there may be no terminal left to print on."""
    from rich.markup import escape

    try:
        err_console.print(f"[bold yellow]{escape(line)}[/]", soft_wrap=True)
    except OSError:
        pass


def cmd_plan(args) -> int:
    args.dry_run = True
    return cmd_run(args)


def _announce(pipeline, profile) -> None:
    where = f"on [bold]{profile.name}[/] ({profile.executor})"
    if pipeline.is_single:
        stage = pipeline.stages[0]
        console.print(f"run [bold]{stage.run.name}[/] ({stage.kind}) {where} -> {stage.run.path}")
    else:
        console.print(f"pipeline [bold]{pipeline.loaded.recipe.name}[/] ({len(pipeline.stages)} stages) {where} -> {pipeline.dir.path}")


def _local_outcome(result) -> int:
    failed = [o for o in result.outcomes if o.error]
    for outcome in failed:
        label = "failed" if result.pipeline.is_single else f"stage {outcome.stage}"
        err_console.print(f"[bold red]{label}:[/] {outcome.error}", soft_wrap=True)
    if result.pipeline.is_single:
        if not failed and not result.submitted:
            console.print("every task of this run is already done: nothing to run")
        if not failed:
            console.print(f"[green]done[/]: {result.run.path}")
        _print_data_warnings(result)
        return 1 if failed else 0
    _print_stages(_stage_states(result.pipeline.dir))
    _print_data_warnings(result)
    report = result.pipeline.dir.path / "report.md"
    if not failed and report.exists():
        console.print(f"[green]done[/]: report {report} (and report.html)")
    return 1 if failed else 0


def _print_data_warnings(result) -> None:
    """A data stage's tasks that read WARC records and kept none (from its stats.json)."""
    from aistack.rundir import read_json

    for stage in result.pipeline.stages:
        _print_warnings((read_json(stage.run.path / "stats.json") or {}).get("warnings", []))


def _print_warnings(warnings: list[str]) -> None:
    from rich.markup import escape

    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def _print_submissions(result) -> None:
    single = result.pipeline.is_single
    if single and not result.submitted and not result.followup and not result.outcomes[0].in_flight:
        console.print("every task of this run is already done: nothing to submit")
    for outcome in result.outcomes:
        if outcome.in_flight:
            console.print(f"  {outcome.stage}: already queued or running (Slurm {', '.join(outcome.in_flight)})")
        elif not outcome.submitted and not outcome.waiting and not single:
            console.print(f"  {outcome.stage}: done, nothing to submit")
        for item in outcome.submitted:
            what = f"array of {len(item.task_ids)}" if item.is_array else "job"
            if single:
                console.print(f"  submitted {item.job}: Slurm {what} {item.job_id}")
                continue
            after = f" after {','.join(outcome.waits_on)}" if outcome.waits_on and item is outcome.submitted[0] else ""
            console.print(f"  {outcome.stage}/{item.job}: Slurm {what} {item.job_id}{after}")
        for job, left in outcome.waiting.items():
            console.print(f"  {job if single else f'{outcome.stage}/{job}'}: {left} task{'s' if left != 1 else ''} waiting "
                          "for a later wave (the cluster's submit limit)")
    if result.followup:
        console.print(f"  Slurm job {result.followup} submits the next wave when this one ends (nothing waits here)")


def _with_progress(work):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:

        def on_progress(job: str, finished: int, total: int) -> None:
            if job not in bars:
                bars[job] = progress.add_task(job, total=total)
            progress.update(bars[job], completed=finished)

        return work(on_progress)


def _follow(result):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from aistack.launch import launcher
    from aistack.launch.executor import FINISHED

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        bars = {j.name: progress.add_task(j.name, total=j.num_tasks) for j in result.plan.jobs}

        def on_poll(rows):
            for name, bar in bars.items():
                finished = sum(1 for r in rows if r.job == name and r.state in FINISHED)
                progress.update(bar, completed=finished)

        return launcher.wait(result, on_poll=on_poll)


def _stage_states(pipeline_dir):
    from aistack.launch.status import stage_states
    from aistack.plan_records import read_stage_records

    return stage_states(read_stage_records(pipeline_dir))


def _print_stages(states) -> None:
    from rich.markup import escape

    from aistack.cli.show import print_status

    print_status(console, states)
    for stage in states:
        for note in stage.notes:
            console.print(f"[yellow]stage {stage.name}, {escape(note)}[/]", soft_wrap=True)


def _follow_pipeline(pipeline_dir, poll_s: float = 5.0, timeout_s: float = 6 * 3600):
    import time

    from aistack.launch.launcher import wait_pipeline

    def on_poll(states) -> None:
        line = "  ".join(f"{s.name} {s.done}/{s.total} {s.state.lower()}" for s in states)
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {line}", soft_wrap=True)

    return wait_pipeline(pipeline_dir, timeout_s, poll_s, on_poll)


def _print_plan(result, scripts: bool) -> None:
    import yaml
    from rich.table import Table

    if not result.pipeline.is_single:
        from aistack.cli.show import print_plan

        print_plan(console, result.pipeline, result.outcomes, result.profile, scripts=scripts)
        return
    console.rule(f"recipe {result.loaded.path} (resolved)")
    console.print(yaml.safe_dump(result.loaded.data, sort_keys=False).rstrip(), markup=False, soft_wrap=True)
    table = Table(title=f"plan: run {result.run.name} on profile {result.profile.name}")
    for col in ("job", "tasks", "arrays", "nodes", "tasks/node", "gpus/node", "cpus/task", "time (min)", "after"):
        table.add_column(col)
    for job in result.plan.jobs:
        parts = [s for s in result.submitted if s.job == job.name]
        arrays = ", ".join(str(len(s.task_ids)) for s in parts) if job.is_array else "-"
        r = job.resources
        table.add_row(
            job.name, str(job.num_tasks), arrays, str(r.nodes), str(r.ntasks_per_node), str(r.gpus_per_node),
            str(r.cpus_per_task), str(r.time), ",".join(job.depends_on) or "-",
        )
    console.print(table)
    gpu_h, core_h = sum(j.gpu_hours for j in result.plan.jobs), sum(j.cpu_core_hours for j in result.plan.jobs)
    console.print(f"at the time limits: at most {gpu_h:,.1f} GPU-hours, {core_h:,.1f} CPU core-hours (CPU-only jobs)")
    _print_estimates(result)
    if result.loaded.kind == "bench":  # inference memory per device and the smallest layout that fits
        from aistack.bench import inference_plan

        inference_plan.print_plan(console, inference_plan.of_recipe(result.loaded.recipe, result.profile))
    if scripts:
        shown: set[str] = set()
        for item in result.submitted:
            if item.job in shown:
                continue
            shown.add(item.job)
            console.rule(f"sbatch script of job {item.job}")
            console.print(item.sbatch, markup=False, soft_wrap=True)


def _print_estimates(result) -> None:
    from rich.table import Table

    from aistack.recipe.kinds import spec_for

    estimate = spec_for(result.loaded.kind).estimate
    if estimate is None:
        return
    est = estimate(result.loaded.recipe, str(result.loaded.path), str(result.profile.sbatch_defaults.get("constraint", "")))
    table = Table(title="estimates (per device: the pipeline stage with the most memory)")
    table.add_column("figure")
    table.add_column("value")
    for name, value in est.rows:
        table.add_row(name, value)
    console.print(table)
    for warning in est.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)


# --- status / logs / cancel / sync --------------------------------------------------


def _find(args):
    from aistack.rundir import find_run

    return find_run(args.run, args.root)


def cmd_status(args) -> int:
    from aistack.launch.status import run_status
    from aistack.plan_records import read_plan_jobs

    if args.run is None:
        root = Path(args.root)
        runs = sorted((p for p in root.glob("*/recipe.yaml")), key=lambda p: p.stat().st_mtime) if root.exists() else []
        if not runs:
            console.print(f"no runs under {root}/")
            return 0
        for recipe in runs:
            console.print(recipe.parent.name)
        return 0
    run = _find(args)
    if (run.path / "stages.json").exists():
        _print_stages(_stage_states(run))
        return 0
    rows = run_status(run, read_plan_jobs(run))
    _print_status(rows)
    from aistack.track.lineage import describe  # a training run: the data it was trained on

    if line := describe(run.path):
        console.print(line, markup=False, soft_wrap=True)
    return 0


def _print_status(rows) -> None:
    from collections import Counter

    from rich.markup import escape
    from rich.table import Table

    from aistack.launch.status import task_ranges

    table = Table()
    for col in ("job", "task", "executor", "job id", "state", "attempt"):
        table.add_column(col)
    for r in task_ranges(rows):  # a 10,000-task array in a few lines, not 10,000
        color = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow", "WAITING": "yellow"}.get(r.state, "red")
        table.add_row(r.job, r.tasks, r.executor, r.job_id, f"[{color}]{r.state}[/]", str(r.attempt))
    console.print(table)
    counts = Counter(r.state for r in rows)
    console.print("  ".join(f"{state}: {n}" for state, n in sorted(counts.items())))
    jobs = list(dict.fromkeys(r.job for r in rows))
    if len(rows) > len(jobs):  # arrays: where each stands (WAITING: for a later wave, under a submit limit)
        for job in jobs:
            per_job = Counter(r.state for r in rows if r.job == job)
            console.print(f"  {job}: " + "  ".join(f"{state} {n}" for state, n in sorted(per_job.items())))
    for r in rows:  # below the table: an error message does not fit a column
        if r.note:
            console.print(f"[yellow]{r.job} task {r.task_id}:[/] {escape(r.note)}", soft_wrap=True)


def cmd_logs(args) -> int:
    from aistack.launch.slurm.executor import log_paths
    from aistack.plan_records import read_plan_jobs

    run = _find(args)
    job = args.job or read_plan_jobs(run)[0].name
    latest = run.latest_submissions()
    if (job, args.task) not in latest:
        raise FileNotFoundError(f"task {args.task} of job {job} in run {run.name} was never submitted")
    record, index = latest[(job, args.task)]
    if record["executor"] == "local":
        import submitit

        paths = submitit.core.utils.JobPaths(run.log_dir(job), job_id=str(record["job_id"]), task_id=0)
        out, err = paths.stdout, paths.stderr
    else:
        out, err = log_paths(run, job, record["job_id"], index)
    for label, path in (("stdout", out), ("stderr", err)):
        console.rule(f"{label}: {path}")
        console.print(path.read_text() if path.exists() else "(no file yet)", markup=False, soft_wrap=True)
    return 0


def cmd_report(args) -> int:
    from rich.table import Table

    from aistack.data.stats_report import load_report

    report = load_report(_find(args))
    for job in report["table"]["jobs"]:
        table = Table(title=f"job {job['job']}: {job['tasks']} tasks, {job['documents_per_s_per_task']:.1f} documents/s per task")
        for col in ("step", "documents in", "out", "dropped", "why"):
            table.add_column(col)
        for row in job["steps"]:
            why = ", ".join(f"{k} {v}" for k, v in row["dropped_by"].items())
            table.add_row(row["name"], str(row["documents_in"]), str(row["documents_out"]), str(row["dropped"]), why)
        console.print(table)
    _print_warnings(report["table"].get("warnings", []))
    console.print(f"stats: {report['json']}  {report['csv']}")
    console.print(f"funnel: {report['funnel']}")
    return 0


def cmd_export(args) -> int:
    # export_hf first: it imports transformers, which fails once the CPU compat layer that
    # loading a checkpoint installs has replaced torch.cuda.Stream.
    from aistack.model.export_hf import export_hf
    from aistack.model.checkpoint import load_full_state_dict
    from aistack.model.estimate import tokenizer_file, vocab_size_of
    from aistack.recipe import RecipeError, load_recipe

    run = _find(args)
    recipe = load_recipe(run.recipe_file).recipe
    vocab = vocab_size_of(recipe) if hasattr(recipe, "model") else None
    if vocab is None:
        raise RecipeError.single(str(run.recipe_file), "model.vocab_size", None,
                                 "a vocabulary size (or a data.tokenizer file that exists) to export")
    # SFT and distillation on chat records: the chat format the model was trained on goes with it.
    chat_data = getattr(recipe, "sequence", None) or getattr(recipe, "chat", None) or getattr(recipe, "data", None)
    chat_template = None
    if getattr(chat_data, "chat_template", None):
        from aistack.post.chat import load_chat_tokenizer

        chat_template = load_chat_tokenizer(chat_data.tokenizer, chat_data.chat_template).template_source
    if args.to == "nemo":
        from aistack.model.checkpoint import load_run_model
        from aistack.model.nemo import export_nemo

        if recipe.model.arch != "llama":
            raise RecipeError.single(str(run.recipe_file), "model.arch", recipe.model.arch, "llama (--to nemo writes NeMo's LlamaModel)")
        if tokenizer_file(recipe) is None:
            raise RecipeError.single(str(run.recipe_file), "data.tokenizer", None,
                                     "a tokenizer file (a NeMo checkpoint's context holds its tokenizer)")

        out = export_nemo(load_run_model(run.path), recipe.model, vocab, args.out or run.path / "export-nemo",
                          tokenizer_json=tokenizer_file(recipe), chat_template=chat_template)
        console.print(f"exported: {out}")
        return 0
    state = load_full_state_dict(run.path)  # TP=1/PP=1 names, gathered from the run's latest checkpoint
    out = export_hf(state, recipe.model, vocab, args.out or run.path / "export-hf", tokenizer_json=tokenizer_file(recipe),
                    chat_template=chat_template)
    console.print(f"exported: {out}")
    return 0


def cmd_cancel(args) -> int:
    from aistack.launch.status import cancel_run

    run = _find(args)
    runs = [run]
    if (run.path / "stages.json").exists():  # a pipeline: every stage's run
        from aistack.plan_records import read_stage_records

        runs = [stage.run for stage in read_stage_records(run) if stage.run.path.exists()]
    results = [cancel_run(r) for r in runs]
    cancelled = [c for r in results for c in r.cancelled]
    elsewhere = [e for r in results for e in r.elsewhere]
    if cancelled or not elsewhere:
        console.print(f"cancelled: {', '.join(cancelled) if cancelled else 'nothing was running'}", soft_wrap=True)
    not_ours = [n for r in results for n in r.not_ours]
    if not_ours:
        console.print(f"[yellow]left alone: Slurm ids this run recorded now name other jobs: {', '.join(not_ours)}[/]",
                      soft_wrap=True)
    if elsewhere:
        err_console.print(f"[bold red]not cancelled:[/] running on another host, cannot cancel from here (run "
                          f"`aistack cancel` there): {', '.join(elsewhere)}", soft_wrap=True)
        return 1
    return 0


def cmd_sync(args) -> int:
    """Upload a run's offline W&B runs, or every stage's of a pipeline (aistack.track.sync)."""
    from rich.markup import escape

    from aistack.track.sync import OK, sync

    result = sync(_find(args))
    for i, line in enumerate(result.lines):  # per stage, then the outcome (on stderr when it failed)
        last_failed = result.code != OK and i == len(result.lines) - 1
        (err_console if last_failed else console).print(escape(line), soft_wrap=True)
    return result.code

