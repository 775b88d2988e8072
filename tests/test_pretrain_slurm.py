"""Pretraining under the real local Slurm cluster: a run preempted, then requeued by SIGUSR1
before the time limit, then by `scontrol requeue` resumes each time from its last save, and
its loss trace is identical to an uninterrupted run's."""

from __future__ import annotations

import re
import subprocess

import pytest

from aistack.launch import launcher
from aistack.track.metrics import read_metrics
from conftest import RECIPES, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TINY = RECIPES / "pretrain" / "gpt-tiny.yaml"
STEPS = 200


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from aistack.model.dataset import make_tiny_dataset

    # The local cluster's nodes run on this host: they see pytest's tmp directories.
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", vocab_size=512, num_docs=400)


def args(root, data, *extra):
    # Wider and longer than the CI default so that a step takes long enough to requeue mid-run.
    return [f"output.root={root}", f"data.paths=[{{path: {data}}}]", "tracking.mode=offline", f"train.steps={STEPS}",
            "model.hidden_size=128", "model.seq_length=128", "train.eval_every=50", *extra]


def losses(run) -> list[tuple[int, float]]:
    """(step, loss) in file order: a step logged twice (a resume that did not truncate) shows."""
    return [(r["step"], r["loss"]) for r in read_metrics(run.task_dir("train", 0) / "metrics.jsonl") if "loss" in r]


def sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def steps_of_attempt(run, attempt: int) -> int:
    """Training steps logged by `attempt` (0 while an earlier one runs)."""
    state = run.task_state("train", 0)
    if state.get("attempt", 0) < attempt or "started_at" not in state:
        return 0
    rows = read_metrics(run.task_dir("train", 0) / "metrics.jsonl")
    return sum(1 for r in rows if "loss" in r and r["time"] > state["started_at"])


def test_preemption_usr1_and_requeue_each_resume_exactly(tmp_path, tiny_data):
    """One run, interrupted three times, each in the attempt after the last: preemption by an
    `urgent` job on its node (SIGTERM, GraceTime, requeue: it resumes from its last periodic
    checkpoint), SIGUSR1 (the quick save before the time limit: it resumes from the step the
    signal saved) and `scontrol requeue` (no warning: the last checkpoint again). Its loss trace
    must be an uninterrupted run's, bit for bit, every step once."""
    from test_preemption import preempt

    run = launcher.launch(TINY, args(tmp_path / "run", tiny_data, "checkpoint.every=10"), on="slurm")
    job_id = run.submitted[0].job_id

    def after(attempt: int, steps: int) -> None:
        wait_until(lambda: steps_of_attempt(run.run, attempt) >= steps, timeout=300,
                   what=f"{steps} training steps of attempt {attempt}")

    # Slurm takes a few scheduling cycles (~15 s here, ~100 steps) to decide a preemption, then
    # GraceTime: the urgent job comes right after the first checkpoint (step 10), so that the
    # SIGTERM lands mid-training, not after the last step.
    after(0, 10)
    preempt(job_id)
    wait_until(lambda: run.run.task_state("train", 0).get("attempt", 0) >= 1, timeout=300, what="the preempted attempt's successor")
    # The uninterrupted run, now that the urgent job cannot take its node too: how often a run
    # checkpoints does not change its losses (a save that did fails the comparison).
    reference = launcher.launch(TINY, args(tmp_path / "reference", tiny_data, "checkpoint.every=1000"), on="slurm")
    after(1, 5)
    subprocess.run(["scancel", "--full", "--signal=USR1", job_id], check=True)
    after(2, 5)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    assert {r.state for r in launcher.wait(run, timeout_s=600)} == {"COMPLETED"}
    assert {r.state for r in launcher.wait(reference, timeout_s=600)} == {"COMPLETED"}

    states = sacct_states(job_id)
    assert "PREEMPTED" in states and run.run.task_state("train", 0)["attempt"] == 3, (states, run.run.task_state("train", 0))
    got, want = losses(run.run), losses(reference.run)
    assert [step for step, _ in got] == list(range(1, STEPS + 1)), "one clean trace across the four attempts"
    assert got == want, "bit-identical to the uninterrupted run"
    log = "".join(p.read_text() for p in run.run.log_dir("train").glob("*_log.out"))
    saved = re.findall(r"preempted: saving step (\d+)", log)
    assert len(saved) == 1 and f"resuming from step {saved[0]}" in log, "SIGUSR1's quick save, resumed from"
    assert log.count("resuming from step") == 3, log[-3000:]
