"""Timing one sweep point: greedy generation of `gen_len` tokens after a `prompt_len` prompt.

    prefill      one forward over the prompt (fills the KV cache)
    first token  prefill + picking the first token on the host: time to first token
    decode       gen_len - 1 steps of one token each, reading the KV cache (kv_cache: true),
                 or re-running the whole sequence each step (kv_cache: false)

Prompts are random token ids (the speed of a dense model does not depend on them), the
same for every repeat and precision. The device is synchronised around every timed
region; warm-up runs are not counted. p50/p90/p99 are over the timed repeats.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model, ids: torch.Tensor, past: Any, kv_cache: bool, sequence: torch.Tensor) -> tuple[torch.Tensor, Any]:
    if kv_cache:
        out = model(input_ids=ids, past_key_values=past, use_cache=True)
        return out.logits[:, -1], out.past_key_values
    out = model(input_ids=sequence, use_cache=False)
    return out.logits[:, -1], None


@torch.inference_mode()
def generate_once(model, prompt: torch.Tensor, gen_len: int, kv_cache: bool) -> dict[str, float]:
    device = prompt.device
    _sync(device)
    start = time.perf_counter()
    logits, past = _step(model, prompt, None, kv_cache, prompt)
    _sync(device)
    prefill = time.perf_counter() - start
    token = logits.argmax(-1, keepdim=True)
    token.cpu()  # the first token is on the host: what a server could stream
    first = time.perf_counter() - start
    sequence = torch.cat([prompt, token], dim=1)
    for _ in range(gen_len - 1):
        logits, past = _step(model, token, past, kv_cache, sequence)
        token = logits.argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, token], dim=1)
    _sync(device)
    total = time.perf_counter() - start
    return {"prefill_s": prefill, "ttft_s": first, "decode_s": total - first, "e2e_s": total}


def _peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # The process's peak resident set (Linux reports KiB): not per point, a high-water mark.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def time_point(model, vocab_size: int, batch: int, prompt_len: int, gen_len: int, repeats: int, warmup: int,
               kv_cache: bool, seed: int = 0) -> dict[str, Any]:
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, vocab_size, (batch, prompt_len), generator=gen).to(device)
    for _ in range(warmup):
        generate_once(model, prompt, gen_len, kv_cache)
    _peak_memory_reset(device)
    runs = [generate_once(model, prompt, gen_len, kv_cache) for _ in range(repeats)]
    peak, peak_kind = _peak_memory_mb(device)
    e2e = np.array([r["e2e_s"] for r in runs])
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    decode_tokens = batch * (gen_len - 1)
    return {
        "prefill_ms": med["prefill_s"] * 1e3,
        "ttft_ms": med["ttft_s"] * 1e3,
        "decode_tok_s": decode_tokens / med["decode_s"] if decode_tokens and med["decode_s"] > 0 else None,
        "prefill_tok_s": batch * prompt_len / med["prefill_s"],
        "throughput_tok_s": batch * gen_len / med["e2e_s"],
        "e2e_p50_ms": float(np.percentile(e2e, 50)) * 1e3,
        "e2e_p90_ms": float(np.percentile(e2e, 90)) * 1e3,
        "e2e_p99_ms": float(np.percentile(e2e, 99)) * 1e3,
        "peak_mem_mb": peak, "peak_mem_kind": peak_kind, "repeats": repeats, "kv_cache": kv_cache,
    }
