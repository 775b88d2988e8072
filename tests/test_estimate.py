"""`aistack plan` estimates for pretrain, sft and distill recipes: parameter counts against
published models, memory against hand-computed bytes and Korthikanti et al.'s formulas, FLOPs
against Megatron-LM's num_floating_point_operations (re-typed here, term by term), the
pipeline bubble, an online teacher's share, and the layouts that are rejected."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aistack.cli import main
from aistack.model.estimate import bubble_fraction, count_params, estimate, layer_activation_bytes
from aistack.model.flops import forward_floating_point_operations, num_floating_point_operations, step_flops
from aistack.model.layout import padded_vocab_size
from aistack.recipe import RecipeError, Resources, load_recipe
from aistack.kinds.distill import DistillRecipe
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


# --- FLOPs: Megatron-LM's num_floating_point_operations ---------------------------------


def megatron_flops(batch_size, seq_length, num_layers, hidden_size, num_attention_heads, num_query_groups,
                   ffn_hidden_size, padded_vocab_size, swiglu):
    """Megatron-LM's num_floating_point_operations (megatron/training/training.py, transformer_flops)
    for a dense model without MoE, MTP or MLA, re-typed from its source, term by term."""
    forward_backward_expansion_factor = 3
    fma_expansion_factor = 2
    ffn_expansion_factor = 3 if swiglu else 2
    kv_channels = hidden_size // num_attention_heads
    query_projection_size = kv_channels * num_attention_heads
    key_projection_size = kv_channels * num_query_groups
    value_projection_size = kv_channels * num_query_groups
    standard_self_attn_term = (
        forward_backward_expansion_factor
        * fma_expansion_factor
        * (
            hidden_size * (query_projection_size + key_projection_size + value_projection_size)
            + query_projection_size * seq_length / 2 * 2
            + query_projection_size * hidden_size
        )
    )
    return (
        batch_size
        * seq_length
        * (
            forward_backward_expansion_factor * fma_expansion_factor * hidden_size * (ffn_hidden_size * ffn_expansion_factor)
            * num_layers
            + standard_self_attn_term * num_layers
            + forward_backward_expansion_factor * fma_expansion_factor * hidden_size * padded_vocab_size
        )
    )


def test_flops_are_megatrons_for_llama3_8b():
    m = ModelConfig(**LLAMA3_8B)
    V = padded_vocab_size(128256, m, 8)
    expected = megatron_flops(512, 8192, 32, 4096, 32, 8, 14336, V, swiglu=True)
    assert num_floating_point_operations(m, V, 512) == pytest.approx(expected, rel=1e-12)
    # By hand, per token: 6 x (QKV 4096 x 6144 + causal scores 4096 x 8192 + proj 4096^2) per layer,
    # 6 x 3 x 4096 x 14336 SwiGLU per layer, 6 x 4096 x 129024 logits.
    per_token = 32 * 6 * (4096 * 6144 + 4096 * 8192 + 4096**2) + 32 * 6 * 3 * 4096 * 14336 + 6 * 4096 * 129024
    assert per_token == 51_489_275_904
    assert expected == 512 * 8192 * per_token
    # Before Megatron-LM's causal halving the scores counted all of s x s: 12.5% more at seq 8192.
    full = 512 * 8192 * (per_token + 32 * 6 * 4096 * 8192)
    assert full / expected == pytest.approx(1.1251, abs=1e-4)
    assert forward_floating_point_operations(m, V, 512) == pytest.approx(expected / 3, rel=1e-12)


@pytest.mark.parametrize("name, swiglu", [("gpt-tiny", True), ("gpt-125m", False)])
def test_flops_are_megatrons_for_the_shipped_small_models(name, swiglu):
    r = load_recipe(RECIPES / "pretrain" / f"{name}.yaml").recipe
    m, t = r.model, r.train
    V = padded_vocab_size(m.vocab_size, m, r.parallel.tensor)
    expected = megatron_flops(t.global_batch_size, m.seq_length, m.num_layers, m.hidden_size, m.num_attention_heads,
                              m.num_query_groups or m.num_attention_heads, m.ffn_size, V, swiglu)
    assert step_flops(r, m.vocab_size, r.parallel.tensor) == {"student": pytest.approx(expected, rel=1e-12), "teacher": 0,
                                                               "total": pytest.approx(expected, rel=1e-12)}
    if name == "gpt-tiny":  # 2 layers, h 64, 4 heads in 2 groups, SwiGLU 192, vocab 512, 8 x 64 tokens
        assert (m.num_layers, m.hidden_size, m.ffn_size, V, t.global_batch_size, m.seq_length) == (2, 64, 192, 512, 8, 64)
        per_token = 2 * 6 * (64 * 128 + 64 * 64 + 64 * 64) + 2 * 6 * 3 * 64 * 192 + 6 * 64 * 512
        assert expected == 8 * 64 * per_token == 427_819_008


def test_flops_of_gpt_are_narayanans_with_causal_attention_and_time_uses_the_peak():
    m = ModelConfig(**GPT2_SMALL)
    B, s, L, h, V = 512, 1024, 12, 768, 50304
    # Narayanan et al. 2021, 72BsLh^2 (1 + s/(6h) + V/(12Lh)), with the scores halved (causal): s/(12h).
    expected = 72 * B * s * L * h**2 * (1 + s / (12 * h) + V / (12 * L * h))
    assert num_floating_point_operations(m, V, B) == pytest.approx(expected, rel=1e-12)
    r = recipe(GPT2_SMALL, train={"micro_batch_size": 8, "global_batch_size": 512, "precision": "bf16"}, gpus=8)
    est = estimate(r, device="H100", mfu=0.5)
    assert est.flops_per_step == pytest.approx(expected, rel=1e-12)
    assert est.step_seconds == pytest.approx(expected / (8 * 989e12 * 0.5))
    assert estimate(r, device="A100", mfu=0.5).step_seconds == pytest.approx(expected / (8 * 312e12 * 0.5))
    cpu = estimate(recipe(GPT2_SMALL, train={"global_batch_size": 8}, gpus=0))
    assert cpu.device is None and cpu.step_seconds is None and cpu.precision == "fp32"


def test_llama3_8b_plan_flops_time_and_gpu_hours():
    est = estimate(load_recipe(RECIPES / "pretrain" / "llama3-8b-1024gpu.yaml").recipe, device="H100")
    flops = 512 * 8192 * 51_489_275_904  # test_flops_are_megatrons_for_llama3_8b's per-token figure
    assert est.flops_per_step == flops == pytest.approx(2.160e17, rel=1e-3)
    assert est.step_seconds == pytest.approx(flops / (1024 * 989e12 * 0.4))
    assert est.step_seconds == pytest.approx(0.5331, abs=1e-4)  # was 0.5998 with the full s x s scores
    assert est.gpu_hours == pytest.approx(flops / (1024 * 989e12 * 0.4) * 250_000 * 1024 / 3600)


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


# --- sft and distill: the same figures for their training job -----------------------------

GiB = 2**30
LLAMA32_1B = dict(arch="llama", num_layers=16, hidden_size=2048, num_attention_heads=32, num_query_groups=8,
                  ffn_hidden_size=8192, seq_length=4096, vocab_size=128256)


def test_plan_prints_the_same_estimates_for_sft(capsys):
    loaded = load_recipe(RECIPES / "sft" / "llama3-8b-instruct.yaml")
    assert main(["plan", str(loaded.path), "--on", "example-h100"]) == 0
    out = capsys.readouterr().out
    # TP 8 x DP 2, 128 sequences of 4096 tokens, vocab padded to 128 x 8: 129024.
    per_token = 32 * 6 * (4096 * 6144 + 4096 * 4096 + 4096**2) + 32 * 6 * 3 * 4096 * 14336 + 6 * 4096 * 129024
    flops = 128 * 4096 * per_token
    seconds = flops / (16 * 989e12 * 0.4)
    hours = seconds * 2000 * 16 / 3600
    assert "TP 8 x PP 1 x DP 2 = 16" in out and "8.04B" in out and "fits" in out
    assert f"{flops:.3e}" == "2.531e+16" and "2.531e+16" in out
    assert f"{seconds:.2f} s at MFU 40%" in out and f"{hours:,.0f} for 2,000" in out.replace("\n", " ")
    # The estimate is pretraining's for the same model, layout and batch.
    r = loaded.recipe
    est = estimate(r, device="H100")
    twin = estimate(PretrainRecipe.model_validate({"kind": "pretrain", "name": "t", "model": r.model.model_dump(),
                                                   "parallel": r.parallel.model_dump(), "train": r.train.model_dump(),
                                                   "resources": r.resources.model_dump()}), device="H100")
    assert est.flops_per_step == twin.flops_per_step == flops
    assert est.memory_gib == twin.memory_gib and est.step_seconds == twin.step_seconds
    # One TP rank: 32 layers of (218103808 split / 8 + two norms), embedding and output / 8, final norm.
    assert est.params_per_device == 32 * (218_103_808 // 8 + 8192) + 2 * 129024 * 4096 // 8 + 4096 == 1_004_802_048
    assert est.weights_gib * GiB == 1_004_802_048 * 2 and est.optimizer_gib["distributed"] * GiB == 1_004_802_048 * 12 / 2


def distill(source: str, pipeline: int = 1) -> DistillRecipe:
    """An 8B teacher, a 1B student, TP 2 x DP 4 on one node of 8 GPUs, bf16."""
    return DistillRecipe.model_validate({
        "kind": "distill", "name": "d", "method": "logit", "teacher": {"checkpoint": "t", "model": {**LLAMA3_8B, "seq_length": 4096}},
        "model": LLAMA32_1B, "data": {"paths": [{"path": "corpus"}]}, "logit": {"source": source},
        "parallel": {"tensor": 2, "pipeline": pipeline, "distributed_optimizer": True},
        "train": {"micro_batch_size": 2, "global_batch_size": 64, "steps": 1000, "precision": "bf16"},
        "resources": {"nodes": 1, "gpus_per_node": 8, "tasks_per_node": 8},
    })


def test_online_distillation_adds_the_frozen_teachers_weights_and_forward():
    online, offline = estimate(distill("online"), device="H100"), estimate(distill("offline"), device="H100")
    # The teacher whole at TP 2 (PP 1): 32 x (218103808 / 2 + two norms) + embedding and output
    # (128256 rows: a multiple of 128 x 2) / 2 + final norm; bf16, weights only.
    teacher_per_device = 32 * (218_103_808 // 2 + 8192) + 2 * 128256 * 4096 // 2 + 4096
    assert online.teacher_params_per_device == teacher_per_device == 4_015_263_744
    assert online.teacher_params == 32 * (218_103_808 + 8192) + 2 * 128256 * 4096 + 4096 == 8_030_261_248
    assert online.teacher_weights_gib * GiB == teacher_per_device * 2
    assert online.memory_gib - offline.memory_gib == pytest.approx(teacher_per_device * 2 / GiB, rel=1e-12)
    # FLOPs: the student's forward + backward, the teacher's forward (a third of Megatron's count).
    student = megatron_flops(64, 4096, 16, 2048, 32, 8, 8192, 128256, swiglu=True)
    teacher = megatron_flops(64, 4096, 32, 4096, 32, 8, 14336, 128256, swiglu=True) / 3
    assert offline.flops_per_step == pytest.approx(student, rel=1e-12) and offline.teacher_flops_per_step == 0
    assert online.teacher_flops_per_step == pytest.approx(teacher, rel=1e-12)
    assert online.flops_per_step == pytest.approx(student + teacher, rel=1e-12)
    assert online.step_seconds == pytest.approx((student + teacher) / (8 * 989e12 * 0.4))
    assert not online.warnings and not online.notes and offline.notes[0][0] == "teacher"
    assert "online distillation needs parallel.pipeline=1" in estimate(distill("online", pipeline=2), device="H100").warnings[0]


def test_plan_prints_estimates_for_distill(capsys):
    path = str(RECIPES / "distill" / "gpt-tiny-logit.yaml")
    assert main(["plan", path, "--on", "example-h100", "resources.gpus_per_node=1", "train.precision=bf16"]) == 0
    out = capsys.readouterr().out
    student = 8 * 64 * (2 * 6 * (64 * 128 + 64 * 64 + 64 * 64) + 2 * 6 * 3 * 64 * 192 + 6 * 64 * 512)  # as gpt-tiny
    assert "teacher (frozen, online)" in out and f"{student * 4 / 3:.3e}" in out and f"teacher forward {student / 3:.3e}" in out
    assert "GPU-hours" in out
    assert main(["plan", path, "--on", "example-h100", "logit.source=offline"]) == 0
    out = capsys.readouterr().out
    assert "teacher_logits job" in out and "teacher (frozen" not in out and f"{student:.3e}" in out


def test_pipeline_gpu_hours_estimate_the_training_jobs_and_keep_teacher_jobs_at_their_limits():
    from aistack.cli.show import gpu_hours
    from aistack.launch.stages import resolve

    pipeline = resolve(load_recipe(RECIPES / "pipelines" / "fineweb-llama-8b-1024gpu.yaml"), allow_missing=True)
    stages = {s.name: s for s in pipeline.stages}
    # distill: an offline teacher (256 one-GPU tasks of 48 h), the 1B student on 4 x 8 GPUs (TP 2) for 20000 steps.
    limit, est = gpu_hours(stages["distill"], "h100")
    assert limit == 256 * 48 + 32 * 48
    student = megatron_flops(256, 4096, 16, 2048, 32, 8, 8192, 128256, swiglu=True)
    assert est == pytest.approx(256 * 48 + student / (32 * 989e12 * 0.4) * 20_000 * 32 / 3600, rel=1e-12)
    # sft: llama3-8b-instruct as in test_plan_prints_the_same_estimates_for_sft.
    per_token = 32 * 6 * (4096 * 6144 + 4096 * 4096 + 4096**2) + 32 * 6 * 3 * 4096 * 14336 + 6 * 4096 * 129024
    assert gpu_hours(stages["sft"], "h100") == (192, pytest.approx(128 * 4096 * per_token / (16 * 989e12 * 0.4) * 2000 * 16 / 3600))
    assert gpu_hours(stages["evaluate"], "h100")[1] is None, "no estimate: at its limit"


def test_one_device_table():
    from aistack import hardware
    from aistack.bench import roofline
    from aistack.model import estimate as estimate_module

    assert estimate_module.DEVICES is roofline.DEVICES is hardware.DEVICES
    assert list(hardware.DEVICES.values()) == list(hardware.GPUS)
    assert [estimate_module.device_for(c) for c in ("gpu&h200", "h100 pcie", "H100", "a10g", None)] == \
        ["H200", "H100 PCIe", "H100", None, None]
