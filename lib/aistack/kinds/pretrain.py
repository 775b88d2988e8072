"""`kind: pretrain`: a GPT on megatron-core with tensor, pipeline and data parallelism.

The blocks follow Megatron-LM's argument groups (model, parallel, data, train,
checkpoint) so its users find their settings under familiar names.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from aistack.recipe.kinds import Estimates, JobSpec, KindSpec
from aistack.model.config import ModelConfig, ParallelConfig
from aistack.model.layout import check_layout
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Recipe, StrictModel


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
