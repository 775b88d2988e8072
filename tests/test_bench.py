"""The FP8 inference benchmark: e4m3 quantization bounds, FP8 vs BF16 quality on a tiny trained
model (emulated on CPU, and said so), one row per sweep point, the throughput plot, the roofline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from aistack.bench import fp8
from aistack.launch import launcher
from conftest import RECIPES

TINY = RECIPES / "pretrain" / "gpt-tiny.yaml"
BENCH = RECIPES / "bench" / "tiny.yaml"
TOKENIZER = RECIPES / "eval" / "tasks" / "tinylang" / "tokenizer.json"


@pytest.mark.parametrize("scaling", ["tensor", "row"])
def test_fp8_round_trip_is_within_e4m3_precision(scaling):
    gen = torch.Generator().manual_seed(0)
    # Rows of very different magnitudes, and outliers: what per-row scales are for.
    x = torch.randn(64, 256, generator=gen) * torch.logspace(-3, 2, 64)[:, None]
    x[3, 7] = 4000.0
    q, scale = fp8.quantize(x, scaling)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert q.float().abs().max() == fp8.FP8_MAX == 448.0, "amax maps onto e4m3's largest value"
    back = fp8.dequantize(q, scale)
    assert torch.isfinite(back).all()
    # e4m3: 3 mantissa bits -> rounding error <= 2^-4 relative for normals; below the smallest
    # normal (2^-6 x scale) the spacing is 2^-9 x scale, so the error is <= 2^-10 x scale.
    bound = torch.maximum(x.abs() * 2.0**-4, scale.expand_as(x) * 2.0**-10 if scaling == "row" else scale * 2.0**-10)
    assert ((back - x).abs() <= bound * (1 + 1e-6)).all()
    normal = x.abs() >= scale * 2.0**-6
    rel = ((back - x).abs() / x.abs())[normal]
    assert rel.max() <= 2.0**-4 and rel.mean() < 0.03
    assert torch.equal(fp8.qdq(x, scaling), back.to(x.dtype))


def test_fp8_linear_emulation_and_model_swap_on_cpu():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        ref = model(ids).logits
    report = fp8.quantize_model(model, "row", mode="w8a8", backend="auto")
    swapped = [n for n, m in model.named_modules() if isinstance(m, fp8.FP8Linear)]
    assert len(swapped) == 2 * 7 and report.skipped == ["lm_head"], "q,k,v,o,gate,up,down per layer; LM head kept"
    if not torch.cuda.is_available():
        assert report.emulated and report.as_dict()["backend"] == "emulate"
        with pytest.raises(RuntimeError, match="needs a GPU with FP8 tensor cores"):
            fp8.backend_for("scaled_mm", torch.device("cpu"))
    assert model.model.layers[0].self_attn.q_proj.weight_fp8.dtype == torch.float8_e4m3fn
    with torch.no_grad():
        out = model(ids).logits
    # Weights and activations each carry ~2-3% rounding error (2^-4 at worst): the logits move by a few %.
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.1, f"FP8 logits stay close to the fp32 ones: relative error {rel:.3f}"


def test_roofline_bounds_for_h100():
    from aistack.bench.roofline import DEVICES, ModelShape, bounds

    shape = ModelShape(matmul_params=124_000_000, layers=12, kv_dim=768, hidden=768)
    h100 = DEVICES["H100"]
    b1 = bounds(shape, h100, "bf16", batch=1, prompt_len=128, gen_len=128, fp8_real=False)
    kv = 2 * 12 * 768 * 2 * 192
    assert b1["decode_tok_s_bound"] == pytest.approx(3.35e12 / (2 * 124e6 + kv), rel=1e-6), "batch 1 decode: HBM-bound"
    f1 = bounds(shape, h100, "fp8", batch=1, prompt_len=128, gen_len=128, fp8_real=True)
    assert f1["decode_tok_s_bound"] > 1.5 * b1["decode_tok_s_bound"], "FP8 weights halve the bytes read per token"
    big = bounds(shape, h100, "bf16", batch=64, prompt_len=2048, gen_len=128, fp8_real=False)
    flops = 64 * 2048 * (2 * 124e6 + 2 * 12 * 768 * 2048)
    assert big["prefill_s_bound"] == pytest.approx(flops / 989e12), "long prefill: compute-bound"
    assert bounds(shape, None, "bf16", 1, 128, 128, False) == {"decode_tok_s_bound": None, "prefill_s_bound": None}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from aistack.eval import tinylang

    root = tmp_path_factory.mktemp("bench")
    corpus = tinylang.write_corpus(root / "data" / "tl", num_docs=400)
    args = [f"output.root={root / 'runs'}", f"data.paths=[{{path: {corpus}}}]", f"data.tokenizer={TOKENIZER}",
            "model.vocab_size=null", "tracking.mode=disabled", "train.steps=40"]
    return launcher.launch(TINY, args, on="local").run.path


def test_bench_recipe_sweeps_reports_quality_and_plots(tmp_path, tiny_run):
    args = [f"output.root={tmp_path}", f"bench.model={tiny_run}", "tracking.mode=offline", "bench.batch_sizes=[1,4]",
            "bench.prompt_lengths=[8,16]", "bench.gen_lengths=[8]", "bench.repeats=2"]
    result = launcher.launch(BENCH, args, on="local")
    run = result.run.path
    with open(run / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    points = {(r["precision"], r["batch"], r["prompt_len"], r["gen_len"]) for r in rows}
    assert len(rows) == len(points) == 2 * 2 * 2, "one row per (precision, batch, prompt, output) point"
    for r in rows:
        assert float(r["decode_tok_s"]) > 0 and float(r["ttft_ms"]) >= float(r["prefill_ms"]) > 0
        assert float(r["e2e_p50_ms"]) <= float(r["e2e_p90_ms"]) <= float(r["e2e_p99_ms"])
        assert float(r["peak_mem_mb"]) > 0
        if not torch.cuda.is_available():
            assert r["decode_tok_s_bound"] == "", "no roofline on a CPU"
    summary = json.loads((run / "results.json").read_text())
    # bench.fp8.mode auto: weight-only at batch 1, W8A8 at 4; bench.decode auto: the static cache on a CPU.
    ran = {(r["precision"], r["batch"]): (r["fp8_mode"], r["decode"]) for r in summary["rows"]}
    assert ran[("fp8", 1)] == ("weight_only", "static") and ran[("fp8", 4)] == ("w8a8", "static")
    assert ran[("bf16", 1)] == ran[("bf16", 4)] == ("-", "static")
    digests = {(r["batch"], r["prompt_len"]): set() for r in summary["rows"]}
    for r in summary["rows"]:
        if r["precision"] == "bf16":
            digests[(r["batch"], r["prompt_len"])].add(r["tokens_digest"])
    assert all(len(d) == 1 for d in digests.values())
    quality = summary["quality"]
    assert quality["bf16"]["text_perplexity"] < 30, "a trained model (129-token vocabulary)"
    for mode in ("weight_only", "w8a8"):  # each FP8 mode the sweep ran is scored
        delta = quality[f"delta_fp8_{mode}_minus_bf16"]
        assert abs(delta["text_perplexity_rel"]) < 0.02, f"FP8 {mode} costs under 2% perplexity: {delta}"
        assert abs(delta["tinylang_mc/acc"]) <= 0.05
    worst = quality["delta_fp8_minus_bf16"]["text_perplexity_rel"]
    assert worst == quality[f"delta_fp8_{quality['fp8_mode']}_minus_bf16"]["text_perplexity_rel"]
    assert abs(worst) == max(abs(quality[f"delta_fp8_{m}_minus_bf16"]["text_perplexity_rel"]) for m in ("weight_only", "w8a8"))
    report = (run / "report.md").read_text()
    assert "fp8_w8a8 - bf16" in report and "fp8_weight_only - bf16" in report and "text_perplexity" in report
    assert "modes run weight_only, w8a8" in report and "ran static" in report
    if not torch.cuda.is_available():
        assert summary["fp8"]["emulated"] and "EMULATED" in report
    png = (run / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(run / "throughput.png")).shape[0] > 100, "a decodable image"
