"""`aistack plan` for a bench recipe: inference memory per GPU, the smallest TP x PP layout that
fits, the decode roofline. Every figure is checked against arithmetic written out here."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.bench import inference_plan as ip
from aistack.cli import main
from aistack.hardware import lookup
from aistack.kinds.pretrain import ModelConfig
from aistack.recipe.errors import RecipeError
from aistack.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "bench" / "llama3-405b-fp8.yaml"
GiB = 2**30

# Llama 3.1 405B
H, L, HEADS, KV, HD, F, V = 16384, 126, 128, 8, 128, 53248, 128256
B, P, G = 32, 1024, 256  # the recipe's largest batch, prompt and generation
H100 = lookup("H100")
USABLE = 81559 / 1024 * GiB * 0.9  # nvidia-smi's memory.total of an H100 SXM, less 10% headroom

LINEAR = H * H + 2 * H * KV * HD + H * H + 3 * H * F  # q, k, v, o, gate, up, down
ROWS = H + 2 * KV * HD + H + 2 * F + H  # output rows of those: one fp32 scale each (row-wise FP8)
PARAMS = L * (LINEAR + 2 * H) + V * H + H + V * H  # layers with 2 RMSNorms, embedding, final norm, untied head


def llama405b() -> ModelConfig:
    return ModelConfig(arch="llama", num_layers=L, hidden_size=H, num_attention_heads=HEADS, num_query_groups=KV,
                       ffn_hidden_size=F, vocab_size=V, seq_length=8192)


@pytest.fixture(scope="module")
def plan() -> ip.InferencePlan:
    return ip.inference_plan(llama405b(), ["bf16", "fp8"], B, P, G, gpu=H100, gpus_per_node=8, tp=8, pp=1)


def test_405b_whole_model_weights_and_kv_cache(plan):
    assert plan.params == PARAMS and 405e9 < PARAMS < 406e9
    assert plan.weights_bytes["bf16"] == 2 * PARAMS  # ~812 GB
    # FP8: linear weights at 1 byte + a 4-byte scale per row; embedding, norms and the LM head (fp8.skip) BF16
    assert plan.weights_bytes["fp8"] == L * (LINEAR + 4 * ROWS + 2 * 2 * H) + 2 * V * H + 2 * H + 2 * V * H
    assert 405e9 < plan.weights_bytes["fp8"] < 412e9
    assert plan.kv_bytes == 2 * L * KV * HD * (P + G) * B * 2


def _activations(tp: int) -> int:
    per_token = 2 * H + H // tp + 2 * max(1, KV // tp) * HD + H // tp + 3 * F // tp  # one layer's prefill working set
    return B * P * 2 * per_token + B * P * (V // tp) * 2  # + BF16 logits at every prompt position (last stage)


def test_405b_per_gpu_bf16_needs_two_nodes(plan):
    one_node = plan.requested["bf16"]
    assert (one_node.tp, one_node.pp) == (8, 1)
    assert one_node.weights_bytes == 2 * (L * (LINEAR // 8 + 2 * H) + V * H // 8 + H + V * H // 8)
    assert one_node.kv_bytes == 2 * L * (KV // 8) * HD * (P + G) * B * 2
    assert one_node.activation_bytes == _activations(8)
    assert one_node.usable_bytes == pytest.approx(USABLE) == plan.usable_bytes  # 10% headroom
    assert one_node.total_bytes > USABLE and not one_node.fits

    two = plan.smallest["bf16"]
    assert (two.tp, two.pp, two.nodes, two.gpus) == (8, 2, 2, 16)
    assert two.stage == 1  # the last stage: its LM head and logits outweigh the first stage's embedding
    assert two.weights_bytes == 2 * (L // 2 * (LINEAR // 8 + 2 * H) + H + V * H // 8)
    assert two.kv_bytes == 2 * (L // 2) * (KV // 8) * HD * (P + G) * B * 2
    assert two.total_bytes == two.weights_bytes + two.kv_bytes + _activations(8) <= USABLE and two.fits


def test_405b_per_gpu_fp8_fits_one_node(plan):
    fp8 = plan.smallest["fp8"]
    assert (fp8.tp, fp8.pp, fp8.nodes) == (8, 1, 1)
    assert plan.requested["fp8"] == fp8
    # q, k, v, gate, up split by rows (their scales too); o_proj and down_proj by columns: all H scales on each rank
    assert fp8.weights_bytes == L * (LINEAR // 8 + 4 * (ROWS - 2 * H) // 8 + 4 * 2 * H + 2 * 2 * H) \
        + 2 * V * H // 8 + 2 * H + 2 * V * H // 8
    assert fp8.total_bytes <= USABLE
    # Nothing smaller fits: TP 4 on one node holds twice the weights.
    assert not ip.layout(ip.Shape.of(llama405b()), "fp8", 4, 1, B, P, G, H100).fits


def test_405b_decode_roofline_is_bytes_per_token_over_hbm(plan):
    mean_kv = 2 * L * (KV // 8) * HD * (P + G / 2) * B * 2  # KV read at the mean decode context
    one = plan.requested["bf16"]
    step = (one.weights_bytes + mean_kv) / 3.35e12
    assert one.decode_bound == "HBM"
    assert one.tok_s_per_sequence == pytest.approx(1 / step) and one.tok_s_batch == pytest.approx(B / step)
    # PP 2: the stages run one after the other, so a token costs the same time as one stage holding everything.
    two = plan.smallest["bf16"]
    both = 2 * (L * (LINEAR // 8 + 2 * H) + V * H // 8 + H + V * H // 8) + mean_kv
    assert two.decode_step_s == pytest.approx(both / 3.35e12)
    # FP8 reads about half the bytes: nearly twice the tokens/s.
    assert 1.8 < plan.smallest["fp8"].tok_s_per_sequence / one.tok_s_per_sequence < 2.0


def test_small_gqa_model_replicates_kv_heads_beyond_their_count():
    # 2 layers, hidden 64, 4 heads of 16, 2 KV heads, gated MLP 128, vocab 256, untied.
    model = ModelConfig(arch="llama", num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                        ffn_hidden_size=128, vocab_size=256, seq_length=64)
    h, f, v, b, p, g = 64, 128, 256, 4, 16, 8
    plan = ip.inference_plan(model, ["bf16"], b, p, g, gpu=H100, gpus_per_node=4, tp=4, pp=2)
    lay = plan.requested["bf16"]
    # TP 4 > 2 KV heads: each rank keeps one KV head (16 wide) of K, V weights and cache.
    layer = 2 * (h * h // 4 + 2 * 16 * h + h * h // 4 + 3 * h * f // 4 + 2 * h)
    assert lay.stage == 1 and lay.weights_bytes == layer + 2 * h + 2 * v * h // 4  # 1 layer, final norm, LM head
    assert lay.kv_bytes == 2 * 1 * 1 * 16 * (p + g) * b * 2
    assert plan.params == 2 * (h * h + 2 * 32 * h + h * h + 3 * h * f + 2 * h) + 2 * v * h + h
    # Tiny: one GPU holds it all.
    assert (plan.smallest["bf16"].tp, plan.smallest["bf16"].pp) == (1, 1)
    with pytest.raises(ValueError, match="attention heads"):
        ip.layout(ip.Shape.of(model), "bf16", 3, 1, b, p, g, H100)
    gqa = ModelConfig(num_layers=2, hidden_size=96, num_attention_heads=12, num_query_groups=4, vocab_size=256)
    with pytest.raises(ValueError, match="KV heads"):
        ip.layout(ip.Shape.of(gqa), "bf16", 6, 1, b, p, g, H100)  # 6 divides 12 heads, but neither divides the other with 4


def test_tied_gpt2_head_is_the_embedding_on_one_stage_and_a_copy_across_stages():
    model = ModelConfig(arch="gpt2", num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256, seq_length=32)
    shape = ip.Shape.of(model)
    one = ip.stage_weight_bytes(shape, 1, 1, 0, fp8=False)
    last = ip.stage_weight_bytes(shape, 1, 2, 1, fp8=False)
    layer = ip.layer_bytes(shape, 1, fp8=False)
    h, v, s = 64, 256, 32
    assert layer == 2 * (h * 3 * h + h * h + h * 4 * h + 4 * h * h) + 2 * (3 * h + h + 4 * h + h) + 2 * 4 * h
    assert one == 2 * layer + 2 * (v * h + s * h) + 2 * 2 * h  # embedding + positions, final LayerNorm, head shared
    assert last == layer + 2 * 2 * h + 2 * v * h  # the last stage keeps its own copy of the head
    # FP8 quantizes the head unless skipped: then it is a 1-byte copy beside the BF16 embedding.
    fp8_head = ip.stage_weight_bytes(shape, 1, 1, 0, fp8=True, skip=())
    assert fp8_head - ip.stage_weight_bytes(shape, 1, 1, 0, fp8=True) == v * h + 4 * v


def test_recipe_schema_checks_the_layout_and_random_needs_a_shape(tmp_path):
    loaded = load_recipe(RECIPE)
    cfg = loaded.recipe.bench
    assert cfg.model == "random" and (cfg.parallel.tensor, cfg.parallel.pipeline) == (8, 1)
    with pytest.raises(RecipeError, match="parallel.tensor"):
        load_recipe(RECIPE, ["bench.parallel.tensor=3"])
    with pytest.raises(RecipeError, match="parallel.pipeline"):
        load_recipe(RECIPE, ["bench.parallel.pipeline=127"])
    with pytest.raises(RecipeError, match="model_block"):
        load_recipe(RECIPE, ["bench.model_block=null"])
    # Existing bench recipes: a 1 x 1 layout unless told.
    (tmp_path / "config.json").write_text("{}")  # an HF folder
    tiny = load_recipe(REPO / "recipes" / "bench" / "tiny.yaml", [f"bench.model={tmp_path}"])
    assert (tiny.recipe.bench.parallel.tensor, tiny.recipe.bench.parallel.pipeline) == (1, 1)


def test_plan_prints_bf16_on_two_nodes_and_fp8_on_one(tmp_path, capsys):
    assert main(["plan", str(RECIPE), f"output.root={tmp_path / 'runs'}", "--on", "example-h100"]) == 0
    out = capsys.readouterr().out
    assert ("smallest layout that fits: bf16 TP 8 x PP 2 on 2 nodes (16 GPUs, 52.9 GiB per GPU); "
            "fp8 TP 8 x PP 1 on 1 node (8 GPUs, 54.7 GiB per GPU)") in out
    assert "H100 SXM 80GB" in out and "whole model: weights bf16 811.7 GB" in out and "fits in 71.7 GiB" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bytes_per_device_at_tp1_are_those_of_the_transformers_model_and_its_fp8_copy(arch):
    """The conventions (which weights exist, biases, norms, tied heads, row scales) against the
    models the bench job runs: transformers' Llama / GPT-2 in BF16 and after quantize_model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from aistack.bench import fp8

    model = ModelConfig(arch=arch, num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2 if arch == "llama" else None,
                        ffn_hidden_size=128 if arch == "llama" else None, vocab_size=256, seq_length=32)
    if arch == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False))
    else:
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                                                  bos_token_id=0, eos_token_id=0))
    hf = hf.to(torch.bfloat16)
    shape = ip.Shape.of(model)

    def held() -> int:  # parameters and the FP8 weights and scales (not rotary tables or masks)
        return sum(p.numel() * p.element_size() for p in hf.parameters()) + sum(
            b.numel() * b.element_size() for name, b in hf.named_buffers() if name.endswith(("weight_fp8", "weight_scale")))

    assert ip.count_params(shape) == sum(p.numel() for p in hf.parameters())
    assert ip.stage_weight_bytes(shape, 1, 1, 0, fp8=False) == held()
    fp8.quantize_model(hf, "row", "w8a8", "emulate", ["lm_head"])
    assert ip.stage_weight_bytes(shape, 1, 1, 0, fp8=True) == held()


