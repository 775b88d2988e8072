"""The models `gpu_check.py` runs in its own process: the plain PyTorch GPT-2 baseline, the
Llama-3-8B-shaped model of the decode benchmark (random weights: eager, static cache + CUDA
graph, compiled, FP8 weight-only and W8A8 side by side), and aistack's megatron model loaded
back from a checkpoint for the logits comparison with transformers."""

from __future__ import annotations

import copy
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0)
LLAMA_TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=500000.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# --- plain PyTorch GPT-2 -----------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm GPT-2 block as megatron's local spec builds it: LayerNorm, biases, exact GELU."""

    def __init__(self, h: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(h, eps=eps), nn.LayerNorm(h, eps=eps)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.fc1, self.fc2 = nn.Linear(h, ffn), nn.Linear(ffn, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, h))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class PlainGPT2(nn.Module):
    def __init__(self, vocab: int, h: int, heads: int, ffn: int, layers: int, seq: int, eps: float = 1e-5):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, h), nn.Embedding(seq, h)
        self.blocks = nn.ModuleList(Block(h, heads, ffn, eps) for _ in range(layers))
        self.ln_f = nn.LayerNorm(h, eps=eps)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied output layer


def train_plain_gpt2(shape: dict[str, int], micro: int, global_batch: int, steps: int, warmup: int, lr: float,
                     device: torch.device, compiled: bool = False) -> dict[str, Any]:
    """Median tokens/s of a plain training loop at the recipe's shape and batch: bf16 autocast,
    fp32 weights, AdamW, grad clipping, gradient accumulation over micro-batches; `compiled`:
    the model through torch.compile (its first steps, compiling, are among the warm-up)."""
    torch.manual_seed(0)
    model = PlainGPT2(**shape).to(device)
    forward = torch.compile(model) if compiled else model
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    n = global_batch // micro
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 129, (n, micro, shape["seq"] + 1), generator=gen).to(device)  # tinylang's ids
    reset_peak(device)
    times, losses = [], []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for m in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = forward(tokens[m, :, :-1])
                loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tokens[m, :, 1:].reshape(-1)) / n
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(total))  # waits for the step
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times[warmup:])
    out = {"tokens_per_s": global_batch * shape["seq"] / step_time, "step_time_s": step_time, "steps": steps,
           "timed_steps": steps - warmup, "peak_mem_gib": peak_gib(device), "loss_first": losses[0], "loss_last": losses[-1],
           "first_step_s": times[0]}
    del model, forward, opt
    reset_peak(device)
    return out


# --- the Llama-3-8B shape: decode variants side by side -------------------------------------

# name -> (decode mode, FP8 mode or None for BF16, what it adds). Each builds on the one before:
# D1-D2 the same BF16 model decoded faster, D3-D4 the compiled step of D2 with FP8 weights.
DECODE_VARIANTS = {
    "D0": ("eager", None, "eager, dynamic KV cache (before)"),
    "D1": ("graph", None, "static KV cache + CUDA graph"),
    "D2": ("compile", None, "static KV cache + torch.compile (reduce-overhead)"),
    "D3": ("compile", "weight_only", "D2 + FP8 weight-only"),
    "D4": ("compile", "w8a8", "D2 + FP8 W8A8 row-wise"),
}


