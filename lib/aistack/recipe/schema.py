"""The recipe schema: blocks shared by every kind, and the registry of kinds.

Each kind (filter, pretrain, ...) is a pydantic model registered under its `kind:`
name; unknown keys are errors everywhere. Values that end up in an sbatch script
(names, partitions, container images, mounts) are checked against strict patterns
here, and submitit shell-quotes them again when it renders the script.
"""

from __future__ import annotations

import re
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

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


MAX_ROOT_BYTES = 3072


def _fits_a_path(value: str) -> str:
    """Run directories go below this one: it leaves them room in PATH_MAX (4096 bytes), and
    no name in it is longer than NAME_MAX (255 bytes)."""
    if len(value.encode()) > MAX_ROOT_BYTES or any(len(part.encode()) > 255 for part in value.split("/")):
        raise ValueError(f"a directory path of at most {MAX_ROOT_BYTES:,} bytes, 255 per name (run directories go below it)")
    return value


RunsRoot = Annotated[str, AfterValidator(_fits_a_path)]


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


def _leaves(annotation: Any) -> set[Any]:
    """The types a field accepts: `Annotated[int, ...] | None` -> {int, NoneType}."""
    if get_origin(annotation) is Annotated:
        return _leaves(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return set().union(*(_leaves(arg) for arg in get_args(annotation)))
    return {annotation}


def _bool_number_mixup(annotation: Any, value: Any) -> str | None:
    """What is wrong when true/false is given for a number or a number for true/false
    (pydantic would take it as 1/0, or 1/0 as true/false), in a list too; None if nothing."""
    leaves = _leaves(annotation)
    if Any in leaves:
        return None
    if isinstance(value, bool) and leaves & {int, float} and bool not in leaves:
        return "a number, not true/false"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and bool in leaves and not leaves & {int, float}:
        return "true or false, not a number"
    if isinstance(value, list):
        items = [get_args(t)[0] for t in leaves if get_origin(t) is list and get_args(t)]
        return next((m for item in items for v in value if (m := _bool_number_mixup(item, v))), None)
    return None


class StrictModel(BaseModel):
    """Unknown keys are errors; values are not silently coerced from the wrong type (a
    number may be given as text, "3e-4": YAML reads that as a string). No NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_number_mixup(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = _bool_number_mixup(field.annotation, value) if field is not None else None
        if problem:
            raise ValueError(problem)
        return value


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
    root: RunsRoot = "runs"


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

