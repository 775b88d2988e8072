"""`kind: report`: one page (report.md and report.html) over the runs of a pipeline.

A pipeline adds it as its last stage; the list of stage run directories is its input, so
its hash changes (and it runs again) whenever any stage does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aistack.recipe.kinds import JobSpec, KindSpec, single_node
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Name, Recipe, StrictModel


class ReportStage(StrictModel):
    name: Name
    kind: str
    run: str = Field(description="the stage's run directory")
    variant: Name | None = Field(default=None, description="the pipeline variant whose own stage this is (None: shared)")
    seed: int | None = Field(default=None, description="the seed of a seeded branch whose own stage this is (None: shared)")


class ReportConfig(StrictModel):
    title: str = "aistack pipeline report"
    stages: list[ReportStage] = Field(min_length=1)
    copy_to: str | None = Field(default=None, description="also copy report.md/html (and figures) into this directory")


class ReportRecipe(Recipe):
    kind: Literal["report"] = "report"
    report: ReportConfig

    NON_IDENTITY_KEYS = ("report.copy_to",)


def plan(loaded: LoadedRecipe) -> list[JobSpec]:
    """One small job that reads every stage's run directory and writes the pipeline's report."""
    return [JobSpec("report", "pipeline_report", 1, single_node(loaded.recipe.resources))]


# A pipeline adds it by itself as its last stage.
SPEC = KindSpec("report", ReportRecipe, plan, outputs={"output": "report.md"}, stage=False)
