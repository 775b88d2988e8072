"""`kind: pipeline`: stages, each a recipe, chained by what they read from each other.

    kind: pipeline
    name: tiny-end-to-end
    stages:
      filter:
        recipe: ../data/fineweb.yaml            # a recipe file, relative to this file ...
        overrides: {filter.tasks: 2}            # ... with overrides (nested or dotted keys)
      dedup:
        recipe: ../data/minhash.yaml
        overrides:
          dedup.input.paths: ["${stages.filter.output}"]   # an earlier stage's output
      notes:
        recipe: {kind: smoke, extends: ../base/defaults.yaml}   # or an inline recipe
        after: [dedup]                          # order without a data reference

A stage runs after every stage it references or lists in `after`. Each stage is an
ordinary run directory inside <output.root>/<name>/, named by the hash of its resolved
recipe, which includes the run directories (so the hashes) of the stages it reads: a
change reruns that stage and everything downstream of it, and nothing upstream.
A pipeline may name `variants`, each a set of overrides on some of its stages:

    variants:
      quality-filters: {}                                   # the pipeline as written
      no-quality-filters:
        filter: {filter.gopher_quality.enabled: false}

Each variant runs the pipeline with its overrides; stages that come out the same in every
variant (those before the first stage a variant changes) are one run, shared; the others
are named STAGE.VARIANT. The report compares the variants' evaluations in one table.
`seeds` repeats every variant once per seed, the seed set on the stages it names:

    seeds:
      values: [1, 2, 3]
      set: {pretrain: train.seed}     # STAGE: the key that takes the seed

Stages before the first seeded one stay shared; the seeded ones are named STAGE.sSEED
(STAGE.VARIANT.sSEED with variants). The report pools the seeds of each variant: the mean
of each metric and its standard error over the seeds, so a lead within the noise of
training is not called a win.
The pipeline's `tracking` block applies to every stage (W&B group: the pipeline's name),
and so does its `resources.container` when set (one image for the whole pipeline); the
other resources are each stage's own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from aistack.recipe.kinds import KindSpec
from aistack.recipe.schema import Name, Recipe, StrictModel


class StageSpec(StrictModel):
    recipe: str | dict[str, Any] = Field(description="a recipe file (relative to the pipeline file) or an inline recipe")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="keys set on the stage's recipe, nested or dotted (train.lr: 1e-4); "
                    "${stages.NAME.output} (or .output.KEY, .run) names an earlier stage's output")
    after: list[Name] = Field(default_factory=list, description="stages to wait for besides those referenced")

    @field_validator("recipe")
    @classmethod
    def _inline_has_kind(cls, value: str | dict) -> str | dict:
        if isinstance(value, dict) and value.get("kind") == "pipeline":
            raise ValueError("a recipe of another kind than pipeline (pipelines do not nest)")
        if isinstance(value, dict) and "kind" not in value and "extends" not in value:
            raise ValueError("an inline recipe with a `kind:` (or a path to a recipe file)")
        return value


class SeedAxis(StrictModel):
    values: list[int] = Field(min_length=2, description="the seeds: each variant runs once per seed (two at least: one is no axis)")
    set: dict[Name, str] = Field(min_length=1, description="{STAGE: the dotted key that takes the seed}, e.g. {pretrain: train.seed}")

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"distinct seeds (got {values})")
        return values


class PipelineRecipe(Recipe):
    kind: Literal["pipeline"] = "pipeline"
    stages: dict[Name, StageSpec] = Field(min_length=1, description="in order; each runs after the stages it reads")
    report: bool = Field(default=True, description="a last stage writing report.md/html from every stage's outputs")
    variants: dict[Name, dict[Name, dict[str, Any]]] = Field(
        default_factory=dict,
        description="named variants of the pipeline, each {STAGE: overrides} on top of the stage's own; every variant "
                    "runs from the first stage it changes, the stages before it are shared, the report compares them")
    seeds: SeedAxis | None = Field(default=None, description="every variant once per seed; the report pools the seeds")

    @model_validator(mode="after")
    def _variants_name_stages(self) -> "PipelineRecipe":
        for variant, stages in self.variants.items():
            unknown = [name for name in stages if name not in self.stages]
            if unknown:
                raise ValueError(f"variants.{variant}: {unknown[0]!r} is not a stage of this pipeline "
                                 f"({', '.join(self.stages)})")
        unknown = [name for name in (self.seeds.set if self.seeds else {}) if name not in self.stages]
        if unknown:
            raise ValueError(f"seeds.set: {unknown[0]!r} is not a stage of this pipeline ({', '.join(self.stages)})")
        for stage, seed_key in (self.seeds.set if self.seeds else {}).items():
            for variant, stages in self.variants.items():
                clash = [key for key in _dotted(stages.get(stage) or {}) if _overlaps(key, seed_key)]
                if clash:  # which would win is not for the loader to guess
                    raise ValueError(f"variants.{variant}.{stage}: {clash[0]!r} is what seeds.set.{stage} sets "
                                     f"({seed_key!r}): leave the seed to the seed axis, or drop it from the axis")
        return self


def _dotted(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys an override mapping sets: {train: {seed: 1}, "model.x": 2} -> train.seed, model.x."""
    keys = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        keys += _dotted(value, dotted + ".") if isinstance(value, dict) and value else [dotted]
    return keys


def _overlaps(key: str, other: str) -> bool:
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


# No planner: a pipeline expands into its stages (aistack.launch.stages).
SPEC = KindSpec("pipeline", PipelineRecipe, None, stage=False)
