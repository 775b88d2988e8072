"""What a recipe kind is, declared in one place (as torchtitan's ModelSpec bundles a model
with its hooks): its schema, its planner, its outputs, its report section.

The contract sits here, below the kinds that implement it (as torchtitan keeps its
protocols below its models). A module of aistack.kinds defines `SPEC = KindSpec(...)` (or
`SPECS = (...)` for several kinds sharing a schema module); the registry below finds it by
listing that package, by name: nothing here imports a kind. Its jobs are modules of jobs/
named by JobSpec.entry; lib never imports them, so the planner checks they exist when it
plans (before anything is submitted), not on the node.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from aistack.recipe.schema import Recipe, Resources


@dataclass(frozen=True)
class JobSpec:
    name: str  # unique within the run, e.g. "map", "reduce", "train"
    entry: str  # module in aistack.jobs whose `run(ctx)` does one task
    num_tasks: int  # array size; 1 = a single (possibly multi-node) job
    resources: Resources
    depends_on: tuple[str, ...] = ()  # names of jobs in the same plan (afterok)

    @property
    def is_array(self) -> bool:
        return self.num_tasks > 1

    @property
    def gpu_hours(self) -> float:
        """At most: every task at its time limit."""
        r = self.resources
        return self.num_tasks * r.nodes * r.gpus_per_node * r.time / 60

    @property
    def cpu_core_hours(self) -> float:
        """At most, for a CPU-only job (GPU jobs count in GPU-hours): every task at its time limit."""
        r = self.resources
        return 0.0 if r.gpus_per_node else self.num_tasks * r.nodes * r.ntasks_per_node * r.cpus_per_task * r.time / 60


# A planner takes recipe.load's LoadedRecipe (Any here: load imports this module, not the reverse).
Planner = Callable[[Any], list[JobSpec]]
# Sections of a pipeline's report a stage can feed (aistack.report.page).
ReportSection = Literal["data", "training", "evaluation", "benchmark"]


@dataclass
class Estimates:
    rows: list[tuple[str, str]]  # (figure, value) as printed
    warnings: list[str]
    step_seconds: float | None  # at the assumed MFU on the profile's GPU, when known


@dataclass(frozen=True)
class KindSpec:
    name: str  # the recipe's `kind:`
    recipe: type[Recipe]  # its pydantic schema
    plan: Planner | None  # recipe -> jobs; None for a pipeline, which expands into stages
    # What `${stages.NAME.output}` (key "output") and `${stages.NAME.output.KEY}` name,
    # relative to the stage's run directory.
    outputs: dict[str, str] = field(default_factory=dict)
    # Outputs a recipe may send elsewhere (a folder, an s3:// URL): recipe -> {key: location
    # or None}; `${stages.NAME.output}` then names that location.
    moved_outputs: Callable[[Any], dict[str, str | None]] | None = None
    # The job whose array tasks each write one file of the main output: a later data
    # stage reading it gets that many shards by default.
    sharded_by: str | None = None
    report: ReportSection | None = None
    # Plan-time figures for `aistack plan` and GPU-hours: (recipe, file, the profile's
    # device constraint) -> Estimates.
    estimate: Callable[[Any, str, str], Estimates] | None = None
    stage: bool = True  # may be a stage of a pipeline
    # The input files it reads, fixed when planned (a manifest: data.inputs.input_manifest):
    # recipe -> manifest; written to the run directory and part of the run's identity.
    inputs: Callable[[Any], dict[str, Any]] | None = None


def single_node(resources: Resources, gpus: bool = False) -> Resources:
    """One process on one node: gathers, stats, reports (and teacher shards with `gpus`)."""
    update: dict[str, Any] = {"nodes": 1, "tasks_per_node": 1}
    update["gpus_per_node"] = min(resources.gpus_per_node, 1) if gpus else 0
    return resources.model_copy(update=update)


KINDS_PACKAGE = "aistack.kinds"
_KINDS: dict[str, KindSpec] = {}


def all_kinds() -> dict[str, KindSpec]:
    """Every kind, by its recipe `kind:` name."""
    if not _KINDS:
        package = importlib.import_module(KINDS_PACKAGE)
        for module_info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{KINDS_PACKAGE}.{module_info.name}")
            specs = getattr(module, "SPECS", ()) or ((module.SPEC,) if hasattr(module, "SPEC") else ())
            for spec in specs:
                _KINDS[spec.name] = spec
    return _KINDS


def spec_for(kind: str) -> KindSpec:
    return all_kinds()[kind]
