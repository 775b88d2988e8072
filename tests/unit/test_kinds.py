"""Each kind is declared once (aistack.kinds): schema, planner, outputs, report section."""

from __future__ import annotations

import importlib.util

import pytest

from aistack.recipe.kinds import all_kinds, spec_for
from aistack.launch.plan import _check_entry

ALL = {"smoke", "filter", "dedup", "tokenize", "pretrain", "sft", "distill", "evaluate", "bench", "report", "pipeline"}


def test_every_kind_is_found_without_a_hand_kept_list():
    kinds = all_kinds()
    assert set(kinds) == ALL
    for name, spec in kinds.items():
        assert spec.name == name
        assert spec.recipe.model_fields["kind"].default == name  # the schema answers to its own kind


def test_stage_kinds_plan_and_name_their_main_output():
    for spec in all_kinds().values():
        if spec.stage:
            assert spec.plan is not None and "output" in spec.outputs, spec.name
    assert spec_for("pipeline").plan is None and not spec_for("pipeline").stage
    assert not spec_for("report").stage


def test_report_sections_and_estimates_are_declared_by_the_kinds():
    sections = {name: spec.report for name, spec in all_kinds().items()}
    assert sections["filter"] == sections["dedup"] == sections["tokenize"] == "data"
    assert sections["pretrain"] == sections["sft"] == sections["distill"] == "training"
    assert (sections["evaluate"], sections["bench"], sections["smoke"]) == ("evaluation", "benchmark", None)
    assert sorted(n for n, s in all_kinds().items() if s.estimate) == ["distill", "pretrain", "sft"], "the training kinds"


def test_job_modules_are_checked_when_planning_not_on_the_node():
    _check_entry("smoke")  # exists
    with pytest.raises(ValueError, match="aistack.jobs.no_such_job does not exist"):
        _check_entry("no_such_job")
    assert importlib.util.find_spec("aistack.jobs.smoke") is not None
