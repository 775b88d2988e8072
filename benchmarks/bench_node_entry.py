"""What one array task costs on its node, without a cluster: aistack's node entry running
one smoke task vs the plain python one-liner doing the same work (bench_launch's PLAIN_TASK).

    python benchmarks/bench_node_entry.py [--tasks 40] [--importtime]

Both run as a Slurm array task would see it (SLURM_* variables, one CPU), one process per
task, alternating, so a busy machine slows both alike. The figure is each process's own CPU
time (user + system, from wait4) and wall time; medians and the ratio aistack / plain, and
`python -c pass` for the interpreter's own start. This is the per-task part of
bench_launch's 1000-task array ratio (a Slurm array pays it once per task). aistack's modules
are compiled first, as an installed package has them.
--importtime prints the modules the node entry imports, largest first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_launch import PLAIN_TASK, SMOKE, compile_bytecode  # noqa: E402


def planned_tasks_file(root: Path, tasks: int) -> Path:
    """A smoke run planned as `aistack run` plans it, and the tasks file the Slurm executor writes."""
    from aistack.recipe import load_recipe
    from aistack.rundir import RunDir
    from aistack.runtime.node import write_tasks_file
    from aistack.runtime.task import TaskRunner

    loaded = load_recipe(SMOKE, [f"output.root={root}", f"smoke.tasks={tasks}", "smoke.steps=1",
                                 "smoke.step_seconds=0", "tracking.mode=disabled"])
    run = RunDir.for_recipe(loaded)
    run.write_recipe(loaded)
    tasks_file = run.log_dir("map") / "tasks-bench.pkl"
    runner = TaskRunner(str(run.path), "map", "smoke", -1, tasks, False, recipe=run.recipe)
    write_tasks_file(tasks_file, runner, list(range(tasks)), 3)
    return tasks_file


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def slurm_env(index: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": str(1000 + index), "SLURM_ARRAY_JOB_ID": "999",
            "SLURM_ARRAY_TASK_ID": str(index), "SLURM_CPUS_PER_TASK": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    compile_bytecode()
    root = Path(tempfile.mkdtemp(prefix="aistack-node-entry-"))
    tasks_file = planned_tasks_file(root, args.tasks)
    out = root / "plain"
    out.mkdir()
    node = [sys.executable, "-u", "-m", "aistack.runtime.node", str(tasks_file)]
    if args.importtime:
        done = subprocess.run([sys.executable, "-X", "importtime", *node[1:]], env=slurm_env(args.tasks - 1),
                              capture_output=True, text=True, check=True)
        rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:") and "cumulative" not in line]
        for own, total, name in sorted(rows, key=lambda row: -int(row[1]))[:25]:
            print(f"  {int(total) / 1000:7.1f} ms (own {int(own.split(':')[1]) / 1000:5.1f})  {name.rstrip()}")
        args.tasks -= 1
    figures: dict[str, list[tuple[float, float]]] = {"aistack node entry": [], "plain one-liner": [], "python -c pass": []}
    for index in range(args.tasks):
        env = slurm_env(index)
        figures["aistack node entry"].append(timed(node, env))
        figures["plain one-liner"].append(timed([sys.executable, "-c", PLAIN_TASK, str(out)], env))
        figures["python -c pass"].append(timed([sys.executable, "-c", "pass"], env))
    done_markers = sum(1 for _ in tasks_file.parent.parent.glob("tasks/*/DONE"))
    expected = args.tasks + (1 if args.importtime else 0)
    assert done_markers == expected, f"{done_markers} of {expected} tasks done"
    cpu = {name: statistics.median(c for c, _ in runs) for name, runs in figures.items()}
    for name, runs in figures.items():
        print(f"{name:20s} CPU median {cpu[name] * 1000:6.1f} ms (min {min(c for c, _ in runs) * 1000:.1f})  "
              f"wall median {statistics.median(w for _, w in runs) * 1000:6.1f} ms   ({len(runs)} tasks)")
    base = cpu["python -c pass"]
    print(f"ratio aistack / plain (CPU per task): {cpu['aistack node entry'] / cpu['plain one-liner']:.2f}; "
          f"beyond the interpreter's start: {(cpu['aistack node entry'] - base) * 1000:.1f} ms vs "
          f"{(cpu['plain one-liner'] - base) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
