"""Pretraining under the real local Slurm cluster: a requeued run (scontrol requeue, or
SIGUSR1 before the time limit) resumes from its checkpoint and its loss trace is identical
to an uninterrupted run's."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory, slurm_cluster):
    """The uninterrupted run the requeue and quick-save tests compare with, submitted once:
    how often a run checkpoints does not change its losses (a save that did fails both)."""
    return launcher.launch(TINY, args(tmp_path_factory.mktemp("ref"), tiny_data, "checkpoint.every=1000"), on="slurm")


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


def _interrupted_vs_reference(tmp_path, tiny_data, interrupt, extra, reference, reference_first=False, at_step=30):
    if reference_first:  # an interruption that takes a whole node would hit the reference too
        assert {r.state for r in launcher.wait(reference, timeout_s=600)} == {"COMPLETED"}
    run = launcher.launch(TINY, args(tmp_path / "run", tiny_data, *extra), on="slurm")
    job_id = run.submitted[0].job_id
    metrics = run.run.task_dir("train", 0) / "metrics.jsonl"
    wait_until(lambda: len([r for r in read_metrics(metrics) if "loss" in r]) >= at_step, timeout=300,
               what=f"{at_step} training steps")
    interrupt(job_id)
    assert {r.state for r in launcher.wait(run, timeout_s=600)} == {"COMPLETED"}
    assert {r.state for r in launcher.wait(reference, timeout_s=600)} == {"COMPLETED"}
    assert "REQUEUED" in sacct_states(job_id) or len(sacct_states(job_id)) > 1
    assert run.run.task_state("train", 0)["attempt"] >= 1
    got, want = losses(run.run), losses(reference.run)
    assert [step for step, _ in got] == list(range(1, STEPS + 1)), "one clean trace across both attempts"
    assert got == want, "bit-identical to the uninterrupted run"
    log = "".join(p.read_text() for p in run.run.log_dir("train").glob("*_log.out"))
    return log


def test_scontrol_requeue_resumes_exactly(tmp_path, tiny_data, reference):
    log = _interrupted_vs_reference(
        tmp_path, tiny_data, lambda job: subprocess.run(["scontrol", "requeue", job], check=True), ["checkpoint.every=10"],
        reference,
    )
    assert "resuming from step" in log


def test_sigusr1_quick_save_resumes_exactly(tmp_path, tiny_data, reference):
    # No periodic checkpoint before the end: a resume past step 0 proves the signal-time save ran.
    log = _interrupted_vs_reference(
        tmp_path, tiny_data, lambda job: subprocess.run(["scancel", "--full", "--signal=USR1", job], check=True),
        ["checkpoint.every=1000"], reference,
    )
    assert "preempted: saving step" in log and "resuming from step" in log


def test_preemption_by_a_higher_priority_job_resumes_exactly(tmp_path, tiny_data, reference):
    from test_preemption import preempt

    # Slurm takes a few scheduling cycles (~15 s here, ~100 steps) to decide a preemption, then
    # GraceTime: the urgent job comes right after the first checkpoint (step 10), so that the
    # SIGTERM lands mid-training, not after the last step
    log = _interrupted_vs_reference(tmp_path, tiny_data, preempt, ["checkpoint.every=10"], reference,
                                    reference_first=True, at_step=10)
    assert "resuming from step" in log
