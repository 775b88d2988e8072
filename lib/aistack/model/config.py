"""The model and its parallel layout, as recipes write them (pretrain, sft, distill and the
bench read the same blocks); the model code builds from these."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aistack.recipe.schema import StrictModel


class ModelConfig(StrictModel):
    arch: Literal["llama", "gpt2"] = "llama"  # llama: RoPE, SwiGLU, RMSNorm, untied; gpt2: learned pos, GELU, LayerNorm, tied
    num_layers: int = Field(default=2, ge=1)
    hidden_size: int = Field(default=64, ge=8)
    num_attention_heads: int = Field(default=4, ge=1)
    num_query_groups: int | None = Field(default=None, ge=1, description="GQA groups; null = one per head (MHA)")
    ffn_hidden_size: int | None = Field(default=None, ge=1, description="null: 4h (gpt2) or 8h/3 rounded up to 64 (llama)")
    seq_length: int = Field(default=128, ge=8)
    vocab_size: int | None = Field(default=None, ge=8, description="null: the tokenizer's")
    make_vocab_size_divisible_by: int = Field(default=128, ge=1)
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    hidden_dropout: float = Field(default=0.0, ge=0, lt=1)
    attention_dropout: float = Field(default=0.0, ge=0, lt=1)
    untie_embeddings: bool | None = Field(default=None, description="null: untied for llama, tied for gpt2")
    attention_backend: Literal["sdpa", "local"] = Field(
        default="sdpa", description="core attention of megatron's local layers: torch SDPA (flash / memory-efficient "
                                    "kernels), or megatron's unfused DotProductAttention; no weights either way")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_attention_heads {self.num_attention_heads}")
        if self.num_query_groups and self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} must be divisible by num_query_groups {self.num_query_groups}"
            )
        return self

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden_size:
            return self.ffn_hidden_size
        if self.arch == "gpt2":
            return 4 * self.hidden_size
        return ((8 * self.hidden_size // 3) + 63) // 64 * 64

    @property
    def tied_embeddings(self) -> bool:
        return (self.arch == "gpt2") if self.untie_embeddings is None else not self.untie_embeddings


class ParallelConfig(StrictModel):
    tensor: int = Field(default=1, ge=1)
    pipeline: int = Field(default=1, ge=1)
    virtual_pipeline: int | None = Field(default=None, ge=2, description="interleaved 1F1B stages per rank")
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    recompute: Literal["none", "selective", "full"] = "none"
