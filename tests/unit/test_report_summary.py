"""The report's first lines: what the pipeline achieved, read from the files its stages wrote."""

from __future__ import annotations

import json
from pathlib import Path

from aistack.report.page import build


def _stage(root: Path, name: str, kind: str) -> dict[str, str]:
    run = root / f"{name}-0123456789"
    run.mkdir(parents=True)
    return {"name": name, "kind": kind, "run": str(run)}


def _step(name, kind, n_in, n_out):
    return {"name": name, "type": kind, "documents_in": n_in, "documents_out": n_out, "dropped": n_in - n_out, "dropped_by": {}}


def test_the_report_opens_with_what_the_pipeline_achieved(tmp_path):
    filt, dedup = _stage(tmp_path, "filter", "filter"), _stage(tmp_path, "dedup", "dedup")
    (Path(filt["run"]) / "stats.json").write_text(json.dumps({"jobs": [
        {"job": "filter", "tasks": 2, "steps": [_step("Warc reader", "reader", 234, 234), _step("Gopher", "filter", 234, 40)]}]}))
    (Path(dedup["run"]) / "stats.json").write_text(json.dumps({"jobs": [
        {"job": "signatures", "tasks": 2, "steps": [_step("Parquet reader", "reader", 40, 40)]},
        {"job": "buckets", "tasks": 14, "steps": [_step("MinHash stage 2", "dedup", 0, 0)]},
        {"job": "filter", "tasks": 2, "steps": [_step("MinHash stage 4", "dedup", 40, 36), _step("Parquet writer", "writer", 36, 36)]}]}))
    for stage in (filt, dedup):  # the data runs' reports are made (a funnel plot beside stats.json)
        (Path(stage["run"]) / "funnel.png").write_bytes(b"")
    pretrain = _stage(tmp_path, "pretrain", "pretrain")
    done = Path(pretrain["run"]) / "jobs" / "train" / "tasks" / "00000" / "DONE"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"result": {"steps": 60, "tokens": 122880, "loss": 4.21}}))
    evaluate = _stage(tmp_path, "evaluate", "evaluate")
    (Path(evaluate["run"]) / "results.csv").write_text(
        "run,step,checkpoint,task,metric,value\n"
        "pretrain-0123456789,60,/c,heldout_ppl,bits_per_byte,2.5\n"
        "pretrain-0123456789,0,untrained:/c,heldout_ppl,bits_per_byte,9.9\n"
        "pretrain-0123456789,60,/c,reverse_words,exact_match,0.02\n"
        "pretrain-0123456789,60,/c,reverse_words,exact_match_stderr,0.02\n")
    bench = _stage(tmp_path, "bench", "bench")
    (Path(bench["run"]) / "results.csv").write_text(
        "precision,batch,decode_tok_s\nbf16,1,100\nfp8,1,90\nbf16,4,300\nfp8,4,330\n")
    (Path(bench["run"]) / "results.json").write_text(json.dumps({"quality": {"delta_fp8_minus_bf16": {"bits_per_byte": 0.004}}}))

    build("t", [filt, dedup, pretrain, evaluate, bench], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    results = md.split("## Results", 1)[1].split("## Stages", 1)[0]
    assert md.index("## Results") < md.index("## Stages"), "results first"
    assert "234 documents read, 36 kept (15%) after filter, dedup" in results
    assert "**pretrain** (pretrain): 60 steps, 123 k tokens, final loss 4.21" in results
    assert "heldout_ppl bits_per_byte 2.5 (untrained 9.9)" in results and "exact_match 0.02 ± 0.02" in results
    assert "decode 330 tokens/s in fp8 vs 300 in BF16 at batch 4 (1.10x)" in results and "bits_per_byte +0.004" in results
    # dedup's jobs as one funnel, without the job that passes no document
    dedup_part = md.split("## Data: dedup", 1)[1].split("##", 1)[0]
    assert dedup_part.count("| job | step |") == 1 and "MinHash stage 2" not in dedup_part
    assert "jobs that pass no document through: buckets (14 tasks)" in dedup_part
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<b>Data</b>: 234 documents read" in page and "**" not in page


def test_a_sweeps_variants_are_compared_in_one_table_and_a_winner_only_beyond_noise(tmp_path):
    evals = [_stage(tmp_path, name, "evaluate") for name in ("evaluate.filtered", "evaluate.unfiltered")]
    header = "run,step,checkpoint,task,metric,value\n"
    (Path(evals[0]["run"]) / "results.csv").write_text(header + "pretrain-a,60,/c,heldout,bits_per_byte,2.5\n"
                                                       "pretrain-a,60,/c,words,exact_match,0.50\n"
                                                       "pretrain-a,60,/c,words,exact_match_stderr,0.07\n")
    (Path(evals[1]["run"]) / "results.csv").write_text(header + "pretrain-b,60,/c,heldout,bits_per_byte,2.9\n"
                                                       "pretrain-b,60,/c,words,exact_match,0.56\n"
                                                       "pretrain-b,60,/c,words,exact_match_stderr,0.07\n")
    for variant, kept in (("filtered", 37), ("unfiltered", 214)):
        data = _stage(tmp_path, f"filter.{variant}", "filter")
        (Path(data["run"]) / "stats.json").write_text(json.dumps({"jobs": [{"job": "filter", "tasks": 1, "steps": [
            _step("Warc reader", "reader", 234, 234), _step("Gopher", "filter", 234, kept)]}]}))
        (Path(data["run"]) / "funnel.png").write_bytes(b"")
        evals.insert(0, {**data, "variant": variant})
    stages = [{"name": "pretrain.filtered", "kind": "pretrain", "run": str(tmp_path / "pretrain-a")},
              {"name": "pretrain.unfiltered", "kind": "pretrain", "run": str(tmp_path / "pretrain-b")}, *evals]
    build("t", stages, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    compared = md.split("## Evaluation: the variants compared", 1)[1].split("## Evaluation: evaluate.filtered", 1)[0]
    assert "| pretrain.filtered | 60 | **2.5** | 0.5 ± 0.07 |" in compared
    assert "| pretrain.unfiltered | 60 | 2.9 | 0.56 ± 0.07 |" in compared, "0.06 apart with 2 SE of 0.2: no win"
    results = md.split("## Results", 1)[1].split("## Stages", 1)[0]
    assert "**Data (filtered)**: 234 documents read, 37 kept (16%) after filter.filtered" in results
    assert "**Data (unfiltered)**: 234 documents read, 214 kept (91%) after filter.unfiltered" in results
    assert ("**heldout bits_per_byte**: best pretrain.filtered (step 60), 2.5 (vs pretrain.unfiltered (step 60) 2.9) "
            "(no standard error for this metric") in results
    assert "**words exact_match**: no model leads by more than two standard errors" in results


def test_seeds_are_pooled_into_a_mean_with_its_standard_error_and_a_win_needs_more_than_their_spread(tmp_path):
    """Two variants at three seeds each: one row per variant (mean ± stdev / sqrt(3)); the
    variant ahead in bits per byte by less than the seeds move it is not a winner, the one
    ahead in exact match by far more is."""
    header = "run,step,checkpoint,task,metric,value\n"
    stages, evals = [], []
    figures = {"a": ([2.50, 2.70, 2.60], [0.90, 0.92, 0.88]), "b": ([2.65, 2.55, 2.75], [0.20, 0.22, 0.18])}
    for variant, (bpb, em) in figures.items():
        for seed, (b, e) in enumerate(zip(bpb, em), start=1):
            model = _stage(tmp_path, f"pretrain.{variant}.s{seed}", "pretrain")
            evaluation = _stage(tmp_path, f"evaluate.{variant}.s{seed}", "evaluate")
            name = Path(model["run"]).name
            (Path(evaluation["run"]) / "results.csv").write_text(
                header + f"{name},60,/c,heldout,bits_per_byte,{b}\n{name},60,/c,words,exact_match,{e}\n"
                + f"{name},60,/c,words,exact_match_stderr,0.01\n")
            stages.append({**model, "variant": variant, "seed": seed})
            evals.append({**evaluation, "variant": variant, "seed": seed})
    build("t", stages + evals, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    compared = md.split("## Evaluation: the variants compared", 1)[1].split("## Evaluation: evaluate.a.s1", 1)[0]
    assert "| pretrain.a (mean of 3 seeds) | 60 | 2.6 ± 0.05774 | **0.9 ± 0.01155** |" in compared, compared
    assert "| pretrain.b (mean of 3 seeds) | 60 | 2.65 ± 0.05774 | 0.2 ± 0.01155 |" in compared, compared
    assert "pretrain.a.s1" not in compared, "a seed's own row is in its evaluation's section, not in the comparison"
    results = md.split("## Results", 1)[1].split("## Stages", 1)[0]
    assert "**heldout bits_per_byte**: no model leads by more than two standard errors" in results
    assert "**words exact_match**: best pretrain.a (mean of 3 seeds) (step 60), 0.9" in results
