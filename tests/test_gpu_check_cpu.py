"""`benchmarks/gpu_check.py --cpu --tiny`: every section of the GPU check, end to end on the
CPU (tiny shapes, FP8 emulated), with only the GPU image's packages and the wheels importable
in its process; and the GPU-path fixes it needed, caught on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ["probe", "data", "pretrain", "baseline", "train-variants", "bench-8b", "resume", "layout", "export",
            "bench-125m", "nccl"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    result = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--tiny", "--simulate-image", "--out", str(out)],
                            capture_output=True, text=True, timeout=900, cwd=REPO)
    report = json.loads((out / "gpu-check.json").read_text()) if (out / "gpu-check.json").exists() else None
    return result, report, out


def rows_of(report: dict, section: str) -> list[dict]:
    return [r for r in report["rows"] if r["section"] == section]


def test_every_section_runs_and_the_table_says_so(smoke):
    result, report, out = smoke
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert report["ok"] and report["complete"] and list(report["sections"]) == SECTIONS
    assert all(s["ok"] and s["error"] is None for s in report["sections"].values())
    assert "Transformer Engine: not installed, megatron-core local spec" in result.stdout
    assert f"JSON: {out / 'gpu-check.json'}" in result.stdout and "all sections ok" in result.stdout
    assert report["header"][0].startswith("device: CPU")
    checks = [r for r in report["rows"] if r["kind"] == "check"]
    assert len(checks) >= 5 and all(r["met"] is True for r in checks)
    goals = [r for r in report["rows"] if r["kind"] == "goal"]
    assert {r["met"] for r in goals if "perplexity" not in r["figure"]} == {None}, "speed goals: GPU only"


def test_training_resume_layout_and_export_hold(smoke):
    _, report, _ = smoke
    s = report["sections"]
    assert s["pretrain"]["loss_last5"] < s["pretrain"]["loss_first"] - 0.05 and s["pretrain"]["tokens_per_s"] > 0
    assert s["pretrain"]["steps"] == 12 and s["pretrain"]["timed_steps"] == 9
    assert s["baseline"]["tokens_per_s"] > 0 and s["baseline"]["ratio_megatron_over_plain"] > 0
    assert s["resume"]["equal"] == s["resume"]["compared"] == 6 and s["resume"]["max_abs_diff"] == 0
    assert s["resume"]["resume_logged"]
    assert s["layout"]["layout"] == {"tp": 2, "pp": 1, "dp": 1} and s["layout"]["rel"] < 1e-3
    assert s["export"]["architecture"] == "GPT2LMHeadModel" and "config.json" in s["export"]["files"]
    assert s["export"]["rel_diff"] < 1e-5 and s["export"]["argmax_agree"] == 1.0


def test_probe_then_training_variants_side_by_side(smoke):
    _, report, _ = smoke
    probe = report["sections"]["probe"]
    assert probe["compile"]["ok"] is True and probe["versions"]["c_compiler"], "the CPU run compiles a tiny function"
    assert probe["versions"]["megatron-core"] == "0.16.1"
    s = report["sections"]
    assert s["pretrain"]["kernels"] == {"attention": "sdpa", "fused": False, "compile": False}, "the CPU defaults"
    assert s["baseline"]["P0"]["tokens_per_s"] > 0 and "P1" not in s["baseline"], "plain + compile: GPU only"
    variants = s["train-variants"]
    assert variants["T0"]["kernels"]["attention"] == "local" and variants["T0"]["timed_steps"] > 0
    assert variants["T1"]["from"] == "pretrain (shipped defaults)", "the defaults' own run stands for T1 on a CPU"
    assert "T2" not in variants and "T3" not in variants, "torch.compile'd variants: GPU only unless --compile-on-cpu"
    assert variants["choice"]["shipped_default"] == "T1"
    values = {r["figure"]: r["value"] for r in rows_of(report, "train-variants")}
    assert values["T3 + each layer compiled"] == "not run on the CPU (GPU only)"


def test_a_cut_off_run_keeps_what_it_measured(tmp_path):
    """--time-limit 0: nothing starts but the JSON (written after every figure) says so."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--tiny", "--only", "probe,data", "--time-limit", "0",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(report["sections"]) == ["probe", "data"]
    assert all("time limit" in s["skipped"] for s in report["sections"].values())
    assert "skipped (time limit): probe, data" in result.stdout


