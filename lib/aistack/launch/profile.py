"""Cluster profiles (slurm/clusters/*.yaml): what differs between clusters, not recipes."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError

from aistack.recipe.errors import RecipeError
from aistack.recipe.load import SECRET_VAR_RE, safe_load_unique
from aistack.recipe.schema import Mount, Name, SlurmWord, StrictModel

REPO_CLUSTERS = Path(__file__).resolve().parents[3] / "slurm" / "clusters"


def _sbatch_option(key: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", key):
        raise ValueError(f"sbatch option names are lowercase words such as 'exclusive' or 'mem-per-cpu' (got {key!r})")
    return key


def _sbatch_value(value: str | int | bool) -> str | int | bool:
    # Values reach `#SBATCH --key=value` lines: Slurm words only (submitit quotes them too).
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._,:=+@%/-]{0,127}", value):
        raise ValueError(f"an sbatch value of letters, digits and ._,:=+@%/- (got {value!r})")
    return value


def _env_name(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
        raise ValueError(f"environment variable names are shell identifiers (got {key!r})")
    if SECRET_VAR_RE.search(key):
        raise ValueError(f"{key} looks like a secret: jobs read secrets from their environment, "
                         "never from a profile (it would be written into every sbatch script)")
    return key


def _env_text(value: str) -> str:
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError(f"a value without control characters (got {value!r})")
    return value


SbatchDefaults = dict[Annotated[str, AfterValidator(_sbatch_option)], Annotated[str | int | bool, AfterValidator(_sbatch_value)]]
EnvVars = dict[Annotated[str, AfterValidator(_env_name)], Annotated[str, AfterValidator(_env_text)]]

# sbatch options that only make sense for GPU jobs: a CPU job never gets them from the
# profile (a recipe may still ask, e.g. resources.constraint).
GPU_ONLY_OPTIONS = frozenset({"exclusive", "constraint", "gres", "gpus", "gpus_per_node", "gpus_per_task",
                              "gpu_bind", "gpu_freq", "cpus_per_gpu", "mem_per_gpu"})


class JobClass(StrictModel):
    """Where one class of jobs goes: its partition, account, QOS and sbatch defaults."""

    partition: SlurmWord | None = None
    account: SlurmWord | None = None
    qos: SlurmWord | None = None
    sbatch_defaults: SbatchDefaults = Field(default_factory=dict)


class ClusterProfile(StrictModel):
    name: Name = "local"
    executor: Literal["slurm", "local"] = "slurm"
    # partition, account, qos and sbatch_defaults: GPU jobs (and every job without `cpu`)
    partition: SlurmWord | None = None
    account: SlurmWord | None = None
    qos: SlurmWord | None = None
    gpus_per_node: int = Field(default=0, ge=0)
    cpus_per_gpu: int | None = Field(default=None, ge=1)
    max_array_size: int | None = Field(default=None, ge=1, description="null: read from `scontrol show config`")
    # How many jobs a user may have queued (every array task counts). null: the QOS's
    # MaxSubmitJobsPerUser and the association's MaxSubmitJobs, from sacctmgr when readable.
    max_submit_jobs: int | None = Field(default=None, ge=2, le=10_000_000)
    container_runtime: Literal["none", "pyxis", "apptainer", "oci"] = "none"  # oci: Slurm's own (srun --container)
    container_mounts: list[Mount] = Field(default_factory=list)
    container_python: str = Field(default="python", pattern=r"^[A-Za-z0-9._/+-]+$")
    sbatch_defaults: SbatchDefaults = Field(default_factory=dict)
    signal_delay_s: int = Field(default=90, ge=0)
    env: EnvVars = Field(default_factory=dict)
    # CPU-only jobs (data stages, gathers, stats, reports); unset fields come from above.
    cpu: JobClass | None = None

    def job_class(self, uses_gpus: bool) -> JobClass:
        """Partition, account, QOS and sbatch defaults of a GPU job or of a CPU-only job."""
        gpu = JobClass(partition=self.partition, account=self.account, qos=self.qos, sbatch_defaults=self.sbatch_defaults)
        if uses_gpus:
            return gpu
        if self.cpu is not None:
            return JobClass(partition=self.cpu.partition or self.partition, account=self.cpu.account or self.account,
                            qos=self.cpu.qos or self.qos, sbatch_defaults=self.cpu.sbatch_defaults)
        defaults = {k: v for k, v in self.sbatch_defaults.items() if k.replace("-", "_") not in GPU_ONLY_OPTIONS}
        return gpu.model_copy(update={"sbatch_defaults": defaults})


LOCAL = ClusterProfile(name="local", executor="local")


def default_target() -> str:
    """--on default: $AISTACK_ON, else Slurm when its client is installed, else this machine."""
    return os.environ.get("AISTACK_ON") or ("slurm" if shutil.which("sbatch") else "local")


def profile_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("AISTACK_CLUSTERS", "").split(os.pathsep) if p]
    return [*extra, REPO_CLUSTERS]


def load_profile(ref: str) -> ClusterProfile:
    """`local` (no scheduler), `slurm` (the local/default Slurm profile), a profile name, or a path."""
    if ref == "local":
        return LOCAL
    if ref == "slurm":
        ref = os.environ.get("AISTACK_PROFILE", "local")
    path = Path(ref)
    if not path.suffix:
        found = [d / f"{ref}.yaml" for d in profile_dirs() if (d / f"{ref}.yaml").is_file()]
        if not found:
            known = sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")})
            raise RecipeError.single("--on", "on", ref, "'local', 'slurm' or a cluster profile: " + ", ".join(known))
        path = found[0]
    if not path.is_file():
        raise RecipeError.single("--on", "on", ref, "a cluster profile file that exists")
    try:
        data = safe_load_unique(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise RecipeError.single(str(path), "", f"byte {err.start}", "a UTF-8 cluster profile") from None
    except OSError as err:
        raise RecipeError.single(str(path), "", path.name, f"a readable cluster profile ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError.single(str(path), "", path.name, f"a valid YAML cluster profile{where}: "
                                 f"{getattr(err, 'problem', None) or err}") from None
    if not isinstance(data, dict):
        raise RecipeError.single(str(path), "", data, "a mapping of profile keys")
    try:
        profile = ClusterProfile.model_validate(data)
    except ValidationError as err:
        problems = [(".".join(map(str, e["loc"])), e.get("input"), e["msg"].removeprefix("Value error, ")) for e in err.errors()]
        raise RecipeError(str(path), problems) from None
    return profile
