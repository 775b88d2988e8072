"""`kind: pretrain`: a GPT on megatron-core with tensor, pipeline and data parallelism.

The blocks follow Megatron-LM's argument groups (model, parallel, data, train,
checkpoint) so its users find their settings under familiar names.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from aistack.kinds.spec import Estimates, JobSpec, KindSpec
from aistack.model.layout import check_layout
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Recipe, StrictModel


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


class DatasetPath(StrictModel):
    path: str = Field(description="prefix of a Megatron indexed dataset (<prefix>.bin / <prefix>.idx)")
    weight: float = Field(default=1.0, gt=0)


class DataConfig(StrictModel):
    paths: list[DatasetPath] = Field(default_factory=list, description="one or more datasets, blended by weight")
    tokenizer: str | None = Field(default=None, description="tokenizer.json (HF tokenizers)")
    split: str = Field(default="98,2,0", pattern=r"^\d+(\.\d+)?,\d+(\.\d+)?,\d+(\.\d+)?$")
    num_workers: int = Field(default=0, ge=0)


class TrainConfig(StrictModel):
    micro_batch_size: int = Field(default=2, ge=1)
    global_batch_size: int = Field(default=8, ge=1)
    steps: int = Field(default=100, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    min_lr: float = Field(default=3e-5, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(default=0.1, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = Field(default=1.0, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp8"] = Field(default="auto", description="auto: bf16 on GPU, fp32 on CPU")
    seed: int = 1234
    log_every: int = Field(default=1, ge=1)
    eval_every: int = Field(default=50, ge=1)
    eval_steps: int = Field(default=4, ge=1)
    fused: bool | None = Field(default=None, description="torch.compile'd bias-dropout-add / SwiGLU / cross-entropy, "
                                                         "fused AdamW; null: on with a GPU")
    compile: bool = Field(default=False, description="torch.compile each transformer layer (regional compilation)")


class CheckpointConfig(StrictModel):
    every: int = Field(default=100, ge=1, description="save every N steps (and on SIGUSR1/requeue)")
    keep: int = Field(default=2, ge=1, description="last K checkpoints kept")
    load: str | None = Field(default=None, description="start from this checkpoint (any TP/PP layout)")
    load_optimizer: bool = True


# How fast, not what: kernels and compilation change the numbers only at rounding level.
SPEED_KEYS = ("model.attention_backend", "train.fused", "train.compile")


class PretrainRecipe(Recipe):
    kind: Literal["pretrain"] = "pretrain"
    model: ModelConfig = Field(default_factory=ModelConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    # Layout and cadence change where and how often, not what is learned: a run
    # resumed on another TP/PP layout or saving more often is the same run.
    NON_IDENTITY_KEYS: ClassVar[tuple[str, ...]] = (
        "parallel.tensor", "parallel.pipeline", "parallel.virtual_pipeline", "parallel.sequence_parallel",
        "parallel.distributed_optimizer", "parallel.recompute", "checkpoint.every", "checkpoint.keep",
        "train.log_every", "data.num_workers", *SPEED_KEYS,
    )


CHECKPOINTS = "jobs/train/tasks/00000/checkpoints"  # the training job's checkpoints root


def plan(loaded: LoadedRecipe) -> list[JobSpec]:
    """One job of nodes x tasks_per_node ranks (TP x PP x DP), checked before submitting."""
    check_layout(loaded.recipe, loaded.path)  # TP x PP x DP must divide ranks, heads, layers, batch
    return [JobSpec("train", "pretrain", 1, loaded.recipe.resources)]


def estimate(recipe: PretrainRecipe, file: str, profile_constraint: str) -> Estimates:
    """Parameters, memory per device, FLOPs, time per step and GPU-hours on the profile's GPU
    (also the estimate of `kind: sft` and `kind: distill`, whose training job is this one's)."""
    from aistack.model.estimate import device_for, estimate as estimate_model, rows

    est = estimate_model(recipe, device=device_for(recipe.resources.constraint, profile_constraint), file=file)
    return Estimates(rows(est), list(est.warnings), est.step_seconds)


SPEC = KindSpec("pretrain", PretrainRecipe, plan, outputs={"output": CHECKPOINTS}, report="training", estimate=estimate)
