"""The SDPA core attention equals megatron's local DotProductAttention: outputs and
gradients of the whole GPT on the CPU, fp32, within 1e-5 relative (the kernels sum in
another order; nothing else differs), causal, with a packed-sequence block mask, with GQA,
and with a KV-cache-style query block (sq < sk)."""

from __future__ import annotations

import pytest
import torch

from aistack.kinds.pretrain import ModelConfig, ParallelConfig

VOCAB = 128
TOLERANCE = 1e-5  # relative, fp32


@pytest.fixture(scope="module")
def megatron_state():
    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel

    init_model_parallel(1, 1)
    yield
    destroy_model_parallel()


def _run(backend: str, arch: str, groups: int | None, tokens, mask):
    from aistack.model.dist.megatron import set_seeds
    from aistack.model import cpu_compat, gpt
    from aistack.model.layout import padded_vocab_size

    cfg = ModelConfig(arch=arch, num_layers=2, hidden_size=64, num_attention_heads=8, num_query_groups=groups,
                      seq_length=tokens.shape[1], attention_backend=backend)
    with cpu_compat.device_scope():
        set_seeds(7)  # the same weights for both backends
        model = gpt.build_gpt(cfg, ParallelConfig(), True, True, padded_vocab_size(VOCAB, cfg, 1), use_te=False)
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        logits = model(tokens, positions, attention_mask=mask)
        logits.float().square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logits.detach(), grads, model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _packed_mask(batch: int, seq: int) -> torch.Tensor:
    """Two documents per row, [b, 1, s, s], True = blocked (megatron's convention)."""
    segment = (torch.arange(seq) >= seq // 3).long().expand(batch, seq)
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return ~(same & causal).unsqueeze(1)


@pytest.mark.parametrize("arch,groups,packed", [("llama", None, False), ("llama", 2, False), ("gpt2", None, False),
                                                ("llama", 2, True)])
def test_sdpa_matches_local_attention(megatron_state, arch, groups, packed):
    tokens = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = _packed_mask(2, 24) if packed else None
    ours, our_grads, model = _run("sdpa", arch, groups, tokens, mask)
    ref, ref_grads, ref_model = _run("local", arch, groups, tokens, mask)
    assert type(model.decoder.layers[0].self_attention.core_attention).__name__ == "SDPAttention"
    assert type(ref_model.decoder.layers[0].self_attention.core_attention).__name__ == "DotProductAttention"
    assert _rel(ours, ref) < TOLERANCE
    assert our_grads.keys() == ref_grads.keys()
    worst = max(_rel(our_grads[k], ref_grads[k]) for k in ref_grads)
    assert worst < TOLERANCE, worst


def test_packed_mask_keeps_documents_apart(megatron_state):
    """With the block mask the second document's logits do not depend on the first one's tokens."""
    tokens = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(1))
    other = tokens.clone()
    other[0, :4] = (other[0, :4] + 1) % VOCAB  # change the first document only
    mask = _packed_mask(1, 24)
    a, _, _ = _run("sdpa", "llama", 2, tokens, mask)
    b, _, _ = _run("sdpa", "llama", 2, other, mask)
    assert torch.equal(a[:, 8:], b[:, 8:])
    assert not torch.equal(a[:, :8], b[:, :8])


def test_cached_queries_see_the_prefix(megatron_state):
    """sq < sk (a KV cache): the last queries attend causally, aligned at the bottom right,
    exactly as the same queries do inside the full causal attention."""
    from aistack.model.attention import SDPAttention
    from megatron.core.transformer.enums import AttnMaskType

    from aistack.model import gpt

    cfg = ModelConfig(num_layers=1, hidden_size=64, num_attention_heads=8, num_query_groups=2)
    config = gpt.transformer_config(cfg, ParallelConfig())
    attn = SDPAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(10, 1, 8, 8, generator=gen)
    k, v = torch.randn(10, 1, 2, 8, generator=gen), torch.randn(10, 1, 2, 8, generator=gen)
    full = attn(q, k, v, None)
    tail = attn(q[-3:], k, v, None)
    assert torch.allclose(tail, full[-3:], rtol=1e-5, atol=1e-6)
