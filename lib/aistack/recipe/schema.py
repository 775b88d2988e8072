"""The recipe schema: blocks shared by every kind, and the registry of kinds.

Each kind (filter, pretrain, ...) is a pydantic model registered under its `kind:`
name; unknown keys are errors everywhere. Values that end up in an sbatch script
(names, partitions, container images, mounts) are checked against strict patterns
here, and submitit shell-quotes them again when it renders the script.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

# --- value types --------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SLURM_WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,:-]{0,127}$")
_MEM_RE = re.compile(r"^\d+(\.\d+)?[KMGT]B?$", re.IGNORECASE)
_TIME_RE = re.compile(r"^(?:(?P<d>\d+)-)?(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?$")
# Image references and bind mounts: path and registry characters only, no whitespace,
# no quotes, no shell metacharacters.
_IMAGE_RE = re.compile(r"^[A-Za-z0-9._/:@+#-]+$")
_MOUNT_RE = re.compile(r"^[A-Za-z0-9._/+-]+:[A-Za-z0-9._/+-]+(:(ro|rw))?$")


def _matching(pattern: re.Pattern[str], expected: str):
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(expected)
        return value

    return check


Name = Annotated[
    str,
    AfterValidator(
        _matching(_NAME_RE, "a name of letters, digits, '.', '_' or '-' (at most 64, no spaces or shell characters)")
    ),
]
SlurmWord = Annotated[
    str,
    AfterValidator(_matching(_SLURM_WORD_RE, "a Slurm name of letters, digits and '._,:-' only")),
]
Mem = Annotated[str, AfterValidator(_matching(_MEM_RE, "a memory size such as '16G' or '512M'"))]
Image = Annotated[str, AfterValidator(_matching(_IMAGE_RE, "a container image reference or .sif path"))]
Mount = Annotated[str, AfterValidator(_matching(_MOUNT_RE, "a bind mount 'SRC:DST' or 'SRC:DST:ro'"))]


def _time_to_minutes(value: Any) -> Any:
    """Accept minutes (int) or Slurm's [D-]HH:MM[:SS]; store whole minutes."""
    if isinstance(value, bool):
        raise ValueError("a time limit in minutes or 'HH:MM:SS'")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _TIME_RE.fullmatch(value.strip())
        if match:
            days = int(match["d"] or 0)
            minutes = days * 1440 + int(match["h"]) * 60 + int(match["m"])
            return minutes + (1 if int(match["s"] or 0) else 0)
    raise ValueError("a time limit in minutes or '[D-]HH:MM:SS'")


Minutes = Annotated[int, BeforeValidator(_time_to_minutes), Field(gt=0, le=366 * 24 * 60)]

# Upper bounds on counts: a typo with three zeros too many fails here with what to do,
# instead of planning (and stat-ing) a hundred million tasks.
MAX_ARRAY_TASKS = 1_000_000


def _task_count(value: int) -> int:
    if value > MAX_ARRAY_TASKS:
        raise ValueError(f"at most {MAX_ARRAY_TASKS:,} array tasks per job: give each task more work (fewer, larger shards)")
    return value


TaskCount = Annotated[int, Field(ge=1), AfterValidator(_task_count)]


class StrictModel(BaseModel):
    """Unknown keys are errors; values are not silently coerced from the wrong type."""

    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


# --- shared blocks ------------------------------------------------------------------


class Container(StrictModel):
    image: Image
    mounts: list[Mount] = Field(default_factory=list)
    workdir: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._/+-]+$")


class Resources(StrictModel):
    nodes: int = Field(default=1, ge=1, le=100_000)
    tasks_per_node: int | None = Field(default=None, ge=1, le=1024, description="default: gpus_per_node, or 1")
    gpus_per_node: int = Field(default=0, ge=0, le=64)
    cpus_per_task: int = Field(default=1, ge=1, le=4096)
    mem: Mem | None = None
    time: Minutes = 60
    partition: SlurmWord | None = None
    account: SlurmWord | None = None
    qos: SlurmWord | None = None
    constraint: SlurmWord | None = None
    array_parallelism: int = Field(default=256, ge=1, le=MAX_ARRAY_TASKS)
    max_requeues: int = Field(default=3, ge=0, le=1000, description="timeouts/preemptions survived by requeueing")
    container: Container | None = None

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


class Tracking(StrictModel):
    project: Name = "aistack"
    entity: Name | None = None
    group: Name | None = None
    tags: list[Name] = Field(default_factory=list)
    # auto: online when an API key is available, else offline (sync later with `aistack sync`).
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


class Output(StrictModel):
    root: str = "runs"


# --- recipes ------------------------------------------------------------------------


class Recipe(StrictModel):
    """Fields every recipe has. Subclasses add one block named after their kind."""

    kind: str
    name: Name
    description: str = ""
    resources: Resources = Field(default_factory=Resources)
    tracking: Tracking = Field(default_factory=Tracking)
    output: Output = Field(default_factory=Output)

    # Blocks that say where and how a run happens, not what it computes: they are
    # left out of the run's identity so a rerun with more time or nodes resumes it.
    PLACEMENT_KEYS: ClassVar[tuple[str, ...]] = ("resources", "tracking", "output", "description")
    # Dotted keys of a kind that change how a run behaves, not what it computes
    # (failure injection, logging intervals): also left out of the identity.
    NON_IDENTITY_KEYS: ClassVar[tuple[str, ...]] = ()

