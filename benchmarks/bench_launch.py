"""Launch overhead on a Slurm cluster: aistack vs a plain `sbatch` script doing the same work.

    python benchmarks/bench_launch.py [--repeats 5] [--array 1000] [--array-repeats 1] [--on slurm]

1. Latency: from the call (aistack's launch() / a plain `sbatch --wrap`) to the first
   task running, median over repeats (alternating, each started on an idle queue).
2. Throughput: a 1000-task array from submission to every task done: the smoke recipe
   (hash chain per task, DONE markers, metrics) vs `sbatch --array` running the same hash
   chain in a python one-liner that writes one result file per task. With
   --array-repeats N the two alternate N times (so a busy machine slows both alike) and
   the medians are compared.
Prints one line per figure and the ratio aistack / plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "examples" / "smoke.yaml"

# The same work as jobs/smoke.py for steps=1: one hash-chain step, a JSON result file.
PLAIN_TASK = (
    "import hashlib,json,os,sys;t=int(os.environ.get('SLURM_ARRAY_TASK_ID',0));"
    "d=hashlib.sha256(f'task-{t}:1'.encode()).hexdigest();"
    "open(os.path.join(sys.argv[1],f'{t}.json'),'w').write(json.dumps({'task':t,'digest':d}))"
)


def compile_bytecode() -> None:
    """aistack's modules compiled, as an installed package has them (make venv does it too): an
    editable install without them, where PYTHONDONTWRITEBYTECODE is set, compiles them again in
    every task (20 ms of CPU a task, bench_node_entry.py)."""
    import compileall

    for folder in (REPO / "lib", REPO / "jobs"):
        compileall.compile_dir(folder, quiet=1)


def queue_idle(timeout: float = 300) -> None:
    """Wait until none of this user's jobs is queued, running or completing: a job of the
    previous trial (aistack's reduce job after its map task, a job still completing) would
    share the nodes with the next trial's first task and delay it."""
    wait_for(lambda: not subprocess.run(["squeue", "-h", "--me", "-o", "%i"], capture_output=True,
                                        text=True, check=True).stdout.strip(), timeout=timeout, interval=0.2)


def wait_for(predicate, timeout: float = 1800, interval: float = 0.05) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval)
    raise TimeoutError("benchmark step timed out")


def aistack_first_task_latency(root: Path, on: str, i: int) -> float:
    from aistack.launch import launcher

    start = time.time()
    result = launcher.launch(
        SMOKE, [f"output.root={root}", f"name=lat{i}", "smoke.tasks=1", "smoke.steps=1", "smoke.step_seconds=0", "tracking.mode=disabled"], on=on
    )
    state = result.run.task_dir("map", 0) / "state.json"
    wait_for(state.exists)
    started = json.loads(state.read_text())["started_at"]
    return started - start


def plain_first_task_latency(root: Path, i: int) -> float:
    stamp = root / f"plain-lat-{i}.txt"
    start = time.time()
    subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", f"{sys.executable} -c 'import time;open(\"{stamp}\",\"w\").write(str(time.time()))'"],
        check=True, capture_output=True,
    )
    wait_for(lambda: stamp.exists() and stamp.read_text().strip() != "")
    return float(stamp.read_text()) - start


def aistack_array(root: Path, on: str, n: int, i: int) -> tuple[float, float]:
    """(submission to all done, of which submitting) in seconds."""
    from aistack.launch import launcher

    start = time.time()
    result = launcher.launch(
        SMOKE,
        [f"output.root={root}", f"name=arr{i}", f"smoke.tasks={n}", "smoke.steps=1", "smoke.step_seconds=0",
         f"resources.array_parallelism={n}", "tracking.mode=disabled"],
        on=on,
    )
    submitted = time.time()
    tasks = result.run.job_dir("map") / "tasks"
    wait_for(lambda: sum(1 for _ in tasks.glob("*/DONE")) == n, interval=0.5)
    return time.time() - start, submitted - start


def plain_array(root: Path, n: int, i: int) -> float:
    out = root / f"plain-array-{i}"
    out.mkdir()
    start = time.time()
    subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{n - 1}%{n}", "-o", "/dev/null", "--wrap", f"{sys.executable} -c \"{PLAIN_TASK}\" {out}"],
        check=True, capture_output=True,
    )
    wait_for(lambda: sum(1 for _ in out.glob("*.json")) == n, interval=0.5)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--array", type=int, default=1000)
    parser.add_argument("--array-repeats", type=int, default=1)
    parser.add_argument("--on", default="slurm")
    args = parser.parse_args()
    compile_bytecode()
    with tempfile.TemporaryDirectory(dir=REPO / "runs" if (REPO / "runs").exists() else None) as tmp:
        root = Path(tmp)
        ours, plain = [], []
        for i in range(args.repeats):  # alternating, each on an idle queue
            queue_idle()
            ours.append(aistack_first_task_latency(root, args.on, i))
            queue_idle()
            plain.append(plain_first_task_latency(root, i))
        print(f"first task running: aistack median {statistics.median(ours):.2f} s (min {min(ours):.2f}, max {max(ours):.2f}); "
              f"plain sbatch median {statistics.median(plain):.2f} s (min {min(plain):.2f}, max {max(plain):.2f}); "
              f"ratio {statistics.median(ours) / statistics.median(plain):.2f}")
        ours_arr, submits, plain_arr = [], [], []
        for i in range(args.array_repeats):
            total, submit = aistack_array(root, args.on, args.array, i)
            ours_arr.append(total)
            submits.append(submit)
            plain_arr.append(plain_array(root, args.array, i))
        ours, plain = statistics.median(ours_arr), statistics.median(plain_arr)
        runs = f" (median of {args.array_repeats} alternating runs each)" if args.array_repeats > 1 else ""
        print(f"{args.array}-task array, submission to all done{runs}: "
              f"aistack {ours:.1f} s ({args.array / ours:.1f} tasks/s; submitting {statistics.median(submits):.1f} s); "
              f"plain sbatch --array {plain:.1f} s ({args.array / plain:.1f} tasks/s); ratio {ours / plain:.2f}")


if __name__ == "__main__":
    main()
