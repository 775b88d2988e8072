"""Model FLOPs of a training step: the one convention behind `aistack plan`'s FLOPs and time
per step and the TFLOP/s and MFU the training loop logs.

The formula is Megatron-LM's `num_floating_point_operations` (megatron/training/training.py,
its `transformer_flops` branch), cut to the dense GPT/Llama models aistack builds (no MoE,
no multi-token prediction, no multi-latent or linear attention):

    batch x seq x [ 3 x 2 x h x ffn x (3 if SwiGLU else 2) x L                 MLP
                  + 3 x 2 x L x ( h x (q + k + v)                              QKV projection
                                 + q x seq / 2 x 2                             QK^T and AV, causal: half the matrix
                                 + q x h )                                     output projection
                  + 3 x 2 x h x padded_vocab ]                                 logits

with q = kv_channels x heads, k = v = kv_channels x query groups (GQA), 3 = forward, weight
gradient and data gradient GEMMs, 2 = a multiply-add. Biases, norms, softmax, the rotary or
learned position embeddings and the embedding lookup are not counted; neither is activation
recompute (these are model FLOPs, what MFU is measured against). Since Megatron-LM's change
of March 2025 the attention scores count half of the s x s matrix (the causal mask); before
it they counted all of it, 12.5% more for a Llama-3-8B step at sequence 8192.

No torch import: `aistack plan` stays fast.
"""

from __future__ import annotations

from typing import Any

from aistack.model.layout import padded_vocab_size

FORWARD_BACKWARD = 3  # forward, backward wgrad, backward dgrad: each GEMM runs three times
FMA = 2  # a multiply-add is two floating-point operations


def num_floating_point_operations(model: Any, padded_vocab: int, batch_size: int) -> float:
    """Forward + backward model FLOPs of `batch_size` sequences of model.seq_length tokens
    (Megatron-LM's num_floating_point_operations for a dense transformer)."""
    h, s, layers = model.hidden_size, model.seq_length, model.num_layers
    heads = model.num_attention_heads
    groups = model.num_query_groups or heads  # MHA: one group per head
    kv_channels = h // heads  # what aistack.model.gpt gives megatron's TransformerConfig
    query_projection_size = kv_channels * heads
    key_projection_size = value_projection_size = kv_channels * groups
    ffn_expansion_factor = 3 if model.arch == "llama" else 2  # SwiGLU: [gate; up] then down; else up, down
    self_attn_term = FORWARD_BACKWARD * FMA * (
        h * (query_projection_size + key_projection_size + value_projection_size)  # qkv projection
        + query_projection_size * s / 2 * 2  # core attention: causal mask halves QK^T and (QK^T)V
        + query_projection_size * h  # output projection
    )
    mlp_term = FORWARD_BACKWARD * FMA * h * model.ffn_size * ffn_expansion_factor
    logit_term = FORWARD_BACKWARD * FMA * h * padded_vocab
    return float(batch_size * s * (layers * (mlp_term + self_attn_term) + logit_term))


def forward_floating_point_operations(model: Any, padded_vocab: int, batch_size: int) -> float:
    """The forward pass alone (a frozen teacher, inference): a third of the above."""
    return num_floating_point_operations(model, padded_vocab, batch_size) / FORWARD_BACKWARD


def online_teacher(recipe: Any) -> Any | None:
    """The teacher's model block when a frozen teacher runs beside the student in the training
    job (kind distill, method logit, logit.source online), else None."""
    if getattr(recipe, "kind", None) != "distill" or recipe.method != "logit" or recipe.logit.source != "online":
        return None
    return recipe.teacher.model


def step_flops(recipe: Any, vocab_size: int, tensor: int) -> dict[str, float]:
    """FLOPs of one training step of a pretrain, sft or distill recipe: {"student": forward +
    backward of train.global_batch_size sequences, "teacher": an online teacher's forward
    over the same sequences (0 otherwise), "total"}. `vocab_size` is unpadded; each model pads
    it to its make_vocab_size_divisible_by x `tensor` as megatron does."""
    m, batch = recipe.model, recipe.train.global_batch_size
    student = num_floating_point_operations(m, padded_vocab_size(vocab_size, m, tensor) if vocab_size else 0, batch)
    teacher_model = online_teacher(recipe)
    teacher = 0.0
    if teacher_model is not None:
        padded = padded_vocab_size(vocab_size, teacher_model, tensor) if vocab_size else 0
        teacher = forward_floating_point_operations(teacher_model, padded, batch)
    return {"student": student, "teacher": teacher, "total": student + teacher}
