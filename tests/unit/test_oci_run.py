"""slurm/oci_run.py, the local cluster's OCI runtime wrapper: what it adds to the config
Slurm wrote before `runc run` (no cluster, no runc needed)."""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("oci_run", REPO / "slurm" / "oci_run.py")
oci_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oci_run)


@pytest.fixture
def scontrol(tmp_path) -> str:
    """A stand-in for `scontrol show hostnames node[1-2]`."""
    script = tmp_path / "scontrol"
    script.write_text("#!/bin/sh\necho node1; echo node2\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def slurm_config(job_env: list[str]) -> dict:
    """What slurmstepd writes: the image's config with the job's environment appended."""
    return {
        "process": {"args": ["python", "-V"], "cwd": "/", "env": ["PATH=/opt/venv/bin:/usr/bin", "HOME=/tmp", *job_env]},
        "root": {"path": "/images/x/rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "mount"}], "resources": {"devices": []}, "cgroupsPath": "/x"},
    }


def test_mounts_workdir_env_and_per_task_variables(tmp_path, scontrol):
    run_root = tmp_path / "runs"
    run_root.mkdir()
    job_env = [
        "PATH=/host/venv/bin:/usr/bin", "HOME=/root", "SLURM_JOB_ID=7",
        # the batch shell's values, passed on by srun: wrong for the task on node2
        "SLURM_PROCID=0", "SLURM_NODEID=0", "SLURM_LOCALID=0", "SLURMD_NODENAME=node1",
        "SLURM_STEP_NODELIST=node[1-2]",
        f"AISTACK_CONTAINER_MOUNTS={run_root}:{run_root},/usr/share:/data:ro",
        "AISTACK_CONTAINER_WORKDIR=/data",
    ]
    config = oci_run.complete(slurm_config(job_env), "node2", 0, scontrol)
    env = dict(e.split("=", 1) for e in config["process"]["env"])
    assert len(env) == len(config["process"]["env"]), "each variable once"
    assert env["PATH"] == "/opt/venv/bin:/usr/bin" and env["HOME"] == "/tmp", "the image's values hold"
    assert env["SLURM_JOB_ID"] == "7"
    assert (env["SLURM_PROCID"], env["SLURM_NODEID"], env["SLURM_LOCALID"], env["SLURMD_NODENAME"]) == ("1", "1", "0", "node2")
    binds = [m for m in config["mounts"] if m["type"] == "bind"]
    assert [(m["source"], m["destination"], m["options"][1]) for m in binds] == [
        (str(run_root), str(run_root), "rw"), ("/usr/share", "/data", "ro")]
    assert config["process"]["cwd"] == "/data"
    assert "resources" not in config["linux"] and "cgroupsPath" not in config["linux"]


@pytest.mark.parametrize("mounts", [
    "relative:/x", "/usr:relative", "/usr/../etc:/x", "/usr:/x:rx", "/usr:/x;touch /y",
    "/does/not/exist:/x",
])
def test_bad_mounts_are_refused(mounts, scontrol):
    with pytest.raises(oci_run.Refused):
        oci_run.complete(slurm_config([f"AISTACK_CONTAINER_MOUNTS={mounts}"]), "node1", 0, scontrol)


def test_refusal_ends_the_step_before_runc(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(slurm_config(["AISTACK_CONTAINER_WORKDIR=../x"])))
    rc = oci_run.main(["--runc", "/bin/false", "--root", str(tmp_path), "--scontrol", "/bin/true",
                       "--node", "node1", "--task", "0", "node1.root.7.0.0", str(tmp_path)])
    assert rc == 127 and "AISTACK_CONTAINER_WORKDIR" in capsys.readouterr().err


def test_site_mounts_and_variables_from_oci_conf(tmp_path, scontrol):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    site_mounts = (f"{conf}:/etc/slurm/slurm.conf:ro", f"{tmp_path}/munge.socket.2:{tmp_path}/munge.socket.2")
    config = oci_run.complete(slurm_config(["SLURM_CONF=/elsewhere/slurm.conf"]), "node1", 0, scontrol,
                              site_mounts, ("SLURM_CONF=/etc/slurm/slurm.conf",))
    env = dict(e.split("=", 1) for e in config["process"]["env"])
    assert env["SLURM_CONF"] == "/etc/slurm/slurm.conf", "the site's value wins"
    # a site mount whose source is missing (no munge socket on this node) is left out
    assert [(m["source"], m["destination"]) for m in config["mounts"] if m["type"] == "bind"] == [
        (str(conf), "/etc/slurm/slurm.conf")]


def test_the_completed_config_holding_the_job_environment_is_root_only(tmp_path):
    import os

    path = tmp_path / "config.json"
    path.write_text("{}")
    (tmp_path / "config.json.tmp").write_text("")  # left by an earlier step, world-readable
    os.chmod(tmp_path / "config.json.tmp", 0o644)
    old = os.umask(0o022)
    try:
        oci_run.write_config(str(path), slurm_config(["SECRET_TOKEN_FROM_THE_JOB=x"]))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "SECRET_TOKEN_FROM_THE_JOB=x" in path.read_text()
