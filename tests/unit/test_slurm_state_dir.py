"""The dev cluster's state folder holds what root's daemons run, under /var/tmp where anyone
may make a folder first: slurm/up.sh refuses one that is not root's own, before it starts
or writes anything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("slurmctld"),
                                reason="slurm/up.sh runs as root with Slurm installed")


def up(state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "slurm" / "up.sh")], env={**os.environ, "AISTACK_SLURM_DIR": str(state)},
                          capture_output=True, text=True, timeout=60)


def test_a_state_folder_someone_else_made_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # nobody's
    done = up(state)
    assert done.returncode != 0 and "not a folder owned by root" in done.stderr
    assert list(state.iterdir()) == [], "nothing written into it"


def test_a_state_folder_others_may_write_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    done = up(state)
    assert done.returncode != 0 and "writable by others" in done.stderr
    assert list(state.iterdir()) == []


def test_a_symlink_in_its_place_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "state").symlink_to(target)
    done = up(tmp_path / "state")
    assert done.returncode != 0 and "not a folder owned by root" in done.stderr
    assert list(target.iterdir()) == []
