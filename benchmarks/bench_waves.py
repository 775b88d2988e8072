"""An array under a submit limit: the same smoke array with and without a QOS cap.

    python benchmarks/bench_waves.py [--tasks 500] [--repeats 2] [--limited limited] [--free normal]

Runs the smoke recipe's `tasks`-task array (one hash-chain step per task, then the reduce
job) in QOS `--free` (no limit) and in QOS `--limited` (slurm/up.sh: MaxSubmitJobsPerUser=60),
alternating `repeats` times so a busy machine slows both alike. Prints, per run, the wall
time from `aistack run` to the reduce job's DONE, the number of waves and the most jobs
queued at once in the limited QOS; then the medians and their ratio. Nothing waits on this
machine between waves: each is submitted by a follow-up job.
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


def queued(qos: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-q", qos, "-o", "%i"], capture_output=True, text=True).stdout
    return len(out.split())


def one_run(root: Path, qos: str, tasks: int, i: int, watch_qos: str) -> dict:
    from aistack.launch import launcher

    start = time.time()
    result = launcher.launch(SMOKE, [f"output.root={root}", f"name=waves-{qos}-{i}", f"smoke.tasks={tasks}",
                                     "smoke.steps=1", "smoke.step_seconds=0", f"resources.array_parallelism={tasks}",
                                     f"resources.qos={qos}", "tracking.mode=disabled"], on="slurm")
    peak = 0
    deadline = start + 3600
    while not result.run.is_done("reduce", 0):
        if time.time() > deadline:
            raise TimeoutError(f"{qos}: not done after an hour")
        peak = max(peak, queued(watch_qos))
        time.sleep(0.5)
    wall = time.time() - start
    waves = sum(1 for line in result.run.submissions_file.read_text().splitlines() if json.loads(line)["job"] == "map")
    return {"qos": qos, "wall_s": wall, "waves": waves, "peak_queued": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limited", default="limited")
    parser.add_argument("--free", default="normal")
    args = parser.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-waves-") as tmp:
        for i in range(args.repeats):
            for qos in (args.limited, args.free):
                row = one_run(Path(tmp), qos, args.tasks, i, args.limited)
                rows.append(row)
                print(f"{row['qos']:>8}: {args.tasks} tasks in {row['wall_s']:.1f} s, {row['waves']} array(s), "
                      f"at most {row['peak_queued']} queued in QOS {args.limited}", flush=True)
    limited = statistics.median(r["wall_s"] for r in rows if r["qos"] == args.limited)
    free = statistics.median(r["wall_s"] for r in rows if r["qos"] == args.free)
    print(f"median wall time: {limited:.1f} s under the submit limit ({args.limited}) vs {free:.1f} s without "
          f"({args.free}): ratio {limited / free:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    main()
