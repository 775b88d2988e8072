"""`aistack plan` estimates for pretrain recipes: parameter counts against published models,
memory against hand-computed bytes and Korthikanti et al.'s formulas, FLOPs against
Narayanan et al.'s, the pipeline bubble, and the layouts that are rejected."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aistack.cli import main
from aistack.model.estimate import bubble_fraction, count_params, estimate, flops_per_step, layer_activation_bytes
from aistack.model.layout import padded_vocab_size
from aistack.recipe import RecipeError, Resources, load_recipe
from aistack.kinds.pretrain import ModelConfig, PretrainRecipe
from conftest import RECIPES

LLAMA3_8B = dict(arch="llama", num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
                 ffn_hidden_size=14336, seq_length=8192, vocab_size=128256)
GPT2_SMALL = dict(arch="gpt2", num_layers=12, hidden_size=768, num_attention_heads=12, seq_length=1024, vocab_size=50257)


def recipe(model: dict, parallel: dict | None = None, train: dict | None = None, gpus: int = 1) -> PretrainRecipe:
    """One node; gpus=0: one CPU task."""
    return PretrainRecipe.model_validate({
        "kind": "pretrain", "name": "t", "model": model, "parallel": parallel or {}, "train": train or {},
        "resources": {"nodes": 1, "gpus_per_node": gpus},
    })


# --- parameters ---------------------------------------------------------------------------


def test_llama3_8b_has_8_03b_parameters():
    m = ModelConfig(**LLAMA3_8B)
    params = count_params(m, padded_vocab_size(128256, m, 1))
    assert params.total == pytest.approx(8.03e9, rel=0.005)
    assert params.total == 8_030_261_248, "exactly the Hugging Face checkpoint's count (128256 is a multiple of 128)"
    assert params.embedding == params.output == 128256 * 4096, "untied"
    # With TP 8 megatron pads the vocabulary to a multiple of 128 x 8: 129024 rows.
    assert padded_vocab_size(128256, m, 8) == 129024


def test_gpt2_small_has_124m_parameters():
    m = ModelConfig(**GPT2_SMALL)
    padded = count_params(m, padded_vocab_size(50257, m, 1))
    assert padded_vocab_size(50257, m, 1) == 50304
    assert padded.total == pytest.approx(124.44e6, rel=0.005)
    assert padded.output == 0, "tied: the output layer is the embedding"
    unpadded = count_params(m, 50257)
    assert unpadded.total == 124_439_808, "Hugging Face's gpt2 with the unpadded vocabulary"


# --- memory, by hand ----------------------------------------------------------------------

# Llama-style, GQA, TP 2 x PP 2 x DP 2, sequence parallel, distributed optimizer, bf16.
SMALL = dict(arch="llama", num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=4,
             ffn_hidden_size=512, seq_length=128, vocab_size=1000)


def test_memory_of_a_small_config_matches_the_hand_count():
    r = recipe(SMALL, {"tensor": 2, "pipeline": 2, "sequence_parallel": True, "distributed_optimizer": True},
               {"micro_batch_size": 2, "global_batch_size": 16, "precision": "bf16"}, gpus=8)
    est = estimate(r)
    assert (est.tp, est.pp, est.dp, est.microbatches, est.padded_vocab_size) == (2, 2, 2, 4, 1024)
    # A layer: qkv 256x(256+2x128) + proj 256x256 + fc1 256x1024 + fc2 512x256 = 589824 split by TP,
    # two RMSNorms 2x256 whole. Stage 0: 2 layers + half the 1024x256 embedding.
    assert est.params.per_layer == 589_824 + 512
    assert est.peak_stage == 0, "the first stage holds 2 micro-batches in flight, the last 1"
    assert est.params_per_device == 2 * (589_824 // 2 + 512) + 1024 * 256 // 2 == 721_920
    GiB = 2**30
    assert est.weights_gib * GiB == 721_920 * 2  # bf16
    assert est.grads_gib * GiB == 721_920 * 4  # fp32 main grads
    assert est.optimizer_gib["replicated"] * GiB == 721_920 * 12  # fp32 master + 2 moments
    assert est.optimizer_gib["distributed"] * GiB == 721_920 * 12 / 2  # over DP 2
    # One layer, one micro-batch (s=128, b=2), bytes per token: outside TP (2 norm, qkv, fc1
    # inputs at 2 bytes, 2 one-byte masks) 2560 / 2 (SP); inside Q, K, V, proj input, SwiGLU
    # 2 x (256 + 2x128 + 256 + 4x512) = 5632 / 2; scores 5 x a x s = 5120 / 2.
    per_layer = {"none": 256 * (1280 + 2816 + 2560), "selective": 256 * (1280 + 2816), "full": 2 * 128 * 2 * 256 // 2}
    assert per_layer == {"none": 1_703_936, "selective": 1_048_576, "full": 65_536}
    mask = 2 * 128 * 2 * 256 // 2  # embedding dropout mask of 2 micro-batches in flight
    for mode, layer in per_layer.items():
        assert est.activations_gib[mode] * GiB == 2 * 2 * layer + mask, mode  # 2 in flight x 2 layers
    assert est.memory_gib * GiB == 721_920 * (2 + 4 + 6) + 2 * 2 * 1_703_936 + mask == 15_544_320


def test_activations_reduce_to_korthikanti_for_gpt():
    s, b, h, a, t = 2048, 4, 1024, 16, 4
    m = ModelConfig(arch="gpt2", num_layers=2, hidden_size=h, num_attention_heads=a, seq_length=s, vocab_size=1000)
    sbh = s * b * h
    assert layer_activation_bytes(m, b, 1, False, "none") == sbh * (34 + 5 * a * s / h)
    assert layer_activation_bytes(m, b, t, False, "none") == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert layer_activation_bytes(m, b, t, True, "none") == pytest.approx(sbh / t * (34 + 5 * a * s / h))
    assert layer_activation_bytes(m, b, t, True, "selective") == pytest.approx(34 * sbh / t)
    assert layer_activation_bytes(m, b, t, True, "full") == 2 * sbh / t


def test_flops_match_narayanan_for_gpt_and_time_uses_the_peak():
    m = ModelConfig(**GPT2_SMALL)
    B, s, L, h, V = 512, 1024, 12, 768, 50304
    expected = 72 * B * s * L * h**2 * (1 + s / (6 * h) + V / (12 * L * h))
    assert flops_per_step(m, V, B * s) == pytest.approx(expected, rel=1e-12)
    r = recipe(GPT2_SMALL, train={"micro_batch_size": 8, "global_batch_size": 512, "precision": "bf16"}, gpus=8)
    est = estimate(r, device="H100", mfu=0.5)
    assert est.step_seconds == pytest.approx(expected / (8 * 989e12 * 0.5))
    assert estimate(r, device="A100", mfu=0.5).step_seconds == pytest.approx(expected / (8 * 312e12 * 0.5))
    cpu = estimate(recipe(GPT2_SMALL, train={"global_batch_size": 8}, gpus=0))
    assert cpu.device is None and cpu.step_seconds is None and cpu.precision == "fp32"


def test_bubble_fraction():
    assert bubble_fraction(1, 8) == 0
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)  # (p-1)/(m+p-1)
    assert bubble_fraction(4, 8, vpp=2) == pytest.approx(3 / 19)  # interleaving shrinks it by v


def test_llama3_8b_recipe_fits_and_unsharded_does_not():
    loaded = load_recipe(RECIPES / "pretrain" / "llama3-8b-1024gpu.yaml")
    est = estimate(loaded.recipe, device="H100")
    assert (est.tp, est.pp, est.dp) == (8, 2, 64)
    assert est.params.total == pytest.approx(8.03e9, rel=0.005)
    assert est.fits and est.memory_gib < 20 and not est.warnings
    # One GPU per replica, no distributed optimizer: 16 bytes/param of weights, grads and Adam alone.
    flat = loaded.recipe.model_copy(update={"parallel": loaded.recipe.parallel.model_copy(
        update={"tensor": 1, "pipeline": 1, "sequence_parallel": False, "distributed_optimizer": False})})
    big = estimate(flat, resources=Resources(nodes=1, gpus_per_node=8), device="H200")
    assert big.weights_gib + big.grads_gib + big.optimizer_gib["replicated"] > 18 * 8.0e9 / 2**30
    assert big.fits is False and "exceeds the H200" in big.warnings[0]


# --- layouts that do not divide ------------------------------------------------------------


@pytest.mark.parametrize("parallel, model, train, key, words", [
    ({"tensor": 3}, {}, {}, "parallel.tensor x parallel.pipeline", ["3 x 1", "world size 8"]),
    ({"tensor": 4}, {"num_attention_heads": 6, "hidden_size": 96, "num_query_groups": None}, {},
     "model.num_attention_heads", ["6", "parallel.tensor 4"]),
    ({"tensor": 4}, {"num_query_groups": 2}, {}, "model.num_query_groups", ["2", "parallel.tensor 4"]),
    ({"pipeline": 2, "virtual_pipeline": 2}, {"num_layers": 6}, {"global_batch_size": 16}, "model.num_layers", ["6", "= 4"]),
    ({"tensor": 2}, {}, {"global_batch_size": 10, "micro_batch_size": 2}, "train.global_batch_size",
     ["10", "data-parallel size 4", "micro_batch_size 2"]),
])
def test_layouts_that_do_not_divide_are_rejected(parallel, model, train, key, words):
    r = recipe({**SMALL, **model}, parallel, train, gpus=8)
    with pytest.raises(RecipeError) as err:
        estimate(r, file="r.yaml")
    assert err.value.file == "r.yaml"
    [(got_key, value, expected)] = err.value.problems
    assert got_key == key
    assert all(w in f"{value} {expected}" for w in words), (value, expected)


# --- the CLI ------------------------------------------------------------------------------


def test_plan_prints_estimates_for_pretrain(capsys):
    assert main(["plan", str(RECIPES / "pretrain" / "llama3-8b-1024gpu.yaml"), "--on", "example-h100"]) == 0
    out = capsys.readouterr().out
    assert "estimates" in out and "8.04B" in out and "TP 8 x PP 2 x DP 64 = 1024" in out and "fits" in out


def test_estimate_does_not_import_torch():
    code = "import sys, aistack.model.estimate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
