"""Pretraining on megatron-core, on CPU through the launcher's local executor (real submitit
tasks, gloo): training, exact resume, TP x PP against one process, resharded loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aistack.launch import launcher
from aistack.track.metrics import read_metrics
from conftest import RECIPES

TINY = RECIPES / "pretrain" / "gpt-tiny.yaml"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from aistack.model.dataset import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", vocab_size=512, num_docs=400)


def overrides(root: Path, data: Path, *extra: str) -> list[str]:
    return [f"output.root={root}", f"data.paths=[{{path: {data}}}]", "tracking.mode=disabled", *extra]


def trace(run, key: str = "loss") -> dict[int, float]:
    return dict(trace_rows(run, key))


def trace_rows(run, key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) in the order metrics.jsonl holds them: a step logged twice shows."""
    return [(r["step"], r[key]) for r in read_metrics(run.task_dir("train", 0) / "metrics.jsonl") if key in r]


def test_tiny_trains_and_validation_loss_falls(tmp_path, tiny_data):
    result = launcher.launch(TINY, overrides(tmp_path, tiny_data, "train.steps=40"), on="local")
    val = trace(result.run, "val_loss")
    assert sorted(val) == [0, 10, 20, 30, 40]
    assert val[0] == pytest.approx(6.24, abs=0.1), "starts near ln(512): an untrained model"
    assert val[40] < 0.6 * val[0], f"validation loss must fall well below its start: {val}"
    rows = [r for r in read_metrics(result.run.task_dir("train", 0) / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 41))
    last = rows[-1]
    assert last["lr"] == pytest.approx(3e-4) and rows[4]["lr"] == pytest.approx(3e-3), "warmup to lr, cosine to min_lr"
    assert last["tokens_per_s"] > 0 and last["tflops_per_device"] > 0 and last["grad_norm"] > 0 and last["mem_rss_gb"] > 0
    assert "mfu" not in last, "no MFU on CPU (no peak to compare with)"
    # Logged TFLOP/s use the plan's convention, Megatron-LM's num_floating_point_operations: per
    # token 2 layers x 6 x (QKV 64 x 128 + causal scores 64 x 64 + proj 64 x 64 + SwiGLU 3 x 64 x 192)
    # + 6 x 64 x 512 logits, 8 x 64 tokens a step.
    flops = 8 * 64 * (2 * 6 * (64 * 128 + 64 * 64 + 64 * 64 + 3 * 64 * 192) + 6 * 64 * 512)
    assert last["tflops_per_device"] * 1e12 * last["step_time"] == pytest.approx(flops, rel=1e-9)
    done = result.run.task_result("train", 0)["result"]
    assert done["steps"] == 40 and done["val_loss"] == val[40]
    ckpts = result.run.task_dir("train", 0) / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000040"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_")) == ["step_000030", "step_000040"], "keep: 2"


def test_resume_from_checkpoint_reproduces_the_uninterrupted_trace(tmp_path, tiny_data):
    args = overrides(tmp_path, tiny_data, "train.steps=20", "checkpoint.every=5", "checkpoint.keep=5", "model.hidden_dropout=0.1")
    first = launcher.launch(TINY, args, on="local")
    full = trace_rows(first.run)
    assert [step for step, _ in full] == list(range(1, 21))
    # Interrupt "after step 12": drop what came after the step-10 checkpoint, run the recipe again.
    task = first.run.task_dir("train", 0)
    for late in ("step_000015", "step_000020"):
        shutil.rmtree(task / "checkpoints" / late)
    (task / "checkpoints" / "latest").write_text("step_000010\n")
    first.run.done_file("train", 0).unlink()
    again = launcher.launch(TINY, args, on="local")
    assert again.run.path == first.run.path
    resumed = trace_rows(again.run)
    assert resumed == full, "each step once; same seed, same data order, same RNG streams (dropout): a bit-identical trace"
    log = next(first.run.log_dir("train").glob("*_0_log.out"), None)
    assert log is not None and "resuming from step 10" in "".join(p.read_text() for p in first.run.log_dir("train").glob("*_log.out"))


def test_fused_and_compiled_layers_train_as_the_default_kernels(tmp_path, tiny_data):
    """The speed paths change rounding, not the model: the loss trace of the CPU default (SDPA,
    unfused; tests/unit/test_sdpa_attention.py holds SDPA to megatron's local attention), of
    + fusions and fused AdamW, and of compiled layers agree step by step (fp32; 1e-4 relative)."""
    variants = {"default": [], "fused": ["train.fused=true"], "compile": ["train.fused=true", "train.compile=true"]}
    traces, kernels = {}, {}
    for name, extra in variants.items():
        result = launcher.launch(TINY, overrides(tmp_path / name, tiny_data, "train.steps=6", *extra), on="local")
        traces[name] = trace(result.run)
        kernels[name] = result.run.task_result("train", 0)["result"]["kernels"]
    assert kernels["default"] == {"attention": "sdpa", "fused": False, "compile": False}, "no fusions by default on a CPU"
    assert kernels["compile"] == {"attention": "sdpa", "fused": True, "compile": True}
    assert sorted(traces["default"]) == list(range(1, 7)) and traces["default"][6] < traces["default"][1]
    for name in ("fused", "compile"):
        assert traces[name].keys() == traces["default"].keys()
        for step, ref in traces["default"].items():
            assert traces[name][step] == pytest.approx(ref, rel=1e-4), (name, step)


