"""Timing one sweep point: greedy generation of `gen_len` tokens after a `prompt_len` prompt.

    prefill      one forward over the prompt (fills the KV cache)
    first token  prefill + picking the first token on the host: time to first token
    decode       gen_len - 1 steps of one token each, reading the KV cache (kv_cache: true),
                 or re-running the whole sequence each step (kv_cache: false)

How the decode steps run (eager, static cache, CUDA graph, compiled) is `decode`: see
aistack.bench.decode. Its one-off cost (capture or compilation) is `setup_s`, outside the
timings. Prompts are random token ids (the speed of a dense model does not depend on them),
the same for every repeat and precision. The device is synchronised around every timed
region; warm-up runs are not counted. p50/p90/p99 are over the timed repeats.
"""

from __future__ import annotations

import hashlib
import resource
from typing import Any

import numpy as np
import torch

from aistack.bench.decode import make_decoder


def _peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # The process's peak resident set (Linux reports KiB): not per point, a high-water mark.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def tokens_digest(tokens: torch.Tensor) -> str:
    """A short fingerprint of the generated tokens: equal digests, identical greedy tokens."""
    return hashlib.sha1(tokens.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:12]


def time_point(model, vocab_size: int, batch: int, prompt_len: int, gen_len: int, repeats: int, warmup: int,
               kv_cache: bool, seed: int = 0, decode: str = "eager") -> dict[str, Any]:
    """The figures of one point; `decode` a resolved mode (aistack.bench.decode.resolve)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, vocab_size, (batch, prompt_len), generator=gen).to(device)
    decoder = make_decoder(model, decode, batch, prompt_len + gen_len, kv_cache)
    setup_s = decoder.prepare()
    for _ in range(warmup):
        decoder.generate(prompt, gen_len)
    _peak_memory_reset(device)
    runs, digests = [], set()
    for _ in range(repeats):
        tokens, timing = decoder.generate(prompt, gen_len)
        runs.append(timing)
        digests.add(tokens_digest(tokens))
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
        "decode": decoder.mode, "setup_s": setup_s, "cuda_graph": decoder.cuda_graph,
        # One digest when every repeat gave the same tokens (greedy decoding is deterministic).
        "tokens_digest": digests.pop() if len(digests) == 1 else "differs between repeats",
    }
