"""JobSpec + cluster profile -> submitit Slurm parameters, and the sbatch text they render.

`slurm_launch` is pure: the Slurm executor passes its result to submitit's
SlurmExecutor.update_parameters, and `render_sbatch` passes the same dict to
submitit's own sbatch renderer, so `--dry-run` prints exactly what would be submitted.
Every value that reaches the script was validated by the schema, and submitit
shell-quotes #SBATCH values and srun arguments; the lines we add are quoted here.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aistack.launch.plan import JobSpec
from aistack.launch.profile import ClusterProfile
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
    """Container settings for submitit: srun args (pyxis) or the python command (apptainer)."""
    if resources.container is None or profile.container_runtime == "none":
        return {}
    image = resources.container.image
    mounts = container_mounts(resources, profile, run_root)
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
    if "srun_args" in container:
        params["srun_args"] = container["srun_args"]
    return SlurmLaunch(params=params, python=container.get("python"))


def render_sbatch(launch: SlurmLaunch, folder: Path, array_size: int | None) -> str:
    """The sbatch script submitit writes for these parameters (with its own renderer)."""
    from submitit.slurm.slurm import _make_sbatch_string

    python = launch.python or shlex.quote(sys.executable)
    command = f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **launch.params)
