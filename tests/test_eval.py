"""Evaluation with lm-eval on aistack checkpoints: the registered `aistack` model against the
HF export through lm-eval's `hf` model, trained vs untrained on the project's tinylang tasks,
offline errors that name the dataset, and the checkpoints x tasks sweep with its table."""

from __future__ import annotations

import csv
import filecmp
import json
import time
from pathlib import Path

import pytest

from aistack.launch import launcher
from conftest import RECIPES

TINY = RECIPES / "pretrain" / "gpt-tiny.yaml"
EVAL = RECIPES / "eval" / "tinylang.yaml"
TASKS = RECIPES / "eval" / "tasks" / "tinylang"


def train(root: Path, corpus: Path, *extra: str) -> Path:
    """A gpt-tiny run on tinylang (its word-level tokenizer); returns the run directory."""
    args = [f"output.root={root}", f"data.paths=[{{path: {corpus}}}]", f"data.tokenizer={TASKS / 'tokenizer.json'}",
            "model.vocab_size=null", "tracking.mode=disabled", *extra]
    return launcher.launch(TINY, args, on="local").run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from aistack.eval import tinylang

    root = tmp_path_factory.mktemp("eval")
    corpus = tinylang.write_corpus(root / "data" / "tl", num_docs=400)
    return {
        # checkpoints at steps 20 and 40
        "trained": train(root / "trained", corpus, "train.steps=40", "checkpoint.every=20", "checkpoint.keep=3"),
        # one step at a learning rate of 1e-9: the initial weights, as a checkpoint
        "random": train(root / "random", corpus, "train.steps=1", "train.lr=1e-9", "train.min_lr=0", "train.eval_every=1"),
    }


def evaluate(tmp_path, run: Path, task: str, backend: str = "aistack", **extra) -> dict:
    from aistack.eval.evaluator import evaluate_pair
    from aistack.kinds.evaluate import EvaluateConfig

    cfg = EvaluateConfig(checkpoints=[str(run)], tasks=[task], backend=backend, batch_size=16, **extra)
    return evaluate_pair(cfg, cfg.checkpoints[0], task, tmp_path / f"{backend}-{task}")["metrics"][task]


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    # evaluate_pair sets the HF offline switches in this process: restore them afterwards.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_shipped_tinylang_files_are_made_by_the_project(tmp_path):
    from aistack.eval import tinylang

    tinylang.write_tasks(tmp_path)
    for name in ("mc.jsonl", "ppl.jsonl", "tokenizer.json"):
        assert filecmp.cmp(tmp_path / name, TASKS / name, shallow=False), f"{name} differs from `python -m aistack.eval.tinylang`"
    docs = [json.loads(line) for line in (TASKS / "mc.jsonl").read_text().splitlines()]
    assert len(docs) == 100 and all(len(d["choices"]) == 4 and len(set(d["choices"])) == 4 for d in docs)


def test_aistack_model_is_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    from aistack.eval.lm_model import AistackLM

    assert get_model("aistack") is AistackLM


def test_registered_model_and_hf_export_agree(tmp_path, runs):
    # The untrained checkpoint: near-chance choices, so a scoring difference would show in the accuracy.
    ours = evaluate(tmp_path, runs["random"], "tinylang_mc")
    theirs = evaluate(tmp_path, runs["random"], "tinylang_mc", backend="hf")
    assert (tmp_path / "hf-tinylang_mc" / "hf" / "config.json").exists(), "exported with model.export_hf"
    assert ours["acc"] == theirs["acc"] and ours["acc_norm"] == theirs["acc_norm"], (ours, theirs)
    ppl_ours = evaluate(tmp_path, runs["trained"], "tinylang_ppl")
    ppl_theirs = evaluate(tmp_path, runs["trained"], "tinylang_ppl", backend="hf")
    assert ppl_ours["word_perplexity"] == pytest.approx(ppl_theirs["word_perplexity"], rel=1e-4)


def test_trained_model_beats_an_untrained_one(tmp_path, runs):
    vocab = 129  # tinylang's tokenizer: 127 words + end-of-text + unk
    rand_ppl = evaluate(tmp_path, runs["random"], "tinylang_ppl")["word_perplexity"]
    trained_ppl = evaluate(tmp_path, runs["trained"], "tinylang_ppl")["word_perplexity"]
    assert 0.7 * vocab < rand_ppl < 1.5 * vocab, f"an untrained model is near uniform over {vocab} tokens: {rand_ppl}"
    assert trained_ppl < 0.2 * rand_ppl, (trained_ppl, rand_ppl)
    rand_acc = evaluate(tmp_path, runs["random"], "tinylang_mc")["acc"]
    trained_acc = evaluate(tmp_path, runs["trained"], "tinylang_mc")["acc"]
    assert 0.1 <= rand_acc <= 0.45, f"chance is 0.25 over 100 questions: {rand_acc}"
    assert trained_acc >= 0.9, trained_acc
    # generate_until: greedy next word
    assert evaluate(tmp_path, runs["trained"], "tinylang_gen")["exact_match/strip"] >= 0.9


