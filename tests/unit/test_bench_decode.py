"""The bench's decode modes on the CPU: the static-cache step (what a GPU captures in a CUDA
graph) gives eager's greedy tokens; which mode `bench.decode` picks; bad keys are named."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from aistack.bench.decode import make_decoder, resolve
from aistack.bench.generate import time_point
from aistack.recipe import RecipeError, load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "bench" / "llama3-405b-fp8.yaml"  # model: random: loads anywhere
CPU, GPU = torch.device("cpu"), torch.device("cuda")


def tiny(arch: str, dtype: torch.dtype):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":  # 4 query heads sharing 2 key/value heads (GQA)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                           bos_token_id=0, eos_token_id=0))
    return model.to(dtype).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_static_cache_decode_gives_eager_greedy_tokens(arch):
    # fp32: identical tokens, no tolerance. The static cache's unused slots get exactly zero
    # attention weight; the logits differ from eager's by rounding (~1e-7) alone.
    model = tiny(arch, torch.float32)
    prompt = torch.randint(1, 256, (3, 10), generator=torch.Generator().manual_seed(1))
    eager, _ = make_decoder(model, "eager", 3, 30).generate(prompt, 20)
    decoder = make_decoder(model, "static", 3, 30)
    first, timing = decoder.generate(prompt, 20)
    again, _ = decoder.generate(prompt, 20)  # the cache is reset between generations
    assert first.shape == (3, 20) and torch.equal(first, eager)
    assert torch.equal(again, eager)
    assert timing["ttft_s"] >= timing["prefill_s"] > 0 and timing["decode_s"] > 0


@torch.inference_mode()
def _step_logits(model, tokens: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each step's logits along the same tokens, through the dynamic and the static cache."""
    out = model(input_ids=tokens[:, :prompt_len], use_cache=True)
    dynamic, past = [out.logits[:, -1]], out.past_key_values
    static = make_decoder(model, "static", tokens.shape[0], tokens.shape[1])
    static.cache.reset()
    steps = [static.logits(tokens[:, :prompt_len])]
    for i in range(prompt_len, tokens.shape[1] - 1):
        out = model(input_ids=tokens[:, i : i + 1], past_key_values=past, use_cache=True)
        dynamic.append(out.logits[:, -1])
        past = out.past_key_values
        steps.append(static.logits(tokens[:, i : i + 1]))
    return torch.stack(dynamic, 1).float(), torch.stack(steps, 1).float()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_static_cache_decode_in_bf16_differs_from_eager_only_at_rounding_ties(arch):
    # bf16: the two caches' attention runs over different lengths, so a logit may land one bf16
    # step (2^-8 at these magnitudes) apart, and random-weight logits tie exactly in bf16. The
    # tolerance: step logits within 2 bf16 steps, and greedy tokens equal up to a step whose two
    # best eager logits are within that difference of each other.
    model = tiny(arch, torch.bfloat16)
    prompt = torch.randint(1, 256, (3, 10), generator=torch.Generator().manual_seed(1))
    eager, _ = make_decoder(model, "eager", 3, 30).generate(prompt, 20)
    static, _ = make_decoder(model, "static", 3, 30).generate(prompt, 20)
    dynamic, steps = _step_logits(model, torch.cat([prompt, eager], 1), 10)
    diff = float((dynamic - steps).abs().max())
    assert diff <= 2 * 2.0**-8 * 2.0 ** math.ceil(math.log2(float(dynamic.abs().max()))), diff
    top2 = dynamic.topk(2, dim=-1).values
    for row in range(3):
        apart = (eager[row] != static[row]).nonzero()
        if len(apart):
            step = int(apart[0])
            assert float(top2[row, step, 0] - top2[row, step, 1]) <= diff, f"row {row} differs at step {step} without a tie"


def test_time_point_reports_the_decode_mode_and_the_tokens():
    model = tiny("llama", torch.float32)
    static = time_point(model, 256, 2, 8, 6, repeats=2, warmup=0, kv_cache=True, decode="static")
    eager = time_point(model, 256, 2, 8, 6, repeats=1, warmup=0, kv_cache=True, decode="eager")
    assert static["decode"] == "static" and eager["decode"] == "eager" and static["setup_s"] == 0.0
    assert static["tokens_digest"] == eager["tokens_digest"] and len(static["tokens_digest"]) == 12
    assert static["decode_tok_s"] > 0
    with pytest.raises(ValueError, match="bench.kv_cache"):
        make_decoder(model, "static", 2, 14, kv_cache=False)


def test_auto_decode_per_device_and_fp8_mode():
    assert resolve("auto", CPU, True) == "static", "no CUDA graphs on a CPU: the same step uncaptured"
    assert resolve("auto", GPU, True) == "graph"
    assert resolve("auto", GPU, True, "w8a8") == "graph"
    assert resolve("auto", GPU, True, "weight_only") == "compile", "only inductor fuses the dequantization into the GEMV"
    assert resolve("auto", GPU, False) == resolve("eager", CPU, False) == "eager", "kv_cache: false re-runs the sequence"
    assert resolve("compile", CPU, True) == "compile"
    with pytest.raises(ValueError, match="bench.decode=graph captures a CUDA graph: it needs a GPU"):
        resolve("graph", CPU, True)
    with pytest.raises(ValueError, match="bench.decode=static .* bench.kv_cache is false"):
        resolve("static", GPU, False)
    with pytest.raises(ValueError, match="bench.decode='fast'"):
        resolve("fast", CPU, True)


@pytest.mark.parametrize("overrides, key, message", [
    (["bench.decode=fast"], "bench.decode", "'auto', 'eager', 'static', 'graph' or 'compile'"),
    (["bench.decode=static", "bench.kv_cache=false"], "bench",
     "bench.decode=static decodes over a static KV cache, but bench.kv_cache is false"),
    (["bench.decode=graph", "bench.device=cpu", "bench.parallel.tensor=1"], "bench",
     "bench.decode=graph captures a CUDA graph, and bench.device is cpu"),
    (["bench.decode=compile"], "bench", "bench.decode=compile is for one device"),  # the recipe is TP 8
    (["bench.fp8.mode=int4"], "bench.fp8.mode", "'auto', 'weight_only' or 'w8a8'"),
    (["bench.fp8.weight_only_max_batch=-1"], "bench.fp8.weight_only_max_batch", "greater than or equal to 0"),
    (["bench.fp8.activations=true"], "bench.fp8", "bench.fp8.activations=true and bench.fp8.mode=auto: give only bench.fp8.mode"),
])
def test_bad_decode_and_fp8_keys_are_named(overrides, key, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPE, overrides)
    text = str(err.value)
    assert str(RECIPE) in text and f"key '{key}'" in text and message in text, text


def test_the_old_activations_key_still_loads_as_a_mode(tmp_path):
    recipe = tmp_path / "old.yaml"
    base = RECIPE.read_text().replace("mode: auto, ", "").replace("extends: ../", f"extends: {RECIPE.parents[1]}/")
    for value, mode in (("true", "w8a8"), ("false", "weight_only")):
        recipe.write_text(base.replace("fp8: {scaling: row,", f"fp8: {{scaling: row, activations: {value},"))
        fp8 = load_recipe(recipe).recipe.bench.fp8
        assert fp8.mode == mode and fp8.mode_at(1) == fp8.mode_at(64) == mode, "an explicit mode holds at every batch"
