"""JobSpec + cluster profile -> submitit Slurm parameters, and the sbatch text they render.

`slurm_launch` is pure: the Slurm executor passes its result to submitit's
SlurmExecutor.update_parameters, and `render_sbatch` passes the same dict to
submitit's own sbatch renderer, so `--dry-run` prints exactly what would be submitted.
Every value that reaches the script was validated by the schema, and submitit
shell-quotes #SBATCH values and srun arguments; the lines we add are quoted here.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aistack.launch.plan import REHEARSE_ENTRY, JobSpec
from aistack.launch.profile import ClusterProfile
from aistack.recipe.errors import RecipeError
from aistack.recipe.schema import Resources

PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def container_mounts(resources: Resources, profile: ClusterProfile, run_root: Path) -> list[str]:
    """Profile mounts, then the recipe's, then the run root (jobs write there) at the same path."""
    mounts = [*profile.container_mounts, *(resources.container.mounts if resources.container else [])]
    root = str(run_root)
    if not any(m.split(":")[1] == root or root.startswith(m.split(":")[1].rstrip("/") + "/") for m in mounts):
        mounts.append(f"{root}:{root}")
    return mounts


def container_launch(resources: Resources, profile: ClusterProfile, run_root: Path) -> dict[str, Any]:
    """Container settings for submitit: srun args (pyxis, oci), the python command, and
    (oci) the environment the node's container runtime reads."""
    if resources.container is None or profile.container_runtime == "none":
        return {}
    image = resources.container.image
    mounts = container_mounts(resources, profile, run_root)
    if profile.container_runtime == "oci":
        return oci_launch(resources, profile, mounts)
    if profile.container_runtime == "pyxis":
        args = [f"--container-image={image}", f"--container-mounts={','.join(mounts)}"]
        if resources.container.workdir:
            args.append(f"--container-workdir={resources.container.workdir}")
        return {"srun_args": args, "python": profile.container_python}
    # apptainer: the job's python runs inside `apptainer exec`.
    words = ["apptainer", "exec"]
    if resources.gpus_per_node > 0:
        words.append("--nv")
    words += ["--bind", ",".join(mounts)]
    if resources.container.workdir:
        words += ["--pwd", resources.container.workdir]
    words += [image, profile.container_python]
    return {"python": shlex.join(words)}


# Slurm's own OCI support (`srun --container=BUNDLE`, oci.conf on the nodes) takes nothing
# but the bundle: the bind mounts and the working directory reach the nodes' runtime
# wrapper (slurm/oci_run.py) in the job's environment, as pyxis takes them in
# --container-mounts and --container-workdir.
OCI_MOUNTS_ENV = "AISTACK_CONTAINER_MOUNTS"
OCI_WORKDIR_ENV = "AISTACK_CONTAINER_WORKDIR"
_BUNDLE_RE = re.compile(r"/[A-Za-z0-9._/+-]*")


def oci_launch(resources: Resources, profile: ClusterProfile, mounts: list[str]) -> dict[str, Any]:
    """srun --container=BUNDLE: the image is an OCI bundle directory (config.json, rootfs/)."""
    image = resources.container.image
    where = f"(on cluster profile {profile.name}, container_runtime: oci)"
    if not _BUNDLE_RE.fullmatch(image) or "/../" in f"{image}/":
        raise RecipeError.single(where, "resources.container.image", image,
                                 "the absolute path of an OCI bundle directory (config.json and rootfs/) on the nodes")
    if resources.ntasks_per_node > 1:
        # Slurm 22.05 refuses a container step with more than one task on a node.
        raise RecipeError.single(where, "resources.tasks_per_node", resources.ntasks_per_node,
                                 "1: Slurm's OCI support runs one task per node in a container (use more nodes, or pyxis/apptainer)")
    env = {OCI_MOUNTS_ENV: ",".join(mounts)}
    if resources.container.workdir:
        env[OCI_WORKDIR_ENV] = resources.container.workdir
    return {"srun_args": [f"--container={image}"], "python": profile.container_python, "env": env}


@dataclass
class SlurmLaunch:
    params: dict[str, Any]  # for SlurmExecutor.update_parameters
    python: str | None  # the job's python command; None: the submitting interpreter


def slurm_launch(
    job: JobSpec,
    profile: ClusterProfile,
    job_name: str,
    run_root: Path,
    dependency: str | None = None,
) -> SlurmLaunch:
    res = job.resources
    placement = profile.job_class(uses_gpus=res.gpus_per_node > 0)
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": res.nodes,
        "ntasks_per_node": res.ntasks_per_node,
        "cpus_per_task": res.cpus_per_task,
        "time": res.time,
        "signal_delay_s": profile.signal_delay_s,
        "array_parallelism": res.array_parallelism,
        "stderr_to_stdout": False,
    }
    optional = {
        "gpus_per_node": res.gpus_per_node or None,
        "mem": res.mem,
        "partition": res.partition or placement.partition,
        "account": res.account or placement.account,
        "qos": res.qos or placement.qos,
        "constraint": res.constraint,
        "dependency": dependency,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    extra: dict[str, Any] = {k.replace("_", "-"): v for k, v in placement.sbatch_defaults.items()}
    # A job whose afterok dependency failed is cancelled, not left pending forever.
    extra["kill-on-invalid-dep"] = "yes"
    extra["requeue"] = True
    params["additional_parameters"] = extra
    setup = [f"export {PREEMPT_SIGNAL_ENV}=USR1"]
    setup += [f"export {key}={shlex.quote(value)}" for key, value in sorted(profile.env.items())]
    params["setup"] = setup
    container = container_launch(res, profile, run_root)
    setup += [f"export {key}={shlex.quote(value)}" for key, value in container.get("env", {}).items()]
    if "srun_args" in container:
        params["srun_args"] = container["srun_args"]
    python = container.get("python")
    if job.entry == REHEARSE_ENTRY and res.world_size > 1:
        # A rehearsal starts one rank per node of the same allocation: the rendezvous
        # spans every node without a process per GPU (128 nodes fit on one machine).
        params["srun_args"] = [*params.get("srun_args", []), f"--ntasks={res.nodes}", "--ntasks-per-node=1"]
    if res.world_size == 1 and "srun_args" not in container:
        # One process: python replaces the batch shell (exec) instead of running as an srun
        # step, which saves a step launch per array task. The checkpoint signal then goes
        # to the batch shell (B:), which exec made the python process itself.
        params["use_srun"] = False
        extra["signal"] = f"B:USR1@{profile.signal_delay_s}"
        # A preemption's SIGTERM before python's node entry watches it would end the job by
        # itself within GraceTime, and Slurm fails such a job instead of requeuing it: the batch
        # shell ignores SIGTERM, python inherits that and takes SIGTERM over on its first line.
        setup.insert(0, "trap '' TERM")
        python = f"exec {python or shlex.quote(sys.executable)}"
    return SlurmLaunch(params=params, python=python)


NODE_ENTRY = "aistack.runtime.node"  # submitit's node entry, lighter: see node.py


def node_command(python: str, folder: Path) -> str:
    """The job's command: submitit's, with aistack's node entry."""
    return f"{python} -u -m {NODE_ENTRY} {shlex.quote(str(folder))}"


def render_sbatch(launch: SlurmLaunch, folder: Path, array_size: int | None) -> str:
    """The sbatch script submitit writes for these parameters (with its own renderer)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = node_command(launch.python or shlex.quote(sys.executable), folder)
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **launch.params)
