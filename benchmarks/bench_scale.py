"""The 1024-GPU pipeline rehearsed on a 128-node cluster on this host, and what it costs
the scheduler and this machine.

    python benchmarks/bench_scale.py [--nodes 128] [--submit-limit 1000] [--data-tasks 8000]

1. Brings up the local cluster with --nodes slurmd daemons (8 fake GPUs each) in a state
   folder of its own (AISTACK_SLURM_DIR), QOS `limited` capped at --submit-limit jobs;
   prints the time it took and the daemons' memory.
2. Rehearses recipes/pipelines/fineweb-llama-8b-1024gpu.yaml on profile local-128
   (`aistack run ... --rehearse --wait`) with its inputs made here (a crawl folder of
   --data-tasks files, a tokenizer, a held-out file): every stage in order, the data arrays
   split past MaxArraySize and submitted in waves, the pretraining job's rendezvous over
   every node. --data-tasks below 8000 shrinks the data arrays (and the run) alike.
3. Prints the wall time, aistack's own CPU time (the launching process and its follow-up
   jobs), slurmctld's RPCs from this user per minute (sdiag before and after), the
   machine's peak memory, the time `aistack status` takes on the pipeline, and what the
   rehearsal found per job. Then takes the cluster down (--keep-up leaves it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "recipes" / "pipelines" / "fineweb-llama-8b-1024gpu.yaml"
TOKENIZER = REPO / "recipes" / "eval" / "tasks" / "tinylang" / "tokenizer.json"
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged", "slurmstepd")


def say(line: str) -> None:
    print(line, flush=True)


def daemon_rss_mb() -> dict[str, float]:
    out = subprocess.run(["ps", "-C", ",".join(DAEMONS), "-o", "comm=,rss="], capture_output=True, text=True).stdout
    rss: dict[str, float] = {}
    for line in out.splitlines():
        name, kb = line.split()
        rss[name] = rss.get(name, 0) + int(kb) / 1024
    return rss


def used_memory_mb() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kb = lambda key: int(info[key].split()[0])  # noqa: E731
    return (kb("MemTotal") - kb("MemAvailable")) / 1024


def rpc_count(user: str) -> int:
    """slurmctld's RPC count from `user` (sdiag's statistics by user)."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = out.split("Remote Procedure Call statistics by user", 1)[-1]
    match = re.search(rf"^\s*{re.escape(user)}\s*\(\s*\d+\)\s*count:(\d+)", section, re.MULTILINE)
    return int(match.group(1)) if match else 0


def make_inputs(root: Path, files: int) -> dict[str, str]:
    """What the pipeline reads: WARC files (the stand-ins only list them), a tokenizer, a held-out file."""
    crawl = root / "crawl"
    crawl.mkdir(parents=True)
    for i in range(files):
        (crawl / f"CC-MAIN-{i:05d}.warc.gz").write_bytes(b"")
    heldout = root / "heldout.jsonl"
    heldout.write_text(json.dumps({"text": "held-out text"}) + "\n")
    return {"AISTACK_CRAWL": str(crawl), "AISTACK_TOKENIZER": str(TOKENIZER), "AISTACK_HELDOUT_TEXT": str(heldout),
            "AISTACK_RUNS": str(root / "runs")}


class PeakMemory(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = used_memory_mb(), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.peak = max(self.peak, used_memory_mb())


def followup_cpu_s(pipeline_dir: Path) -> float:
    """CPU seconds of the follow-up jobs (aistack submitting the next waves), from sacct."""
    ids = [json.loads(line)["followup"] for line in (pipeline_dir / "waves" / "followups.jsonl").read_text().splitlines()] \
        if (pipeline_dir / "waves" / "followups.jsonl").exists() else []
    if not ids:
        return 0.0
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "TotalCPU", "-j", ",".join(ids)], capture_output=True, text=True).stdout
    return sum(_seconds(v) for v in out.split())


def _seconds(text: str) -> float:
    days, _, clock = text.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--submit-limit", type=int, default=1000)
    parser.add_argument("--data-tasks", type=int, default=8000, help="tasks of each data array (the recipe: 8000)")
    parser.add_argument("--max-running", type=int, default=48,
                        help="jobs of the QOS running at once: this host runs every node's tasks")
    parser.add_argument("--state", default="/var/tmp/aistack-slurm-scale", help="the cluster's state folder")
    parser.add_argument("--timeout", type=float, default=3 * 3600)
    parser.add_argument("--keep-up", action="store_true")
    args = parser.parse_args()
    # Nodes declare the memory and CPUs of the recipe's largest jobs (distillation asks 1800G): declared,
    # not consumed, as the CPUs and GPUs are.
    cluster_env = {**os.environ, "AISTACK_SLURM_DIR": args.state, "AISTACK_SLURM_NODES": str(args.nodes),
                   "AISTACK_SLURM_LIMITED_MAX_SUBMIT": str(args.submit_limit), "AISTACK_SLURM_NODE_MEM_MB": "2048000",
                   "AISTACK_SLURM_NODE_CPUS": "256", "AISTACK_SLURM_LIMITED_MAX_RUNNING": str(args.max_running)}
    base_memory = used_memory_mb()
    start = time.time()
    subprocess.run(["bash", str(REPO / "slurm" / "up.sh")], env=cluster_env, check=True)
    up_s = time.time() - start
    rss = daemon_rss_mb()
    say(f"cluster up: {args.nodes} nodes x 8 GPUs in {up_s:.1f} s; daemons {sum(rss.values()):.0f} MB "
        f"({', '.join(f'{k} {v:.0f}' for k, v in sorted(rss.items()))}); machine +{used_memory_mb() - base_memory:.0f} MB")
    root = Path(tempfile.mkdtemp(prefix="aistack-scale-"))
    try:
        env = {**cluster_env, **make_inputs(root, args.data_tasks)}
        user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        rpcs_before, peak = rpc_count(user), PeakMemory()
        peak.start()
        command = [sys.executable, "-m", "aistack.cli", "run", str(PIPELINE), "--on", "local-128", "--rehearse", "--wait",
                   f"stages.filter.overrides.filter.tasks={args.data_tasks}"]
        say("$ " + " ".join(command))
        start = time.time()
        proc = subprocess.Popen(command, env=env, cwd=root)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - start
        peak.stop.set()
        rpcs = rpc_count(user) - rpcs_before
        pipeline_dir = root / "runs" / "rehearsals" / "fineweb-llama-8b"
        own_cpu = usage.ru_utime + usage.ru_stime
        follow_cpu = followup_cpu_s(pipeline_dir)
        start = time.time()
        subprocess.run([sys.executable, "-m", "aistack.cli", "status", str(pipeline_dir)], env=env, cwd=root,
                       stdout=subprocess.DEVNULL)
        status_s = time.time() - start
        say(f"rehearsal: exit {os.waitstatus_to_exitcode(status)} in {wall / 60:.1f} min; aistack CPU {own_cpu:.1f} s here "
            f"+ {follow_cpu:.1f} s in follow-up jobs; slurmctld RPCs from {user}: {rpcs} ({rpcs / (wall / 60):.0f}/min, "
            f"jobs' own included); peak memory {peak.peak / 1024:.1f} GiB; `aistack status` {status_s:.2f} s")
    finally:
        if not args.keep_up:
            subprocess.run(["bash", str(REPO / "slurm" / "down.sh"), "--purge"], env=cluster_env, check=False)
        if not args.keep_up:
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"kept: the cluster (state {args.state}) and {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
