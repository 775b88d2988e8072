"""Jobs in a container on the real local cluster: Slurm's own OCI support (`srun
--container=BUNDLE`, oci.conf and runc from slurm/up.sh, profile slurm/clusters/local-oci.yaml)
runs the smoke recipe in the bundle `make container-bundle` builds (containers/oci/build.sh).

The bundle (`make test` builds it first) comes from the `bundle` fixture (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aistack.launch import launcher
from conftest import IMAGE_PYTHON, RECIPES, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

SMOKE = RECIPES / "examples" / "smoke.yaml"


def launch(bundle: Path, runs_root: Path, *overrides: str):
    base = [f"output.root={runs_root}", "smoke.steps=3", "smoke.step_seconds=0", "tracking.mode=disabled",
            f"resources.container.image={bundle}"]
    result = launcher.launch(SMOKE, [*base, *overrides], on="local-oci")
    rows = launcher.wait(result, timeout_s=300)
    assert {r.state for r in rows} == {"COMPLETED"}, unfinished(result, rows)
    return result


def unfinished(result, rows) -> str:
    """Each task that did not complete, with the end of its job's stderr (CI shows only this)."""
    lines = []
    for row in rows:
        if row.state != "COMPLETED":
            lines.append(f"{row.job}[{row.task_id}] {row.job_id} {row.state}")
            for err in sorted(result.run.log_dir(row.job).glob("*.err")):
                lines += [f"  {err.name}: {line}" for line in err.read_text(errors="replace").splitlines()[-15:]]
    return "\n".join(lines)


def test_smoke_runs_in_the_image_and_writes_to_the_mounted_run_dir(bundle, runs_root):
    label = (bundle / "rootfs" / "etc" / "aistack-image").read_text().strip()
    assert not Path("/etc/aistack-image").exists(), "the label must exist only inside the image"
    result = launch(bundle, runs_root, "smoke.tasks=2")
    script = next(result.run.log_dir("map").glob("*_submission.sh")).read_text()  # what sbatch ran
    assert f"--container={bundle} {IMAGE_PYTHON} -u -m aistack.runtime.node" in script
    for task in (0, 1):
        out = result.run.task_result("map", task)["result"]
        # The image's interpreter (Debian's python3 in the image's venv, not this venv's)
        # and the image's label: the task ran inside the container; its OpenMP threads are
        # its cpus_per_task (1), as Slurm said in the container too.
        assert out["ran_in"] == {"python": IMAGE_PYTHON, "version": out["ran_in"]["version"], "image": label,
                                 "omp_threads": "1"}
        assert out["ran_in"]["python"] != sys.executable
        # What it wrote reached the run directory, mounted at the same path.
        assert (result.run.task_dir("map", task) / "metrics.jsonl").read_text().count("\n") == 3
        assert result.run.is_done("map", task)
    assert result.run.task_result("reduce", 0)["result"]["ok"]


def test_two_node_job_all_reduces_across_containers(bundle, runs_root):
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()
    if len(set(nodes)) < 2:
        pytest.skip("the local cluster has a single node")
    # One container per node; each task learns its rank from the per-task variables the
    # node runtime (slurm/oci_run.py) sets, and reaches the other over the host network.
    result = launch(bundle, runs_root, "smoke.tasks=1", "smoke.all_reduce=true", "resources.nodes=2")
    out = result.run.task_result("map", 0)["result"]
    assert out["world_size"] == 2 and out["all_reduce"] == 1.0 + 2.0
    assert out["ran_in"]["python"] == IMAGE_PYTHON


def test_sigterm_reaches_the_task_in_the_container_and_the_step_goes_on(bundle, runs_root):
    # At a preemption Slurm sends SIGTERM, then SIGKILL after GraceTime: the step's task
    # (runc, which passes signals to the container) must outlive it, as aistack's task does
    # (it goes on until Slurm ends the job); a shell in between would die and fail the job.
    overrides = [f"output.root={runs_root}", "smoke.tasks=1", "smoke.steps=16", "smoke.step_seconds=0.5",
                 "tracking.mode=disabled", f"resources.container.image={bundle}"]
    result = launcher.launch(SMOKE, overrides, on="local-oci")
    job_id = next(s.job_id for s in result.submitted if s.job == "map")
    metrics = result.run.task_dir("map", 0) / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 4, timeout=120, what="4 logged steps")
    subprocess.run(["scancel", "--signal=TERM", job_id], check=True)  # the job's steps, not its batch shell
    rows = launcher.wait(result, timeout_s=120)
    assert {r.state for r in rows} == {"COMPLETED"}, unfinished(result, rows)
    assert result.run.task_result("map", 0)["result"]["steps"] == 16
    stderr = "".join(p.read_text() for p in result.run.log_dir("map").glob("*.err"))
    assert "SIGTERM: preempted or cancelled" in stderr, stderr[-2000:]
