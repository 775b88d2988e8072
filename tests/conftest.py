"""Shared fixtures: the real local Slurm cluster (started once per session), recipe helpers."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

import aistack.launch  # noqa: F401  (sets the preemption signal before submitit is imported)

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


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
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    return root


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
