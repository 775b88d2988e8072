"""The speed a device allows: decode is bound by HBM bandwidth (every weight and the KV
cache are read once per generated token), prefill mostly by peak matmul FLOP/s.

    time >= max(bytes moved / bandwidth, FLOPs / peak FLOP/s)

Peaks and bandwidths come from aistack.hardware (dense, SXM parts unless named otherwise).
On a CPU, or an unknown GPU, there is no entry: the bound is reported as n/a.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aistack.hardware import DEVICES, GPU, current  # noqa: F401  (DEVICES: the one table, re-exported)

# The device table lives in aistack.hardware; these names stay for existing callers.
DeviceSpec = GPU


def device_spec() -> GPU | None:
    return current()


@dataclass(frozen=True)
class ModelShape:
    matmul_params: int  # weights multiplied per token (every Linear, LM head included)
    layers: int
    kv_dim: int  # key (= value) width per layer: kv heads x head dim
    hidden: int

    @classmethod
    def of_hf(cls, model: Any) -> "ModelShape":
        import torch.nn as nn

        from aistack.bench.fp8 import FP8Linear

        cfg = model.config
        params = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, (nn.Linear, FP8Linear)))
        # GPT-2's Conv1D layers ((in, out) weights) beside its nn.Linear LM head.
        params += sum(m.weight.numel() for m in model.modules() if type(m).__name__ == "Conv1D")
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(params, cfg.num_hidden_layers, kv_heads * head_dim, cfg.hidden_size)


def bounds(shape: ModelShape, spec: DeviceSpec | None, precision: str, batch: int, prompt_len: int, gen_len: int,
           fp8_real: bool) -> dict[str, float | None]:
    """Upper bound on decode tokens/s and lower bound on prefill seconds for one point."""
    if spec is None:
        return {"decode_tok_s_bound": None, "prefill_s_bound": None}
    fp8 = precision == "fp8" and fp8_real and spec.fp8_flops
    weight_bytes = shape.matmul_params * (1 if fp8 else 2)
    peak = spec.fp8_flops if fp8 else spec.bf16_flops
    kv_per_token = 2 * shape.layers * shape.kv_dim * 2  # K and V, bf16, every layer
    ctx = prompt_len + gen_len / 2  # mean context over the decode steps
    decode_bytes = weight_bytes + batch * ctx * kv_per_token
    decode_flops = batch * (2 * shape.matmul_params + 4 * shape.layers * shape.hidden * ctx)
    decode_s = max(decode_bytes / spec.hbm_bytes_per_s, decode_flops / peak)
    prefill_flops = batch * prompt_len * (2 * shape.matmul_params + 2 * shape.layers * shape.hidden * prompt_len)
    prefill_bytes = weight_bytes + batch * prompt_len * kv_per_token
    prefill_s = max(prefill_bytes / spec.hbm_bytes_per_s, prefill_flops / peak)
    return {"decode_tok_s_bound": batch / decode_s, "prefill_s_bound": prefill_s}