def test_bench_rows_for_each_batch_and_precision(smoke):
    _, report, _ = smoke
    sec = report["sections"]["bench-125m"]
    assert sec["fp8"]["emulated"] and sec["fp8"]["layers"] > 0 and sec["fp8"]["modes"] == ["weight_only", "w8a8"]
    points = sec["points"]
    assert sorted((p["precision"], p["batch"]) for p in points) == sorted((p, b) for p in ("bf16", "fp8") for b in (1, 8, 32))
    for p in points:
        assert p["decode_tok_s"] > 0 and p["ttft_ms"] >= p["prefill_ms"] > 0 and p["peak_mem_mb"] > 0
        assert p["decode_roofline_frac"] is None, "no roofline on a CPU"
        assert p["decode"] == "static", "bench.decode auto on a CPU"
        assert p["fp8_mode"] == ("-" if p["precision"] == "bf16" else "weight_only" if p["batch"] == 1 else "w8a8")
    figures = [r["figure"] for r in rows_of(report, "bench-125m")]
    assert sum("decode tokens/s, batch" in f for f in figures) == 3
    assert sum("perplexity on held-out text, FP8" in f for f in figures) == 2, "one per FP8 mode"
    quality = sec["quality"]
    assert abs(quality["delta_fp8_minus_bf16"]["text_perplexity_rel"]) < 0.01


def test_8b_decode_variants_side_by_side(smoke):
    _, report, _ = smoke
    sec = report["sections"]["bench-8b"]
    variants = {k: v for k, v in sec.items() if k.startswith("D")}
    assert sorted(variants) == sorted(f"D{i}/batch{b}" for i in range(5) for b in (1, 8))
    for name, f in variants.items():
        if name.startswith("D0/"):
            assert f["status"] == "ok" and f["decode"] == "eager" and f["decode_tok_s"] > 0 and f["setup_s"] == 0
            assert f["decode_roofline_frac"] is None and f["tokens_match_eager"] is True
        elif name.startswith("D1/"):
            assert f["status"] == "n/a (CPU)", "a CUDA graph needs a GPU"
        else:  # torch.compile: GPU only unless --compile-on-cpu
            assert f["status"] == "not run on the CPU (GPU only)" and f["decode"] == "compile"
    assert variants["D3/batch1"]["fp8_mode"] == "weight_only" and variants["D4/batch8"]["fp8_mode"] == "w8a8"
    assert sec["fp8"]["emulated"] and set(sec["logits_rel_error"]) == {"weight_only", "w8a8"}, "FP8 quality still measured"
    assert all(0 < v < 0.2 for v in sec["logits_rel_error"].values())
    values = {r["figure"]: r["value"] for r in rows_of(report, "bench-8b")}
    assert values["tiny Llama D1 static KV cache + CUDA graph, batch 1"] == "n/a (CPU)"
    goals = [r for r in rows_of(report, "bench-8b") if r["kind"] == "goal"]
    assert len(goals) == 3 and {r["met"] for r in goals} == {None}, "speed goals: GPU only"


def test_nccl_section_reports_the_layout_on_cpu(smoke):
    _, report, _ = smoke
    rows = rows_of(report, "nccl")
    assert rows[0]["met"] is True and "12 steps, tp1 pp1 dp1" in rows[0]["value"]
    assert "gloo (CPU run" in rows[1]["value"]


# --- GPU-path fixes, caught on the CPU ---------------------------------------------------


