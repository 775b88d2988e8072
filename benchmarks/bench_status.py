"""How long `aistack status` takes on a large run: a run directory of --tasks tasks (arrays
split at 1001, as Slurm's MaxArraySize splits them), each with the files a finished task
leaves (state.json, DONE), made here without a cluster; then `aistack status RUN` as a
user types it, --repeats times, beside `ls -R` of the same folder (the floor: one pass
over the directory tree).

    python benchmarks/bench_status.py [--tasks 10000] [--repeats 5]

Prints the median wall time of each and their ratio. Every task is finished, so no sacct
is asked: what is measured is aistack's own reading of the run directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "examples" / "smoke.yaml"
ARRAY = 1001


def make_run(root: Path, tasks: int) -> Path:
    from aistack.launch.plan import make_plan, plan_summary
    from aistack.recipe import load_recipe
    from aistack.rundir import PLAN_FILE, RunDir, atomic_write_json

    loaded = load_recipe(SMOKE, [f"output.root={root}", f"smoke.tasks={tasks}", "tracking.mode=disabled"])
    plan = make_plan(loaded)
    run = RunDir.for_recipe(loaded)
    run.path.mkdir(parents=True)
    run.write_recipe(loaded)
    atomic_write_json(run.path / PLAN_FILE, plan_summary(plan, "bench"))
    job_id = 100_000
    now = time.time()
    for job in plan.jobs:
        for first in range(0, job.num_tasks, ARRAY):
            group = list(range(first, min(first + ARRAY, job.num_tasks)))
            job_id += 1
            run.record_submission({"job": job.name, "executor": "slurm", "job_id": str(job_id), "task_ids": group,
                                   "array": True, "time": now, "launch": "bench"})
            for index, task in enumerate(group):
                run.set_task_state(job.name, task, "RUNNING", attempt=0, started_at=now + task * 0.01,
                                   job_id=f"{job_id}_{index}")
                atomic_write_json(run.done_file(job.name, task), {"result": {"task": task}, "finished_at": now + task * 0.01 + 1},
                                  durable=False)
    return run.path


def timed(command: list[str], repeats: int, env: dict[str, str] | None = None) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="aistack-bench-status-"))
    try:
        start = time.perf_counter()
        run = make_run(root, args.tasks)
        print(f"run directory of {args.tasks} tasks (+1 reduce) made in {time.perf_counter() - start:.1f} s: {run}", flush=True)
        env = {**os.environ, "AISTACK_RUNS": str(root)}
        floor = timed(["ls", "-R", str(run)], args.repeats)
        status = timed([sys.executable, "-m", "aistack.cli", "status", str(run)], args.repeats, env)
        print(f"`aistack status`: median {statistics.median(status):.2f} s (runs: {', '.join(f'{s:.2f}' for s in status)})")
        print(f"`ls -R` (one pass over the tree): median {statistics.median(floor):.2f} s")
        print(f"ratio {statistics.median(status) / statistics.median(floor):.1f}x; goal: under 2 s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
