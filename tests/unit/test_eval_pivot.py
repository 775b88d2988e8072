"""The report's evaluation table: models as rows, task/metric as columns, the best of each in bold."""

from __future__ import annotations

from aistack.report.page import _html, _markdown, Section, eval_pivot, model_labels


def row(run, step, task, metric, value):
    return {"run": run, "step": str(step), "task": task, "metric": metric, "value": str(value)}


def test_pivot_has_one_row_per_model_and_marks_the_best_of_each_column(tmp_path):
    distill = tmp_path / "distill-c"
    distill.mkdir()
    (distill / "recipe.yaml").write_text(f"teacher:\n  checkpoint: {tmp_path}/sft-b/jobs/train/tasks/00000/checkpoints\n")
    stages = [{"name": "pretrain", "kind": "pretrain", "run": str(tmp_path / "pretrain-a")},
              {"name": "sft", "kind": "sft", "run": str(tmp_path / "sft-b")},
              {"name": "distill", "kind": "distill", "run": str(distill)}]
    rows = [row("sft-b", 300, "reverse_words", "exact_match", 0.96), row("distill-c", 60, "reverse_words", "exact_match", 0.4),
            row("pretrain-a", 60, "reverse_words", "exact_match", 0.0),
            row("sft-b", 300, "heldout_ppl", "bits_per_byte", 3.1), row("pretrain-a", 60, "heldout_ppl", "bits_per_byte", 2.7),
            row("distill-c", 60, "heldout_ppl", "bits_per_byte", 4.0)]
    table = eval_pivot(rows, model_labels(stages))
    assert table[0] == ["model", "step", "heldout_ppl bits_per_byte", "reverse_words exact_match"]
    assert table[1:] == [["pretrain", "60", "**2.7**", "0"], ["sft", "300", "3.1", "**0.96**"],
                         ["distill (student of sft)", "60", "4", "0.4"]]
    page = _html("t", [Section("Evaluation", tables=[table])], {})
    assert "<td><b>2.7</b></td>" in page and "<td><b>0.96</b></td>" in page and "**" not in page
    assert "| pretrain | 60 | **2.7** | 0 |" in _markdown("t", [Section("Evaluation", tables=[table])], {})


def test_an_untrained_baseline_is_labelled_and_sorted_before_its_trained_model():
    rows = [row("pretrain-a", 60, "heldout_ppl", "bits_per_byte", 3.1),
            {**row("pretrain-a", 0, "heldout_ppl", "bits_per_byte", 10.0), "checkpoint": "untrained:/r/pretrain-a/step_000060"},
            {**row("sft-b", 300, "heldout_ppl", "bits_per_byte", 7.3), "checkpoint": "/r/sft-b/step_000300"}]
    table = eval_pivot(rows, {"pretrain-a": "pretrain", "sft-b": "sft"})
    assert table[1:] == [["pretrain (untrained, step 0)", "0", "10"], ["pretrain", "60", "**3.1**"], ["sft", "300", "7.3"]]


def test_a_value_shows_its_standard_error_and_a_lead_within_two_is_not_a_win():
    def em(run, value, se):
        return [row(run, 1, "reverse_words", "exact_match", value), row(run, 1, "reverse_words", "exact_match_stderr", se)]

    close = eval_pivot([*em("sft-b", 0.96, 0.03), *em("distill-c", 0.9, 0.04)], {"sft-b": "sft", "distill-c": "distill"})
    assert close[0] == ["model", "step", "reverse_words exact_match"], "the standard error is no column of its own"
    assert close[1:] == [["sft", "1", "0.96 ± 0.03"], ["distill", "1", "0.9 ± 0.04"]], "0.06 apart, 2 SE = 0.1: no win"
    clear = eval_pivot([*em("sft-b", 0.96, 0.03), *em("distill-c", 0.5, 0.07)], {"sft-b": "sft", "distill-c": "distill"})
    assert clear[1:] == [["sft", "1", "**0.96 ± 0.03**"], ["distill", "1", "0.5 ± 0.07"]]


def test_lm_eval_standard_errors_are_kept_and_na_is_dropped():
    from aistack.eval.evaluator import metrics_of

    got = metrics_of({"t": {"alias": "t", "exact_match,none": 0.5, "exact_match_stderr,none": 0.1,
                            "bits_per_byte,none": 2.0, "bits_per_byte_stderr,none": "N/A"}})
    assert got == {"t": {"exact_match": 0.5, "exact_match_stderr": 0.1, "bits_per_byte": 2.0}}
