"""Launching on the real local Slurm cluster (slurm/up.sh): arrays, multi-task jobs,
dependencies, requeue and preemption. States are read back from Slurm itself."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from aistack.cli import main
from aistack.launch import launcher
from aistack.plan_records import PlannedJob
from aistack.rundir import RunDir
from aistack.launch.status import cancel_run, run_status
from aistack.track.metrics import read_metrics
from aistack.track.wandb_run import offline_runs, read_offline_run, run_id
from conftest import RECIPES, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

SMOKE = RECIPES / "examples" / "smoke.yaml"
CLUSTERS = Path(__file__).resolve().parents[1] / "slurm" / "clusters"


def sacct_states(job_id: str) -> list[str]:
    """Every state Slurm recorded for a job, requeued attempts included (sacct -D)."""
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def expected_digest(task_id: int, steps: int) -> str:
    digest = f"task-{task_id}"
    for step in range(1, steps + 1):
        digest = hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()
    return digest


def test_100_task_array_completes_and_status_shows_slurm_states(runs_root, capsys):
    overrides = [f"output.root={runs_root}", "smoke.tasks=100", "smoke.steps=2", "smoke.step_seconds=0", "resources.array_parallelism=50"]
    result = launcher.launch(SMOKE, overrides, on="slurm")
    maps = [s for s in result.submitted if s.job == "map"]
    assert len(maps) == 1 and maps[0].is_array and len(maps[0].task_ids) == 100
    rows = launcher.wait(result, timeout_s=600)
    assert [r.state for r in rows if r.job == "map"] == ["COMPLETED"] * 100
    assert {r.job_id for r in rows if r.job == "map"} == {f"{maps[0].job_id}_{i}" for i in range(100)}
    assert result.run.task_result("reduce", 0)["result"]["ok"]

    assert main(["status", str(result.run.path)]) == 0
    out = capsys.readouterr().out
    assert "COMPLETED: 101" in out
    assert f"{maps[0].job_id}_[0-99]" in out and "0-99" in out  # the array in one row, not 100


def test_multi_task_job_all_reduces_over_gloo(runs_root):
    overrides = [
        f"output.root={runs_root}", "smoke.tasks=1", "smoke.steps=1", "smoke.all_reduce=true",
        "resources.tasks_per_node=2", "tracking.mode=disabled",
    ]
    result = launcher.launch(SMOKE, overrides, on="slurm")
    rows = launcher.wait(result, timeout_s=300)
    assert {r.state for r in rows} == {"COMPLETED"}
    out = result.run.task_result("map", 0)["result"]
    assert out["world_size"] == 2 and out["all_reduce"] == 1.0 + 2.0


def test_two_node_job_all_reduces_across_nodes(runs_root):
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()
    if len(set(nodes)) < 2:
        pytest.skip("the local cluster has a single node")
    overrides = [
        f"output.root={runs_root}", "smoke.tasks=1", "smoke.steps=1", "smoke.all_reduce=true",
        "resources.nodes=2", "resources.tasks_per_node=1", "tracking.mode=disabled",
    ]
    result = launcher.launch(SMOKE, overrides, on="slurm")
    rows = launcher.wait(result, timeout_s=300)
    assert {r.state for r in rows} == {"COMPLETED"}
    out = result.run.task_result("map", 0)["result"]
    assert out["world_size"] == 2 and out["all_reduce"] == 3.0


def test_chain_runs_reduce_only_after_map_succeeded(runs_root):
    ok = launcher.launch(SMOKE, [f"output.root={runs_root}", "smoke.tasks=3", "smoke.steps=5", "smoke.step_seconds=0.2"], on="slurm")
    map_id = next(s.job_id for s in ok.submitted if s.job == "map")
    reduce_id = next(s.job_id for s in ok.submitted if s.job == "reduce")
    assert {r.state for r in launcher.wait(ok, timeout_s=300)} == {"COMPLETED"}
    # Slurm's own clock: reduce started after the last map task ended.
    times = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", f"{map_id},{reduce_id}"], capture_output=True, text=True, check=True
    ).stdout.split()
    rows = [line.split("|") for line in times]
    map_end = max(end for jid, _, end in rows if jid.startswith(f"{map_id}_"))
    reduce_start = next(start for jid, start, _ in rows if jid == reduce_id)
    assert reduce_start >= map_end


def test_chain_never_runs_reduce_when_map_fails(runs_root):
    bad = launcher.launch(
        SMOKE, [f"output.root={runs_root}", "smoke.tasks=2", "smoke.steps=3", "smoke.fail_tasks=[0]", "tracking.mode=disabled"], on="slurm"
    )
    rows = launcher.wait(bad, timeout_s=300)
    states = {(r.job, r.task_id): r.state for r in rows}
    assert states[("map", 0)] == "FAILED" and states[("map", 1)] == "COMPLETED"
    assert states[("reduce", 0)] == "CANCELLED"
    assert not bad.run.task_dir("reduce", 0).exists(), "the reduce job never started"


def _requeue_case(runs_root, extra: list[str]):
    overrides = [
        f"output.root={runs_root}", "smoke.tasks=1", "smoke.steps=40", "smoke.step_seconds=0.25", "tracking.mode=offline", *extra
    ]
    result = launcher.launch(SMOKE, overrides, on="slurm")
    job_id = next(s.job_id for s in result.submitted if s.job == "map")
    metrics = result.run.task_dir("map", 0) / "metrics.jsonl"
    wait_until(lambda: len(read_metrics(metrics)) >= 8, timeout=120, what="8 logged steps")
    return result, job_id


def _assert_resumed_exactly(result, job_id: str):
    rows = launcher.wait(result, timeout_s=300)
    assert {r.state for r in rows} == {"COMPLETED"}
    assert "REQUEUED" in sacct_states(job_id) or len(sacct_states(job_id)) > 1
    done = result.run.task_result("map", 0)["result"]
    # The hash chain proves every step ran exactly once across the two attempts.
    assert done["digest"] == expected_digest(0, 40) and done["steps"] == 40
    steps = [r["step"] for r in read_metrics(result.run.task_dir("map", 0) / "metrics.jsonl")]
    assert steps == list(range(1, 41)), "metrics.jsonl holds one clean trace"
    assert result.run.task_state("map", 0)["attempt"] >= 1
    # Every attempt logs into one W&B run id; the offline files read back agree with metrics.jsonl
    # and hold each step once: what a killed attempt's W&B service lost is sent again from
    # metrics.jsonl, what it kept is not.
    map_id = run_id(result.run.name, "map", 0)
    attempts = [p for p in offline_runs(result.run.path) if p.name.endswith(f"-{map_id}")]
    assert len(attempts) >= 2, "each attempt opened the run under the same id"
    runs = [read_offline_run(p) for p in attempts]
    assert {r["id"] for r in runs} - {None} == {map_id}  # None: a file killed before its first flush
    by_step = {r["step"]: r["total"] for r in read_metrics(result.run.task_dir("map", 0) / "metrics.jsonl")}
    logged = [(row["_step"], row["total"]) for r in runs for row in r["history"] if "total" in row]
    assert all(by_step[step] == total for step, total in logged)
    assert sorted(step for step, _ in logged) == list(range(1, 41)), "each step in W&B once"


def _log(result, job_id: str) -> str:
    return (result.run.log_dir("map") / f"{job_id}_0_log.out").read_text()


def test_scontrol_requeue_resumes_from_checkpoint_with_one_wandb_run(runs_root):
    result, job_id = _requeue_case(runs_root, ["smoke.checkpoint_every=2"])
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # A hard requeue kills W&B's service with the job: what it had buffered is sent again.
    _assert_resumed_exactly(result, job_id)
    assert "resuming from step" in _log(result, job_id)


def test_sigusr1_before_time_limit_saves_and_requeues(runs_root):
    # No periodic checkpoint: a resume past step 0 proves the signal-time save ran.
    result, job_id = _requeue_case(runs_root, ["smoke.checkpoint_every=1000"])
    subprocess.run(["scancel", "--full", "--signal=USR1", job_id], check=True)
    _assert_resumed_exactly(result, job_id)
    assert "resuming from step" in _log(result, job_id) and "resuming from step 0" not in _log(result, job_id)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_refused_submission_is_a_message_not_a_traceback(runs_root, capsys):
    code = main(["run", str(SMOKE), f"output.root={runs_root}", "resources.partition=nosuch", "--on", "slurm"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Slurm refused" in err and "invalid partition" in err and "check `partition`" in err
    assert "Traceback" not in err


def _queued_in(qos: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-q", qos, "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return len(out.split())


def test_an_array_over_the_qos_submit_limit_runs_in_waves(runs_root, capsys):
    # slurm/up.sh makes QOS `limited` with MaxSubmitJobsPerUser=60, and every array task
    # counts: 150 tasks go in waves, each submitted by a follow-up job, none by a process here.
    overrides = [f"output.root={runs_root}", "smoke.tasks=150", "smoke.steps=1", "smoke.step_seconds=0",
                 "resources.qos=limited", "tracking.mode=disabled"]
    assert main(["run", str(SMOKE), *overrides, "--on", "slurm"]) == 0
    out = capsys.readouterr().out
    run = next(p for p in runs_root.iterdir() if p.is_dir())
    first = json.loads((run / "submissions.jsonl").read_text().splitlines()[0])
    waiting = 150 - len(first["task_ids"])
    assert 0 < len(first["task_ids"]) <= 59  # one slot kept for the follow-up
    assert f"{waiting} tasks waiting for a later wave" in out and "submits the next wave" in out
    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert f"WAITING {waiting}" in status and "reduce: WAITING 1" in status

    peak = [0]

    def reduced() -> bool:
        peak[0] = max(peak[0], _queued_in("limited"))
        return RunDir(run).is_done("reduce", 0)

    wait_until(reduced, timeout=600, interval=0.5, what="the reduce job after the last wave")
    records = [json.loads(line) for line in (run / "submissions.jsonl").read_text().splitlines()]
    waves = [r for r in records if r["job"] == "map"]
    assert len(waves) >= 3 and all(len(w["task_ids"]) <= 59 for w in waves)
    assert sorted(t for w in waves for t in w["task_ids"]) == list(range(150))  # each task once
    assert len({r["launch"] for r in records}) == 1
    assert 0 < peak[0] <= 60
    jobs = [PlannedJob("map", 150), PlannedJob("reduce", 1)]
    wait_until(lambda: all(r.state == "COMPLETED" for r in run_status(RunDir(run), jobs)), timeout=60, what="Slurm's COMPLETED")
    assert main(["status", str(run)]) == 0
    assert "COMPLETED: 151" in capsys.readouterr().out
    assert RunDir(run).task_result("reduce", 0)["result"]["ok"]


def test_a_profile_that_allows_more_than_the_qos_gets_slurm_s_refusal_explained(runs_root, tmp_path, capsys):
    profile = tmp_path / "too-generous.yaml"
    text = (CLUSTERS / "local.yaml").read_text()
    profile.write_text(re.sub(r"(?m)^max_submit_jobs:.*$", "max_submit_jobs: 1000", text))
    code = main(["run", str(SMOKE), f"output.root={runs_root}", "smoke.tasks=100", "resources.qos=limited",
                 "--on", str(profile)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "QOSMaxSubmitJobPerUserLimit" in err and "every array task counts" in err


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_cancel_leaves_alone_a_recorded_id_that_now_names_another_job(runs_root):
    # After a cluster is rebuilt its job ids start again: a run's old id may be someone else's job now.
    other = subprocess.run(["sbatch", "--parsable", "-J", "someone-else.train", "-o", "/dev/null", "--begin", "now+600",
                            "--wrap", "sleep 1"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    try:
        run = RunDir(runs_root / "old-run-0123456789")
        run.path.mkdir()
        run.record_submission({"job": "map", "executor": "slurm", "job_id": other, "task_ids": [0], "array": False})
        result = cancel_run(run)
        assert result.cancelled == [] and result.not_ours == [f"{other} (someone-else.train)"]
        queued = subprocess.run(["squeue", "-h", "-j", other, "-o", "%i"], capture_output=True, text=True, timeout=60)
        assert queued.stdout.strip() == other, "still queued: not this run's to cancel"
    finally:
        subprocess.run(["scancel", other], check=False, timeout=60)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_the_same_recipe_started_twice_at_once_submits_each_task_once(runs_root):
    import sys

    args = [sys.executable, "-m", "aistack.cli", "run", str(SMOKE), "--on", "slurm", f"output.root={runs_root}",
            "smoke.tasks=6", "smoke.steps=3", "tracking.mode=disabled"]
    both = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in both]
    codes = sorted(p.returncode for p in both)
    said = "\n".join(out + err for out, err in outputs)
    # The second either found the run held (refused, naming the holder) or found its jobs queued.
    assert codes in ([0, 0], [0, 1]), said
    assert codes == [0, 0] or "is being run by pid" in said, said
    run = RunDir(next(runs_root.glob("smoke-*")))
    submitted = [(r["job"], t) for r in run.submissions() for t in r["task_ids"]]
    assert sorted(submitted) == sorted([("map", t) for t in range(6)] + [("reduce", 0)]), "each task submitted once"
    wait_until(lambda: run.is_done("reduce", 0), timeout=300, what="the reduce task")
    assert all(run.task_state("map", t).get("attempt", 0) == 0 for t in range(6)), "no task ran twice"


def test_a_rehearsal_runs_the_real_schedule_with_stand_ins_that_meet_across_nodes(runs_root, capsys):
    """Two 2-node jobs asking 2 GPUs per node and 4 ranks, and the reduce after them: the
    stand-ins of each node meet at the job's master address, see their GPUs, and the real
    run directory is never made."""
    overrides = [f"output.root={runs_root}", "smoke.tasks=2", "resources.nodes=2", "resources.tasks_per_node=2",
                 "resources.gpus_per_node=2"]
    assert main(["run", str(SMOKE), *overrides, "--on", "slurm", "--rehearse", "--wait"]) == 0
    out = capsys.readouterr().out
    assert "rehearsal map: 2/2 passed; ranks 2 of 4 on 2 nodes" in out, out
    assert "rehearsal reduce: 1/1 passed" in out, out
    rehearsal = next((runs_root / "rehearsals").iterdir())
    assert [p.name for p in runs_root.iterdir()] == ["rehearsals"], "the real run is not touched"
    seen = RunDir(rehearsal).task_result("map", 1)["result"]
    assert seen["ranks"]["nodes"] == ["node1", "node2"] and seen["ranks"]["master"].startswith("node1:")
    assert all(len(gpus) == 2 for gpus in seen["ranks"]["gpus"].values())
    assert seen["rehearses"].startswith(f"{runs_root / rehearsal.name} job map (smoke) task 1 of 2")
    job_id = json.loads((rehearsal / "submissions.jsonl").read_text().splitlines()[0])["job_id"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "NNodes,AllocTRES", "-j", job_id], capture_output=True, text=True, check=True)
    assert all(line.startswith("2|") and "gres/gpu=4" in line for line in out.stdout.split()), out.stdout
