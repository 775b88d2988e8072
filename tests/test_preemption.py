"""Preemption on the local cluster: a job of the higher-priority `urgent` partition takes a
node, Slurm requeues what ran there (PreemptMode=REQUEUE: SIGTERM, then SIGKILL after
GraceTime), and the run resumes from its last complete checkpoint with exactly the
outputs of an undisturbed run."""

from __future__ import annotations

import subprocess
import time

import pytest

from aistack.launch import launcher
from aistack.track.metrics import read_metrics
from conftest import RECIPES, wait_until
from test_slurm_launch import SMOKE, expected_digest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def node_of(job_id: str) -> str:
    return wait_until(lambda: subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True,
                                             text=True).stdout.strip(), timeout=60, what=f"job {job_id} on a node")


def preempt(job_id: str) -> float:
    """Submit a whole-node job to `urgent` on the job's node; returns when it was submitted."""
    node = node_of(job_id)
    cpus = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()[0]
    subprocess.run(["sbatch", "-p", "urgent", "-N1", "-w", node, "-c", cpus, "-o", "/dev/null", "--wrap", "sleep 3"],
                   check=True, capture_output=True)
    return time.time()


def sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def test_preempted_array_task_resumes_from_its_checkpoint(runs_root):
    # 40 s of work: Slurm takes a few scheduling cycles (~10 s here) to decide a preemption
    overrides = [f"output.root={runs_root}", "smoke.tasks=1", "smoke.steps=40", "smoke.step_seconds=1",
                 "smoke.checkpoint_every=2", "tracking.mode=disabled"]
    result = launcher.launch(SMOKE, overrides, on="slurm")
    job_id = next(s.job_id for s in result.submitted if s.job == "map")
    metrics = result.run.task_dir("map", 0) / "metrics.jsonl"
    wait_until(lambda: len(read_metrics(metrics)) >= 8, timeout=120, what="8 logged steps")
    preempted_at = preempt(job_id)
    wait_until(lambda: result.run.task_state("map", 0).get("attempt", 0) >= 1, timeout=180, what="the requeued attempt")
    resumed_after = time.time() - preempted_at
    assert {r.state for r in launcher.wait(result, timeout_s=300)} == {"COMPLETED"}
    assert "PREEMPTED" in sacct_states(job_id)
    done = result.run.task_result("map", 0)["result"]
    assert done["digest"] == expected_digest(0, 40) and done["steps"] == 40  # every step exactly once
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, 41))
    print(f"preemption to resumed attempt: {resumed_after:.1f} s")
