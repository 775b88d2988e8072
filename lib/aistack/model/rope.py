"""megatron's unfused rotary embedding without its two wasted copies (its fused one needs TE).

megatron 0.16.1's `_apply_rotary_pos_emb_bshd` multiplies cos and sin by `mscale` (1.0 for
RoPE without YaRN) and ends with `torch.cat((t, t_pass))`, a full copy of q and k even when
t_pass is empty (every layer here). This one skips both when they change nothing: the same
numbers (x * 1.0 and a copy are exact), fewer kernels per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _apply_rotary_pos_emb_bshd(t: Tensor, freqs: Tensor, rotary_interleaved: bool = False,
                               multi_latent_attention: bool = False, mscale: float = 1.0) -> Tensor:
    from megatron.core.models.common.embeddings import rope_utils

    rot_dim = freqs.shape[-1]
    if multi_latent_attention or t.shape[-1] != rot_dim or mscale != 1.0:  # the cases it does not cover
        return _ORIGINAL(t, freqs, rotary_interleaved, multi_latent_attention, mscale)
    cos_, sin_ = torch.cos(freqs).to(t.dtype), torch.sin(freqs).to(t.dtype)
    return t * cos_ + rope_utils._rotate_half(t, rotary_interleaved) * sin_


_ORIGINAL = None


def install() -> None:
    """Swap megatron's function for this one (idempotent)."""
    global _ORIGINAL
    from megatron.core.models.common.embeddings import rope_utils

    if rope_utils._apply_rotary_pos_emb_bshd is not _apply_rotary_pos_emb_bshd:
        _ORIGINAL = rope_utils._apply_rotary_pos_emb_bshd
        rope_utils._apply_rotary_pos_emb_bshd = _apply_rotary_pos_emb_bshd