def test_perplexity_task_built_from_a_local_file_scores_as_a_shipped_task(tmp_path, runs):
    """A `data_tasks` perplexity task over tinylang_ppl's own documents (given as the held-out
    file of a tokenize run would be: {id, text}) gives tinylang_ppl's numbers, and sees training."""
    docs = [json.loads(line) for line in (TASKS / "ppl.jsonl").read_text().splitlines()]
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps({"id": f"doc-{i}", "text": d["text"]}) + "\n" for i, d in enumerate(docs)))
    spec = {"heldout_ppl": {"type": "perplexity", "data": str(held)}}
    built = evaluate(tmp_path, runs["trained"], "heldout_ppl", data_tasks=spec)
    shipped = evaluate(tmp_path, runs["trained"], "tinylang_ppl")
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert built[metric] == pytest.approx(shipped[metric], rel=1e-9), metric
    untrained = evaluate(tmp_path / "random", runs["random"], "heldout_ppl", data_tasks=spec)
    assert built["bits_per_byte"] < 0.6 * untrained["bits_per_byte"], (built, untrained)
    assert (tmp_path / "aistack-heldout_ppl" / "data_tasks" / "heldout_ppl" / "heldout_ppl.yaml").exists()


def test_untrained_baseline_is_the_runs_model_at_step_0(tmp_path, runs):
    """evaluate.untrained: the run's model block freshly initialised with its seed, evaluated as step 0
    (the same numbers as the run's own first weights), labelled as such in the report's pivot."""
    from aistack.eval.evaluator import evaluate_pair
    from aistack.kinds.evaluate import EvaluateConfig
    from aistack.report.page import eval_pivot

    cfg = EvaluateConfig(checkpoints=[str(runs["trained"])], untrained=[str(runs["trained"])], tasks=["tinylang_ppl"],
                         batch_size=16)
    pairs = cfg.pairs()
    assert [c.startswith("untrained:") for c, _ in pairs] == [True, False]
    results = [evaluate_pair(cfg, c, t, tmp_path / f"pair{i}") for i, (c, t) in enumerate(pairs)]
    base, trained = (r["metrics"]["tinylang_ppl"]["bits_per_byte"] for r in results)
    assert results[0]["step"] == 0 and results[1]["step"] == 40
    assert base > 1.5 * trained, (base, trained)
    # a learning rate of 1e-9 for one step: the run's first weights, with the same seed
    first = evaluate(tmp_path, runs["random"], "tinylang_ppl")["bits_per_byte"]
    assert base == pytest.approx(first, rel=1e-5), (base, first)
    rows = [{"run": r["run"], "step": str(r["step"]), "checkpoint": r["checkpoint"], "task": "tinylang_ppl",
             "metric": "bits_per_byte", "value": str(r["metrics"]["tinylang_ppl"]["bits_per_byte"])} for r in results]
    table = eval_pivot(rows, {runs["trained"].name: "pretrain"})
    assert [r[:2] for r in table[1:]] == [["pretrain (untrained, step 0)", "0"], ["pretrain", "40"]]
    assert table[2][2].startswith("**"), "the trained model is the best"


def test_chat_task_prompts_with_the_template_and_stops_at_the_end_of_turn(tmp_path):
    """A `chat` data task: each record's last assistant turn is the target; the prompt is the
    conversation before it with the generation prompt, rendered by the tokenizer's template."""
    import yaml

    from aistack.data.tokenize import train_bpe
    from aistack.eval.data_tasks import chat_task
    from aistack.post import reverse_task

    tok = train_bpe(["reverse: a b c c b a"] * 20, 300, 1, "<|endoftext|>", reverse_task.SPECIAL, tmp_path / "tokenizer.json")
    data = reverse_task.write_jsonl(tmp_path / "eval.jsonl", [reverse_task.record(w) for w in ("abc", "dog")])
    folder = chat_task("rev", data, tmp_path / "tasks", tok, max_gen_toks=5)
    cfg = yaml.safe_load((folder / "rev.yaml").read_text())
    assert cfg["output_type"] == "generate_until" and cfg["generation_kwargs"]["until"] == ["<|end|>"]
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    assert rows[0] == {"context": "<|user|>\nreverse: a b c<|end|><|assistant|>\n", "target": "c b a"}
    assert rows[1]["target"] == "g o d"
    train, prompts = reverse_task.words()
    assert not set(reverse_task.eval_words()) & (set(train[:1500]) | set(prompts)), "evaluation words are seen by no model"


