#!/usr/bin/python3
"""The container runtime of the local cluster's OCI support (oci.conf's RunTimeRun).

Slurm 22.05 (`srun --container=BUNDLE`) copies BUNDLE/config.json into the step's spool
directory, points root.path at BUNDLE/rootfs, puts the step's command into process.args and
appends the job's environment to process.env, then runs RunTimeRun with %b = that spool
directory. It adds no bind mounts of its own, so this wrapper completes the config before
`runc run`:

- the job's bind mounts, from AISTACK_CONTAINER_MOUNTS in the job's environment
  ("SRC:DST[:ro|rw],...", written by aistack as pyxis gets --container-mounts; the run
  directory is one of them) and the working directory from AISTACK_CONTAINER_WORKDIR;
- each variable once: the image's value first (Slurm appends the job's after it), so the
  image's PATH, HOME and VIRTUAL_ENV hold, and the job's variables fill in the rest;
- the per-task variables Slurm sets only after it wrote config.json (SLURM_PROCID,
  SLURM_LOCALID, SLURM_NODEID, SLURMD_NODENAME: the copies in the job's environment are
  the batch shell's), from the pattern values %n and %t and the step's node list;
- the site's own mounts and variables (--mount, --setenv in oci.conf), e.g. the node's
  Slurm config and munge socket, so that `scontrol` works in the job (submitit requeues
  itself with `scontrol requeue` when the time limit is near);
- no cgroup settings (linux.resources, cgroupsPath): the cluster runs without cgroups.

Then it removes a container left under the same id by a killed earlier attempt (a requeued
job reuses its id) and replaces itself with `runc run`, which forwards Slurm's signals.
Installed by slurm/up.sh as $AISTACK_SLURM_DIR/libexec/oci-run; stdlib only (the node's python3).

usage: oci-run --runc RUNC --root DIR --node %n --task %t
               [--mount SRC:DST[:ro|rw]]... [--setenv NAME=VALUE]... ID BUNDLE
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

MOUNTS_ENV = "AISTACK_CONTAINER_MOUNTS"
WORKDIR_ENV = "AISTACK_CONTAINER_WORKDIR"
# What aistack's schema accepts for a mount (recipe.schema._MOUNT_RE): paths of these
# characters only, optionally :ro or :rw.
MOUNT_RE = re.compile(r"(?P<src>/[A-Za-z0-9._/+-]*):(?P<dst>/[A-Za-z0-9._/+-]*)(?::(?P<mode>ro|rw))?")
PATH_RE = re.compile(r"/[A-Za-z0-9._/+-]*")


class Refused(Exception):
    pass


def env_dict(entries: list[str]) -> dict[str, str]:
    """NAME=value entries, each name once: the first value wins (the image's comes first)."""
    env: dict[str, str] = {}
    for entry in entries:
        name, _, value = entry.partition("=")
        env.setdefault(name, value)
    return env


def safe_path(path: str) -> bool:
    return bool(PATH_RE.fullmatch(path)) and ".." not in path.split("/")


def bind_mounts(items: list[str], what: str = MOUNTS_ENV, missing_ok: bool = False) -> list[dict]:
    mounts = []
    for item in filter(None, items):
        match = MOUNT_RE.fullmatch(item)
        if not match or not safe_path(match["src"]) or not safe_path(match["dst"]):
            raise Refused(f"{what}: {item!r} is not an absolute bind mount 'SRC:DST[:ro|rw]'")
        if not os.path.exists(match["src"]):
            if missing_ok:
                continue
            raise Refused(f"{what}: the mount source {match['src']} does not exist on this node")
        options = ["rbind", match["mode"] or "rw", "nosuid", "nodev"]
        mounts.append({"destination": match["dst"], "type": "bind", "source": match["src"], "options": options})
    return mounts


def node_index(node: str, env: dict[str, str], scontrol: str) -> int | None:
    """This node's index in the step's node list (SLURM_NODEID), from `scontrol show hostnames`."""
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        return None
    out = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    names = out.stdout.split()
    return names.index(node) if node in names else None


def complete(config: dict, node: str, task: int, scontrol: str,
             site_mounts: tuple[str, ...] = (), site_env: tuple[str, ...] = ()) -> dict:
    process = config.setdefault("process", {})
    env = env_dict(process.get("env", []))
    for entry in site_env:
        name, _, value = entry.partition("=")
        env[name] = value
    # Per-task values, always set: what the job's environment holds for them are the batch
    # shell's (srun passes its environment on). One task per node: Slurm 22.05 refuses more.
    env["SLURMD_NODENAME"] = node
    env["SLURM_LOCALID"] = str(task)
    index = node_index(node, env, scontrol)
    if index is not None:
        env["SLURM_NODEID"] = str(index)
        env["SLURM_PROCID"] = env["SLURM_GTIDS"] = str(index + task)
    process["env"] = [f"{name}={value}" for name, value in env.items()]
    mounts = config.setdefault("mounts", [])
    mounts += bind_mounts(list(site_mounts), "--mount", missing_ok=True)  # e.g. no munge socket: no scontrol
    mounts += bind_mounts(env.get(MOUNTS_ENV, "").split(","))
    workdir = env.get(WORKDIR_ENV)
    if workdir:
        if not safe_path(workdir):
            raise Refused(f"{WORKDIR_ENV}: {workdir!r} is not an absolute path")
        process["cwd"] = workdir
    linux = config.setdefault("linux", {})
    linux.pop("resources", None)
    linux.pop("cgroupsPath", None)
    return config


def _assignment(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=[^\x00-\x1f]*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return text


def write_config(path: str, config: dict) -> None:
    """The completed config in place of Slurm's. It holds the job's whole environment:
    readable by root (runc) only, whatever the umask."""
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older .tmp keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oci-run", description=__doc__.splitlines()[0])
    parser.add_argument("--runc", required=True, help="the runc binary")
    parser.add_argument("--root", required=True, help="runc's state directory")
    parser.add_argument("--scontrol", default="scontrol")
    parser.add_argument("--node", required=True, help="the node name (%%n)")
    parser.add_argument("--task", required=True, type=int, help="the task id on this node (%%t)")
    parser.add_argument("--mount", action="append", default=[], help="a site bind mount SRC:DST[:ro|rw] (if SRC exists)")
    parser.add_argument("--setenv", action="append", default=[], type=_assignment, help="a site variable NAME=VALUE")
    parser.add_argument("id", help="the container id")
    parser.add_argument("bundle", help="the bundle Slurm wrote (%%b)")
    args = parser.parse_args(argv)

    path = os.path.join(args.bundle, "config.json")
    try:
        with open(path) as f:
            config = complete(json.load(f), args.node, args.task, args.scontrol, tuple(args.mount), tuple(args.setenv))
    except (OSError, ValueError, Refused, subprocess.SubprocessError) as err:
        print(f"oci-run: {err}", file=sys.stderr)
        return 127
    write_config(path, config)

    runc = [args.runc, "--root", args.root]
    if subprocess.run([*runc, "state", args.id], capture_output=True).returncode == 0:
        subprocess.run([*runc, "delete", "--force", args.id], capture_output=True)
    os.execv(args.runc, [*runc, "run", "--bundle", args.bundle, args.id])


if __name__ == "__main__":
    sys.exit(main())
