"""Shared fixtures: the real local Slurm cluster (started once per session), recipe helpers."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import aistack.launch  # noqa: F401  (sets the preemption signal before submitit is imported)

pytest_plugins = ["leftovers"]  # no process a test starts may outlive it (tests/leftovers.py)

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
# The OCI bundle of the local cluster's container runtime (containers/oci/build.sh) and its
# interpreter (container_python of slurm/clusters/local-oci.yaml).
OCI_BUILD = REPO / "containers" / "oci" / "build.sh"
OCI_BUNDLE = Path(os.environ.get("AISTACK_OCI_DIR", REPO / "containers" / "build")) / "aistack-oci"
OCI_CONF = Path(os.environ.get("AISTACK_SLURM_DIR", "/var/tmp/aistack-slurm")) / "etc" / "oci.conf"
IMAGE_PYTHON = "/opt/aistack/venv/bin/python"


# Tests that use the local cluster (or its OCI bundle) share its nodes, QOS limits and
# preemption: under pytest-xdist (`make test` runs this layer in two lanes, `-n 2 --dist
# loadgroup`) they form one group that one worker runs in order, while the other worker takes
# the tests that need no cluster; tests of one module stay together, so a module-scoped
# fixture is built once. Each lane's work is mostly one busy core (imports, Python, tiny
# models): one lane left a 2-core machine ~40% idle.
CLUSTER_FIXTURES = {"slurm_cluster", "bundle"}


def pytest_configure(config):
    """Under xdist, the lanes share the cores as tasks do: each lane's processes run
    cores / lanes OpenMP threads (more than the cores in all makes torch's threads spin
    against each other), unless OMP_NUM_THREADS says otherwise."""
    # What aistack caches for a user (the cluster's submit limits) stays in this session.
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="aistack-test-cache-")
    atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)
    lanes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if lanes > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // lanes)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    def on_cluster(item) -> bool:
        return bool(CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())))

    for item in items:
        item.add_marker(pytest.mark.xdist_group("slurm-cluster" if on_cluster(item) else item.nodeid.split("::")[0]))


def _cluster_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    probe = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=30)
    return probe.returncode == 0 and subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """Bring up slurm/ (munge, MariaDB, slurmdbd, slurmctld, slurmd); stop it afterwards if we started it."""
    was_up = _cluster_answers()
    subprocess.run(["bash", str(REPO / "slurm" / "up.sh")], check=True, timeout=300)
    yield
    if not was_up:
        subprocess.run(["bash", str(REPO / "slurm" / "down.sh")], check=False, timeout=300)


@pytest.fixture
def runs_root(tmp_path: Path):
    root = tmp_path / "runs"
    root.mkdir()
    yield root
    # Slurm jobs a test submitted (a failed test's queued waves and follow-ups included)
    # do not outlive it.
    if shutil.which("scancel"):
        from aistack.rundir import RunDir
        from aistack.launch.status import cancel_run

        for submissions in root.rglob("submissions.jsonl"):
            cancel_run(RunDir(submissions.parent))


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def describe_unfinished(states) -> str:
    """Why stages did not complete, for an assertion message: each one's task states, the
    error each failed task recorded, and the end of its stderr (CI shows only this)."""
    from aistack.launch.slurm.executor import log_paths
    from aistack.launch.status import run_status
    from aistack.plan_records import read_plan_jobs

    lines = []
    for stage in states:
        if stage.state == "COMPLETED":
            continue
        lines.append(f"stage {stage.name}: {stage.state} ({stage.done}/{stage.total} done)")
        if not stage.run.path.exists():
            continue
        latest = stage.run.latest_submissions()
        for row in run_status(stage.run, read_plan_jobs(stage.run)):
            if row.state == "COMPLETED":
                continue
            error = stage.run.task_state(row.job, row.task_id).get("error", "")
            lines.append(f"  {row.job}[{row.task_id}] {row.executor} {row.job_id} {row.state} attempt={row.attempt} {error}")
            if row.executor == "slurm" and (row.job, row.task_id) in latest:
                record, index = latest[(row.job, row.task_id)]
                stderr = log_paths(stage.run, row.job, record["job_id"], index)[1]
                if stderr.exists():
                    lines += ["    " + line for line in stderr.read_text(errors="replace").splitlines()[-15:]]
    return "\n".join(lines)


@pytest.fixture(scope="session")
def bundle() -> Path:
    """The OCI bundle, current with this checkout. `make test` builds it first and sets
    AISTACK_OCI_REQUIRED=1: a missing bundle is then a failure; run alone, the tests that need
    it skip. When only aistack's sources changed since the build, aistack is reinstalled (seconds)."""
    env = {**os.environ, "VENV_PYTHON": sys.executable}
    check = subprocess.run(["bash", str(OCI_BUILD), "--check"], capture_output=True, text=True, env=env, timeout=120)
    if check.returncode == 2:
        message = f"the OCI bundle is not built or its base is stale ({check.stdout.strip()}): run `make container-bundle`"
        if os.environ.get("AISTACK_OCI_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message + " (a few minutes) to run these tests")
    if check.returncode == 1:
        subprocess.run(["bash", str(OCI_BUILD)], check=True, env=env, timeout=600)
    elif check.returncode != 0:
        pytest.fail(f"{OCI_BUILD} --check: {check.stdout}{check.stderr}")
    if not OCI_CONF.is_file():
        pytest.fail(f"{OCI_CONF} is missing: slurm/up.sh writes it when runc is installed (slurm/install.sh)")
    return OCI_BUNDLE
