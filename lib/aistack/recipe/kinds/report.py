"""`kind: report`: one page (report.md and report.html) over the runs of a pipeline.

A pipeline adds it as its last stage; the list of stage run directories is its input, so
its hash changes (and it runs again) whenever any stage does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aistack.recipe.schema import Name, Recipe, StrictModel, register_kind


class ReportStage(StrictModel):
    name: Name
    kind: str
    run: str = Field(description="the stage's run directory")


class ReportConfig(StrictModel):
    title: str = "aistack pipeline report"
    stages: list[ReportStage] = Field(min_length=1)
    copy_to: str | None = Field(default=None, description="also copy report.md/html (and figures) into this directory")


@register_kind("report")
class ReportRecipe(Recipe):
    kind: Literal["report"] = "report"
    report: ReportConfig

    NON_IDENTITY_KEYS = ("report.copy_to",)