def test_uncached_dataset_fails_fast_naming_task_and_dataset(tmp_path, runs):
    from aistack.eval.tasks import MissingDataset, UnknownTask

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "remote.yaml").write_text(
        "task: remote_mc\ndataset_path: aistack-tests/never-downloaded\ndataset_name: main\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: 0\n"
    )
    start = time.time()
    with pytest.raises(MissingDataset, match=r"task 'remote_mc': dataset 'aistack-tests/never-downloaded' \(config 'main'\)") as err:
        evaluate(tmp_path, runs["random"], "remote_mc", task_paths=[str(tasks)])
    assert "HF_DATASETS_OFFLINE=1" in str(err.value)
    assert time.time() - start < 60, "offline: no waiting on the network"
    with pytest.raises(UnknownTask, match="tinylang_mcq.*close: tinylang_mc"):
        evaluate(tmp_path, runs["random"], "tinylang_mcq")


def test_recipe_resolves_checkpoints_and_errors_name_the_key(tmp_path, runs):
    from aistack.recipe import RecipeError

    loaded, plan, _, _ = launcher.prepare(EVAL, [f"output.root={tmp_path}", f"evaluate.checkpoints=[{runs['trained']}]",
                                                 "evaluate.tasks=[tinylang_mc,tinylang_ppl]"], on="local")
    steps = [Path(c).name for c in loaded.recipe.evaluate.checkpoints]
    assert steps == ["step_000020", "step_000040"], "all_steps: every saved checkpoint of the run"
    assert [(j.name, j.num_tasks, j.depends_on) for j in plan.jobs] == [("eval", 4, ()), ("gather", 1, ("eval",))]
    with pytest.raises(RecipeError, match="evaluate.checkpoints") as err:
        launcher.prepare(EVAL, [f"output.root={tmp_path}", f"evaluate.checkpoints=[{tmp_path / 'nope'}]"], on="local")
    assert "nothing at" in str(err.value) and "tinylang.yaml" in str(err.value)


def _check_sweep(run_dir: Path) -> None:
    with open(run_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    got = {(r["step"], r["task"], r["metric"]) for r in rows}
    # a mean's standard error beside it (lm-eval's closed form); lm-eval gives none for perplexities
    want = {(s, "tinylang_mc", m) for s in ("20", "40") for m in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr")}
    want |= {(s, "tinylang_ppl", m) for s in ("20", "40") for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
    assert got == want and len(rows) == len(want)
    ppl = {r["step"]: float(r["value"]) for r in rows if r["metric"] == "word_perplexity"}
    assert ppl["40"] < ppl["20"], "perplexity falls with training"
    table = json.loads((run_dir / "results.json").read_text())["table"]
    assert len(table["tinylang_ppl/word_perplexity"]) == 2
    for plot in ("tinylang_mc__acc.png", "tinylang_ppl__word_perplexity.png"):
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((run_dir / "plots").glob("*stderr*")), "a standard error is no plot of its own"


SWEEP = ["evaluate.tasks=[tinylang_mc,tinylang_ppl]", "tracking.mode=offline"]


@pytest.mark.slurm
def test_sweep_of_2_checkpoints_x_2_tasks_on_slurm(slurm_cluster, tmp_path, runs):
    result = launcher.launch(EVAL, [f"output.root={tmp_path}", f"evaluate.checkpoints=[{runs['trained']}]", *SWEEP], on="slurm")
    evals = [s for s in result.submitted if s.job == "eval"]
    assert len(evals) == 1 and evals[0].is_array and len(evals[0].task_ids) == 4, "one Slurm array of 4 tasks"
    rows = launcher.wait(result, timeout_s=600)
    assert {r.state for r in rows} == {"COMPLETED"}, rows
    _check_sweep(result.run.path)
    # (no second sweep on the local executor: its array path is in every local test of an array stage)
    assert list((result.run.path / "wandb").glob("offline-run-*")), "the gather job logs to W&B (offline)"
