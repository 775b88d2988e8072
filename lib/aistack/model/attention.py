"""Core attention through torch's scaled_dot_product_attention (flash / memory-efficient
kernels on the GPU, a fused kernel on the CPU), in place of megatron's unfused local one.

megatron's local `DotProductAttention` materialises the full [b*n, sq, sk] score matrix
(baddbmm), copies it to fp32, rebuilds a causal mask every call, then softmax and bmm:
the slowest part of a step at sequence 1024. This module is a drop-in `core_attention`
of the layer spec: same constructor, same call, no parameters (checkpoints do not change).

Masks: megatron's boolean mask is True where attention is *blocked*; SDPA's is True where
it is *allowed*. Without a mask the attention is causal; with a KV cache (sq < sk) the
queries are the last sq positions, so the causal band is aligned to the bottom right.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPAttention(DotProductAttention):
    """megatron's core attention contract ([s, b, n, h] in, [s, b, n*h] out) on
    F.scaled_dot_product_attention: causal, packed sequences (a block mask), GQA."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        if self.config.softmax_type != "vanilla" or self.config.window_size is not None:
            raise ValueError("SDPA attention supports vanilla softmax without a sliding window; "
                             "use model.attention_backend=local")
        self.groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        # with query-key layer scaling the local path divides the scale by the layer number and
        # multiplies it back inside its softmax: the net scale is the plain one
        self.scale = self.softmax_scale * (self.layer_number if self.config.apply_query_key_layer_scaling else 1)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                attn_mask_type: Optional[AttnMaskType] = None, attention_bias: Optional[Tensor] = None,
                packed_seq_params=None) -> Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPA attention takes packed sequences as an attention mask, not packed_seq_params/bias")
        sq, sk = query.size(0), key.size(0)
        # [s, b, n, h] -> [b, n, s, h], contiguous: the CPU kernel's backward is ~5% faster on it
        q, k, v = (t.permute(1, 2, 0, 3).contiguous() for t in (query, key, value))
        mask, causal = None, False
        if attention_mask is not None:
            mask = ~attention_mask  # True = may attend
        elif self.attn_mask_type == AttnMaskType.causal and sq > 1:
            if sq == sk:
                causal = True
            else:  # queries continue a cached prefix: query i sees keys up to sk - sq + i
                mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        dropout = self.attention_dropout.p if self.training else 0.0
        # dropout draws from the tensor-parallel RNG stream, as the local attention's does
        fork = tensor_parallel.get_cuda_rng_tracker().fork if dropout and not self.config.sequence_parallel else contextlib.nullcontext
        with fork():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                                 scale=self.scale, enable_gqa=self.groups > 1)
        # [b, n, s, h] -> [s, b, n*h]
        return out.permute(2, 0, 1, 3).reshape(sq, out.size(0), self.hidden_size_per_partition)

