"""The models `gpu_check.py` runs in its own process: the plain PyTorch GPT-2 baseline, the
Llama-3-8B-shaped model of the FP8 benchmark (random weights), and aistack's megatron model
loaded back from a checkpoint for the logits comparison with transformers."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

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
                     device: torch.device) -> dict[str, Any]:
    """Median tokens/s of a plain training loop at the recipe's shape and batch: bf16 autocast,
    fp32 weights, AdamW, grad clipping, gradient accumulation over micro-batches."""
    torch.manual_seed(0)
    model = PlainGPT2(**shape).to(device)
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
                logits = model(tokens[m, :, :-1])
                loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tokens[m, :, 1:].reshape(-1)) / n
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(total))  # waits for the step
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times[warmup:])
    out = {"tokens_per_s": global_batch * shape["seq"] / step_time, "step_time_s": step_time, "steps": steps,
           "timed_steps": steps - warmup, "peak_mem_gib": peak_gib(device), "loss_first": losses[0], "loss_last": losses[-1]}
    del model, opt
    reset_peak(device)
    return out


# --- the Llama-3-8B shape in BF16 and FP8 -------------------------------------------------


def llama_fp8_bench(shape: dict[str, Any], device: torch.device, batches: list[int], prompt_len: int, gen_len: int,
                    repeats: int, warmup: int) -> dict[str, Any]:
    """aistack's bench library on a random-weight Llama: decode/prefill timing per batch in BF16,
    then the same model quantized in place to FP8 (row-wise scales; _scaled_mm where real)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from aistack.bench import fp8
    from aistack.bench.generate import time_point
    from aistack.bench.roofline import ModelShape, bounds, device_spec

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in BF16 directly: no fp32 copy of 8B weights
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**shape)).eval()
    finally:
        torch.set_default_dtype(default)
    spec = device_spec()
    probe = torch.randint(1, shape["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        reference = model(input_ids=probe).logits.float()
    rows = {}
    quant = None
    for precision in ("bf16", "fp8"):
        if precision == "fp8":
            quant = fp8.quantize_model(model, "row", activations=True, backend="auto")
        fp8_real = quant is not None and not quant.emulated
        shape_of = ModelShape.of_hf(model)
        for batch in batches:
            point = time_point(model, shape["vocab_size"], batch, prompt_len, gen_len, repeats, warmup, kv_cache=True)
            bound = bounds(shape_of, spec, precision, batch, prompt_len, gen_len, fp8_real)["decode_tok_s_bound"]
            point["decode_roofline_frac"] = point["decode_tok_s"] / bound if bound and point["decode_tok_s"] else None
            rows[f"{precision}/{batch}"] = point
    with torch.inference_mode():
        got = model(input_ids=probe).logits.float()
    rel = float((got - reference).norm() / reference.norm())
    out = {"shape": shape, "rows": rows, "fp8": quant.as_dict(), "logits_rel_error_fp8": rel,
           "roofline_device": spec.name if spec else None, "prompt_len": prompt_len, "gen_len": gen_len}
    del model, reference, got
    reset_peak(device)
    return out


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
