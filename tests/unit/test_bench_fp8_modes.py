"""FP8 weight-only and W8A8 on the CPU: which one `bench.fp8.mode: auto` runs per batch size,
that weight-only is the FP8 weights' exact arithmetic, and its perplexity cost on a trained
tiny model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from aistack.bench import fp8
from aistack.kinds.bench import FP8Config


def test_auto_runs_weight_only_up_to_the_threshold_and_w8a8_above():
    default = FP8Config()
    assert default.mode == "auto" and default.weight_only_max_batch == 1, "inductor fuses the dequantization at M = 1 only"
    assert [default.mode_at(b) for b in (1, 2, 8, 32)] == ["weight_only", "w8a8", "w8a8", "w8a8"]
    wider = FP8Config(weight_only_max_batch=8)
    assert [wider.mode_at(b) for b in (1, 8, 9)] == ["weight_only", "weight_only", "w8a8"]
    assert FP8Config(weight_only_max_batch=0).mode_at(1) == "w8a8"
    assert FP8Config(mode="weight_only").mode_at(256) == "weight_only" and FP8Config(mode="w8a8").mode_at(1) == "w8a8"
    with pytest.raises(ValueError, match="bench.fp8.mode='int4'"):
        fp8.mode_for_batch("int4", 1, 1)


def test_weight_only_is_the_dequantized_weight_in_a_plain_matmul():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(5, 64)
    layer = fp8.FP8Linear(linear, "row", "weight_only", "emulate")
    expected = F.linear(x, fp8.dequantize(layer.weight_fp8, layer.weight_scale), linear.bias)
    with torch.no_grad():
        got = layer(x)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # fp32: the scale after the matmul, same numbers
        layer.mode = "w8a8"  # the same weights, activations quantized per token too
        w8a8 = layer(x)
    assert not torch.equal(w8a8, got) and float((w8a8 - got).norm() / got.norm()) < 0.05
    with pytest.raises(ValueError, match="FP8Linear mode 'int4'"):
        layer.mode = "int4"


def test_scaled_mm_activation_quantization_matches_the_reference():
    x = torch.randn(7, 64, dtype=torch.bfloat16) * torch.logspace(-2, 2, 7, dtype=torch.bfloat16)[:, None]
    for rowwise, scaling in ((True, "row"), (False, "tensor")):
        q, scale = fp8.quantize_activations(x, rowwise)
        ref_q, ref_scale = fp8.quantize(x, scaling)
        assert torch.equal(q.float(), ref_q.float()) and torch.equal(scale, ref_scale.reshape(scale.shape))


def _trained_tiny_llama():
    """A 2-layer Llama trained for 40 steps on a stream where the next token is a fixed
    permutation of the last one 80% of the time: it learns it, so its perplexity reacts to
    the precision of its weights (random weights would not)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = 64
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(vocab, generator=gen)

    def stream(n: int, length: int = 32) -> torch.Tensor:
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (n,), generator=gen)
        for i in range(1, length):
            follow = torch.rand(n, generator=gen) < 0.8
            x[:, i] = torch.where(follow, perm[x[:, i - 1]], torch.randint(0, vocab, (n,), generator=gen))
        return x

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        x = stream(16)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().to(torch.bfloat16), stream(64)


@torch.no_grad()
def _perplexity(model, tokens: torch.Tensor) -> float:
    logits = model(input_ids=tokens[:, :-1]).logits.float()
    return math.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item())


def test_weight_only_fp8_perplexity_within_one_percent_of_bf16():
    model, heldout = _trained_tiny_llama()
    bf16 = _perplexity(model, heldout)
    quantized = copy.deepcopy(model)
    report = fp8.quantize_model(quantized, "row", mode="weight_only", backend="auto")
    assert report.layers and all(isinstance(quantized.get_submodule(n), fp8.FP8Linear) for n in report.layers)
    weight_only = _perplexity(quantized, heldout)
    assert fp8.set_mode(quantized, "w8a8") == len(report.layers)
    w8a8 = _perplexity(quantized, heldout)  # emulated on a CPU: the numbers of FP8, not its speed
    assert bf16 < 6, f"the model learnt the stream (uniform would be 64): {bf16:.2f}"
    # The goal of the issue: an FP8 quality delta under 1% (here ~0.03%: e4m3's 2^-4 rounding on weights).
    assert abs(weight_only / bf16 - 1) < 0.01, (bf16, weight_only)
    assert abs(w8a8 / bf16 - 1) < 0.01, (bf16, w8a8)
    assert weight_only != bf16, "the weights did change"