class LlamaDecodeBench:
    """A random-weight Llama of `shape` in BF16 on `device`, decoded per variant through
    aistack.bench (one `variant` call each). The FP8 variants run an FP8 copy (made on first
    use: the FP8 weights beside the BF16 ones, 24 GB at 8B), switched between its modes."""

    def __init__(self, shape: dict[str, Any], device: torch.device, prompt_len: int, gen_len: int, repeats: int, warmup: int):
        from transformers import LlamaConfig, LlamaForCausalLM

        from aistack.bench.roofline import device_spec

        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # built in BF16 directly: no fp32 copy of 8B weights
        try:
            with torch.device(device):
                self.model = LlamaForCausalLM(LlamaConfig(**shape)).eval()
        finally:
            torch.set_default_dtype(default)
        self.shape, self.device = shape, device
        self.prompt_len, self.gen_len, self.repeats, self.warmup = prompt_len, gen_len, repeats, warmup
        self.spec = device_spec()
        self.quant = None
        self.fp8_model = None
        self.eager_tokens: dict[int, str] = {}  # batch -> D0's tokens digest
        self.logits_rel_error: dict[str, float] = {}  # FP8 mode -> vs the BF16 logits
        self.probe = torch.randint(1, shape["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(1)).to(device)
        with torch.inference_mode():
            self.reference = self.model(input_ids=self.probe).logits.float()

    def _fp8(self, mode: str) -> None:
        from aistack.bench import fp8

        if self.fp8_model is None:
            self.fp8_model = copy.deepcopy(self.model)
            self.quant = fp8.quantize_model(self.fp8_model, "row", mode=mode, backend="auto")
        fp8.set_mode(self.fp8_model, mode)
        if mode not in self.logits_rel_error:
            with torch.inference_mode():
                got = self.fp8_model(input_ids=self.probe).logits.float()
            self.logits_rel_error[mode] = float((got - self.reference).norm() / self.reference.norm())

    def variant(self, name: str, batch: int, compiled: bool = True) -> dict[str, Any]:
        """One variant at one batch: tokens/s, fraction of the HBM roofline, capture or
        compile seconds; {'status': 'n/a (CPU)'} for a CUDA graph without a GPU, and for a
        compiled one unless `compiled` (minutes on a CPU, saying nothing of the GPU)."""
        from aistack.bench.generate import time_point
        from aistack.bench.roofline import ModelShape, bounds

        decode, fp8_mode, what = DECODE_VARIANTS[name]
        figure: dict[str, Any] = {"variant": name, "what": what, "batch": batch, "decode": decode, "fp8_mode": fp8_mode or "-"}
        if decode == "graph" and self.device.type != "cuda":
            return {**figure, "status": "n/a (CPU)"}
        if decode == "compile" and not compiled:
            if fp8_mode:
                self._fp8(fp8_mode)  # its logit error still measured
            return {**figure, "status": "not run on the CPU (GPU only)"}
        if fp8_mode:
            self._fp8(fp8_mode)
        model = self.fp8_model if fp8_mode else self.model
        torch.compiler.reset()  # each compiled variant from scratch; frees the previous one's CUDA graphs
        reset_peak(self.device)
        point = time_point(model, self.shape["vocab_size"], batch, self.prompt_len, self.gen_len, self.repeats, self.warmup,
                           kv_cache=True, decode=decode)
        precision = "fp8" if fp8_mode else "bf16"
        fp8_real = self.quant is not None and not self.quant.emulated
        bound = bounds(ModelShape.of_hf(model), self.spec, precision, batch, self.prompt_len, self.gen_len, fp8_real)
        tok_s = point["decode_tok_s"]
        if name == "D0":
            self.eager_tokens[batch] = point["tokens_digest"]
        eager = self.eager_tokens.get(batch)
        return {**figure, "status": "ok", "decode_tok_s": tok_s, "step_ms": batch / tok_s * 1e3 if tok_s else None,
                "decode_tok_s_bound": bound["decode_tok_s_bound"],
                "decode_roofline_frac": tok_s / bound["decode_tok_s_bound"] if bound["decode_tok_s_bound"] and tok_s else None,
                "setup_s": point["setup_s"], "cuda_graph": point["cuda_graph"], "prefill_ms": point["prefill_ms"],
                "ttft_ms": point["ttft_ms"],
                "peak_mem_gib": peak_gib(self.device), "tokens_digest": point["tokens_digest"],
                "tokens_match_eager": None if fp8_mode or eager is None else point["tokens_digest"] == eager,
                "logits_rel_error": self.logits_rel_error.get(fp8_mode) if fp8_mode else None,
                "fp8_backend": ("bf16 matmul" if fp8_mode == "weight_only" else self.quant.as_dict()["backend"]) if fp8_mode else "-"}

    def close(self) -> None:
        del self.model, self.fp8_model, self.reference
        torch.compiler.reset()
        reset_peak(self.device)


def llama_decode_bench(shape: dict[str, Any], device: torch.device, batches: list[int], prompt_len: int, gen_len: int,
                       repeats: int, warmup: int, on_figure: Callable[[str, dict], None] | None = None,
                       variants: tuple[str, ...] = tuple(DECODE_VARIANTS), compiled: bool = True) -> dict[str, Any]:
    """Every variant at every batch, batch by batch (the batch-1 figures first: a run cut off
    still has them); `on_figure("D2/batch1", figure)` after each, so a caller can keep each
    figure as soon as it is measured. A variant that fails is
    recorded ({'status': 'error', ...}) and the next ones still run. `compiled`: run the
    torch.compile variants (D2-D4) too."""
    bench = LlamaDecodeBench(shape, device, prompt_len, gen_len, repeats, warmup)
    figures: dict[str, dict] = {}
    try:
        for batch in batches:
            for name in variants:
                try:
                    figure = bench.variant(name, batch, compiled)
                except Exception as err:  # noqa: BLE001  (recorded; the other variants still run)
                    traceback.print_exc()
                    figure = {"variant": name, "batch": batch, "what": DECODE_VARIANTS[name][2], "status": "error",
                              "error": f"{type(err).__name__}: {err}"[:400]}
                figures[f"{name}/batch{batch}"] = figure
                if on_figure:
                    on_figure(f"{name}/batch{batch}", figure)
    finally:
        quant = bench.quant.as_dict() if bench.quant else None
        errors = dict(bench.logits_rel_error)
        spec = bench.spec.name if bench.spec else None
        bench.close()
    return {"shape": shape, "variants": figures, "fp8": quant, "logits_rel_error": errors, "roofline_device": spec,
            "prompt_len": prompt_len, "gen_len": gen_len, "batches": list(batches)}


# --- aistack's logits vs transformers' ------------------------------------------------------


def compare_logits(run_dir: Path, hf_dir: Path, device: torch.device, batch: int = 2, seq: int = 64) -> dict[str, Any]:
    """The run's last checkpoint as aistack's megatron GPTModel and as the exported transformers
    model, both fp32 on `device`, on the same tokens."""
    from transformers import AutoModelForCausalLM

    from aistack.model import checkpoint, cpu_compat, gpt
    from aistack.recipe import load_recipe

    recipe = load_recipe(str(run_dir / "recipe.yaml")).recipe
    state = checkpoint.load_full_state_dict(run_dir)  # initialises megatron's parallel state (TP=1)
    padded = state["embedding.word_embeddings.weight"].shape[0]
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).to(device).eval()
    vocab = hf.config.vocab_size
    tokens = torch.randint(1, 129, (batch, seq), generator=torch.Generator().manual_seed(2)).to(device)
    with cpu_compat.device_scope(), torch.no_grad():
        model = gpt.build_gpt(recipe.model, recipe.parallel, True, True, padded, "fp32", use_te=False)
        missing = [k for k in model.load_state_dict(state, strict=False).missing_keys if not k.endswith("_extra_state")]
        if missing:
            raise RuntimeError(f"checkpoint lacks {missing[:3]}")
        model = model.to(device).eval()
        positions = torch.arange(seq, device=device).unsqueeze(0).expand_as(tokens)
        ours = model(tokens, positions, attention_mask=None)[..., :vocab].float()
        theirs = hf(tokens).logits.float()
    diff = float((ours - theirs).abs().max())
    scale = float(ours.abs().max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
    architecture = type(hf).__name__
    del model, hf
    return {"max_abs_diff": diff, "rel_diff": diff / max(scale, 1e-12), "argmax_agree": agree, "logits_absmax": scale,
            "architecture": architecture, "vocab": vocab, "tokens": [batch, seq]}