@pytest.fixture(scope="module")
def seed_checkpoint(tmp_path_factory, tiny_data) -> Path:
    """Weights to start both layouts from (TP/PP layouts initialise differently)."""
    root = tmp_path_factory.mktemp("seed")
    result = launcher.launch(TINY, overrides(root, tiny_data, "train.steps=1"), on="local")
    return result.run.task_dir("train", 0) / "checkpoints" / "step_000001"


def test_tp2_pp2_over_4_ranks_matches_one_process_and_reshards_to_tp1(tmp_path, tiny_data, seed_checkpoint):
    common = ("train.steps=6", "train.eval_every=6", f"checkpoint.load={seed_checkpoint}", "checkpoint.load_optimizer=false")
    one = launcher.launch(TINY, overrides(tmp_path / "tp1", tiny_data, *common), on="local")
    four = launcher.launch(TINY, overrides(tmp_path / "tp2pp2", tiny_data, *common, "parallel.tensor=2", "parallel.pipeline=2",
                                           "resources.tasks_per_node=4"), on="local")
    done = four.run.task_result("train", 0)["result"]
    assert done["layout"] == {"tp": 2, "pp": 2, "dp": 1}
    single, parallel = trace(one.run), trace(four.run)
    assert sorted(parallel) == list(range(1, 7))
    for step in range(1, 7):
        assert parallel[step] == pytest.approx(single[step], rel=1e-4, abs=1e-4), f"step {step}: {parallel} vs {single}"
    assert trace(four.run, "val_loss")[6] == pytest.approx(trace(one.run, "val_loss")[6], rel=1e-4)

    # The TP=2 x PP=2 checkpoint, loaded at TP=1 x PP=1: the same validation loss.
    saved = four.run.task_dir("train", 0) / "checkpoints"
    assert json.loads((saved / "step_000006" / "aistack.json").read_text())["world_size"] == 4
    reload = launcher.launch(TINY, overrides(tmp_path / "reload", tiny_data, "train.steps=6", f"checkpoint.load={saved}"), on="local")
    reloaded = reload.run.task_result("train", 0)["result"]
    assert reloaded["layout"] == {"tp": 1, "pp": 1, "dp": 1} and reloaded["steps"] == 6
    assert reloaded["val_loss"] == pytest.approx(done["val_loss"], rel=1e-5)


def test_planner_rejects_layouts_that_do_not_divide(tmp_path, tiny_data):
    from aistack.recipe import RecipeError

    bad = [
        (["parallel.tensor=3", "resources.tasks_per_node=3"], "model.num_attention_heads"),
        (["parallel.pipeline=2", "resources.tasks_per_node=3"], "must divide the world size 3"),
        (["parallel.pipeline=2", "model.num_layers=3", "resources.tasks_per_node=2"], "model.num_layers"),
        (["resources.tasks_per_node=2", "train.global_batch_size=6", "train.micro_batch_size=2"], "train.global_batch_size"),
    ]
    for extra, expected in bad:
        with pytest.raises(RecipeError, match=expected) as err:
            launcher.prepare(TINY, overrides(tmp_path, tiny_data, *extra), on="local")
        assert "gpt-tiny.yaml" in str(err.value)


def test_big_recipes_plan_and_render(tmp_path):
    from aistack.launch.launcher import prepare

    loaded, plan, _, _ = prepare(RECIPES / "pretrain" / "llama3-8b-1024gpu.yaml", [f"output.root={tmp_path}"], on="local")
    (job,) = plan.jobs
    assert job.resources.world_size == 1024 and job.num_tasks == 1
    p = loaded.recipe.parallel
    assert (p.tensor, p.pipeline, 1024 // (p.tensor * p.pipeline)) == (8, 2, 64)
    prepare(RECIPES / "pretrain" / "gpt-125m.yaml", [f"output.root={tmp_path}"], on="local")


def test_fp8_without_a_gpu_is_a_clear_error():
    import torch

    from aistack.model.gpt import resolve_precision

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(RuntimeError, match="fp8 is not available here: no GPU"):
        resolve_precision("fp8")
    assert resolve_precision("auto") == "fp32"


@pytest.mark.parametrize("fused", [False, True], ids=["foreach-adamw", "fused"])
def test_distributed_optimizer_over_2_data_parallel_ranks_resumes_exactly(tmp_path, tiny_data, fused):
    # megatron 0.16.1's DistributedOptimizer with torch AdamW needs the 'step' fixes in optim.py;
    # fused: torch's fused AdamW and the torch.compile'd fusions (the GPU default), on the CPU.
    args = overrides(tmp_path, tiny_data, "train.steps=10", "checkpoint.every=5", "checkpoint.keep=3",
                     "parallel.distributed_optimizer=true", "resources.tasks_per_node=2", f"train.fused={str(fused).lower()}")
    first = launcher.launch(TINY, args, on="local")
    assert first.run.task_result("train", 0)["result"]["layout"] == {"tp": 1, "pp": 1, "dp": 2}
    full = trace_rows(first.run)
    task = first.run.task_dir("train", 0)
    shutil.rmtree(task / "checkpoints" / "step_000010")
    (task / "checkpoints" / "latest").write_text("step_000005\n")
    first.run.done_file("train", 0).unlink()
    launcher.launch(TINY, args, on="local")
    assert trace_rows(first.run) == full  # steps 6-10 once each, with the same losses