def test_the_bench_job_refuses_a_planning_recipe_before_touching_anything(tmp_path):
    pytest.importorskip("torch")
    from aistack.bench.run import run_bench

    cfg = load_recipe(RECIPE).recipe.bench
    with pytest.raises(ValueError, match="for `aistack plan` only"):
        run_bench(cfg, tmp_path / "work", tmp_path / "out")
    assert not (tmp_path / "work").exists()


def test_the_gpu_comes_from_the_recipe_or_profile_constraint_through_the_hardware_table():
    from aistack.launch.profile import load_profile

    profile = load_profile("example-h100")
    h100 = ip.of_recipe(load_recipe(RECIPE).recipe, profile)
    assert h100.gpu is lookup("H100") and not h100.gpu_assumed and h100.gpus_per_node == 8
    # On H200s (141 GiB) BF16 fits one node: 101.4 GiB per GPU at TP 8.
    h200 = ip.of_recipe(load_recipe(RECIPE, ["resources.constraint=h200"]).recipe, profile)
    assert h200.gpu is lookup("H200") and h200.requested["bf16"].fits
    assert (h200.smallest["bf16"].tp, h200.smallest["bf16"].pp) == (8, 1)
    assert h200.requested["bf16"].tok_s_per_sequence == pytest.approx(h100.requested["bf16"].tok_s_per_sequence * 4.8 / 3.35)


def test_device_name_says_which_gpu_or_how_many_cpu_threads(monkeypatch):
    import torch

    from aistack import hardware

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert hardware.device_name(torch.device("cuda")) == "NVIDIA H200"
    assert hardware.device_name(torch.device("cpu"), threads_per_rank=3).endswith("3 thread(s) per rank)")
    assert hardware.device_name(torch.device("cpu")).startswith("CPU (")