def test_fp8_bench_quantizes_gpt2_conv1d_and_counts_its_weights():
    """recipes/bench/gpt-125m-h100.yaml benchmarks a GPT-2: its layers are transformers' Conv1D,
    which quantize_model skipped (then failed: no Linear) and the roofline did not count."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from aistack.bench import fp8
    from aistack.bench.roofline import ModelShape

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=0, eos_token_id=0)).eval()
    h, layers = 64, 2
    expected = layers * (h * 3 * h + h * h + h * 4 * h + 4 * h * h) + 128 * h  # + the LM head
    assert ModelShape.of_hf(model).matmul_params == expected
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        ref = model(ids).logits
    report = fp8.quantize_model(model, "row", mode="w8a8", backend="auto")
    assert len(report.layers) == 4 * layers and report.skipped == ["lm_head"]
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, fp8.FP8Linear) and (c_attn.in_features, c_attn.out_features) == (h, 3 * h)
    assert c_attn.weight_fp8.is_contiguous(), "_scaled_mm needs the transposed weight column-major"
    assert ModelShape.of_hf(model).matmul_params == expected
    with torch.no_grad():
        out = model(ids).logits
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.1, f"the same layers in FP8: logits within a few % ({rel:.3f})"


def test_scaled_mm_path_of_a_converted_gpt2_layer_runs_on_the_cpu():
    """torch._scaled_mm also runs on the CPU: the real FP8 path's call (row-wise scales [M,1] and
    [1,N], bf16 bias and output) on a Conv1D turned Linear, against the emulation."""
    from transformers.pytorch_utils import Conv1D

    from aistack.bench import fp8

    torch.manual_seed(0)
    conv = Conv1D(96, 64).to(torch.bfloat16)  # (in 64, out 96), as GPT-2's c_attn
    torch.nn.init.normal_(conv.bias, std=0.1)
    x = torch.randn(5, 7, 64, dtype=torch.bfloat16)
    real = fp8.FP8Linear(fp8.as_linear(conv), "row", mode="w8a8", backend="scaled_mm")
    emulated = fp8.FP8Linear(fp8.as_linear(conv), "row", mode="w8a8", backend="emulate")
    assert real.backend == "scaled_mm"
    with torch.no_grad():
        ref, got, emu = conv(x).float(), real(x).float(), emulated(x).float()
    assert got.shape == ref.shape == (5, 7, 96) and got.dtype == torch.float32
    assert float((got - emu).norm() / emu.norm()) < 0.03, "the real FP8 GEMM and its emulation agree"
    assert float((got - ref).norm() / ref.norm()) < 0.06


def test_model_chunks_go_to_the_gpu_when_there_is_one(monkeypatch):
    """Megatron builds the layers on the host (use_cpu_initialization); DDP then puts its grad
    buffers on the GPU: the model must be there too, as Megatron-LM's get_model moves it."""
    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
    from aistack.kinds.pretrain import ModelConfig, ParallelConfig
    from aistack.model import cpu_compat, gpt

    init_model_parallel(1, 1)
    set_seeds(1234)
    moved = []
    try:
        with cpu_compat.device_scope():
            assert gpt.build_model_chunks(ModelConfig(), ParallelConfig(), 128)[0] is not None and moved == []
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
            monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, device=None: moved.append(device) or self)
            chunks = gpt.build_model_chunks(ModelConfig(), ParallelConfig(), 128)
    finally:
        monkeypatch.undo()
        destroy_model_parallel()
    assert len(chunks) == 1 and moved == [0]


def test_mfu_peak_comes_from_the_device_table(monkeypatch):
    from aistack.model.train import peak_tflops

    assert peak_tflops("bf16") is None or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 PCIe")
    assert peak_tflops("bf16") == 756.0 and peak_tflops("fp8") == 1513.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    assert peak_tflops("fp8") is None
