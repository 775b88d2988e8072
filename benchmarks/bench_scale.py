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
   While it runs, one running array task is preempted (Preempter) and `aistack status`
   is timed every minute.
3. Prints the wall time, aistack's own CPU time (the launching process and its follow-up
   jobs), slurmctld's RPCs (sdiag before and after: this user's, and by message type),
   the machine's peak memory, the time `aistack status` takes on the pipeline, what the
   preempted task went through, and what the rehearsal found per job. Then takes the
   cluster down (--keep-up leaves it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
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


def rpc_by_type() -> dict[str, int]:
    """slurmctld's RPC counts by message type (every user: the scheduler's whole load)."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = out.split("by message type", 1)[-1].split("by user", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s*(\w+)\s*\(\s*\d+\)\s*count:(\d+)", section, re.MULTILINE)}


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


class Preempter(threading.Thread):
    """One preemption of a running array task, as a real task meets it: busy when the
    preemption comes. A stand-in ends in seconds, before Slurm decides a preemption (a few
    scheduling cycles), so the task is paused (SIGSTOP, as a task busy in its work) and a
    whole-node job in `urgent` takes its node: SIGTERM, GraceTime, SIGKILL, requeue; the
    requeued attempt must then pass like every other task. Resumed (SIGCONT) once
    accounting shows it PREEMPTED, or after 120 s."""

    def __init__(self, user: str, env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.user, self.env, self.stop = user, env, threading.Event()
        self.preempted: str | None = None
        self.what = "no running array task found"

    def run(self) -> None:
        while not self.stop.wait(3.0):
            running = subprocess.run(["squeue", "-h", "-u", self.user, "-t", "R", "-p", "cpu", "-o", "%i %N"],
                                     capture_output=True, text=True, env=self.env).stdout.split("\n")
            for task, node in (line.split() for line in running if "_" in line.split(" ")[0]):
                pid = task_pid(task)
                if pid is None:
                    continue
                os.kill(pid, signal.SIGSTOP)
                subprocess.run(["sbatch", "-p", "urgent", "-N1", "-w", node, "--exclusive", "-o", "/dev/null",
                                "--wrap", "sleep 2"], capture_output=True, env=self.env, check=True)
                deadline = time.time() + 120
                while time.time() < deadline and not self.stop.wait(2.0):
                    if "PREEMPTED" in self.states(task):
                        self.preempted = task
                        break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                self.what = f"task {task} on {node} paused and its node taken: " + " -> ".join(self.states(task))
                return

    def states(self, task: str) -> list[str]:
        out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", task], capture_output=True,
                             text=True, env=self.env).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]


def task_pid(task: str) -> int | None:
    """The stand-in's process of array task `task` (JOB_INDEX), from /proc."""
    job, index = task.split("_")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"SLURM_ARRAY_JOB_ID=" + job.encode() in environ and b"SLURM_ARRAY_TASK_ID=" + index.encode() in environ \
                and b"aistack.runtime.node" in cmdline:
            return int(proc.name)
    return None


class StatusProbe(threading.Thread):
    """`aistack status` of the pipeline every `every_s` while the rehearsal runs: how long each took."""

    def __init__(self, pipeline_dir: Path, env: dict[str, str], cwd: Path, every_s: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.args, self.every_s, self.stop, self.seconds = (pipeline_dir, env, cwd), every_s, threading.Event(), []

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.seconds.append(status_seconds(*self.args))


def status_seconds(pipeline_dir: Path, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """`aistack status` of the pipeline: its wall time and its own CPU time."""
    if not pipeline_dir.exists():
        return 0.0, 0.0
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "aistack.cli", "status", str(pipeline_dir)], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return time.time() - start, usage.ru_utime + usage.ru_stime


def followup_cpu_s(pipeline_dir: Path) -> float:
    """CPU seconds of the follow-up jobs (aistack submitting the next waves), from sacct."""
    ids = [json.loads(line)["followup"] for line in (pipeline_dir / "waves" / "followups.jsonl").read_text().splitlines()] \
        if (pipeline_dir / "waves" / "followups.jsonl").exists() else []
    if not ids:
        return 0.0
    # the steps' lines: an allocation's own TotalCPU reads 0 until accounting sums it up
    out = subprocess.run(["sacct", "-n", "-P", "-o", "JobID,TotalCPU", "-j", ",".join(ids)], capture_output=True, text=True).stdout
    return sum(_seconds(cpu) for step, cpu in (line.split("|") for line in out.splitlines() if "|" in line) if "." in step)


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
    parser.add_argument("--no-preempt", action="store_true", help="no preemption of a running array task")
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
        rpcs_before, types_before, peak = rpc_count(user), rpc_by_type(), PeakMemory()
        pipeline_dir = root / "runs" / "rehearsals" / "fineweb-llama-8b"
        probe, preempter = StatusProbe(pipeline_dir, env, root), Preempter(user, env)
        for thread in (peak, probe) + (() if args.no_preempt else (preempter,)):
            thread.start()
        command = [sys.executable, "-m", "aistack.cli", "run", str(PIPELINE), "--on", "local-128", "--rehearse", "--wait",
                   f"stages.filter.overrides.filter.tasks={args.data_tasks}"]
        say("$ " + " ".join(command))
        start = time.time()
        proc = subprocess.Popen(command, env=env, cwd=root)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - start
        for thread in (peak, probe, preempter):
            thread.stop.set()
        rpcs = rpc_count(user) - rpcs_before
        by_type = {k: v - types_before.get(k, 0) for k, v in rpc_by_type().items()}
        own_cpu = usage.ru_utime + usage.ru_stime
        follow_cpu = followup_cpu_s(pipeline_dir)
        status_s, status_cpu = status_seconds(pipeline_dir, env, root)
        tasks = sum(1 for _ in pipeline_dir.glob("*/jobs/*/tasks/*/DONE"))
        say(f"rehearsal: exit {os.waitstatus_to_exitcode(status)} in {wall / 60:.1f} min, {tasks} tasks done; "
            f"aistack CPU {own_cpu:.1f} s here + {follow_cpu:.1f} s in follow-up jobs; slurmctld RPCs from {user}: "
            f"{rpcs} ({rpcs / (wall / 60):.0f}/min, jobs' and daemons' own included); peak memory {peak.peak / 1024:.1f} GiB")
        say("slurmctld RPCs by type, every user: " + ", ".join(
            f"{k} {v}" for k, v in sorted(by_type.items(), key=lambda kv: -kv[1]) if v > 0))
        walls, cpus = sorted(w for w, _ in probe.seconds), sorted(c for _, c in probe.seconds)
        say(f"`aistack status` at the end {status_s:.2f} s ({status_cpu:.2f} s CPU); during the run (every "
            f"{probe.every_s:.0f} s, beside the rehearsal's tasks on this host's cores): {len(walls)} calls, wall median "
            f"{walls[len(walls) // 2] if walls else 0:.2f} s, max {max(walls, default=0):.2f} s; CPU median "
            f"{cpus[len(cpus) // 2] if cpus else 0:.2f} s, max {max(cpus, default=0):.2f} s")
        if not args.no_preempt:
            say(f"preemption: {preempter.what}; in the end "
                + (" -> ".join(preempter.states(preempter.preempted)) if preempter.preempted else "none"))
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
