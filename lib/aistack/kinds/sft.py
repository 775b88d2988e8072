"""`kind: sft`: supervised finetuning of a pretrained checkpoint on chat records.

The model, parallel and train blocks are pretraining's (same loop, layouts, resume and
metrics); what differs is the data (chat records, a chat template, assistant-only loss,
packing) and the defaults of a finetune: a lower, constant-after-warmup learning rate and
a required starting checkpoint, loaded without its optimizer.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from aistack.kinds.pretrain import CHECKPOINTS, SPEED_KEYS, CheckpointConfig, ModelConfig, ParallelConfig, TrainConfig, estimate
from aistack.recipe.kinds import JobSpec, KindSpec
from aistack.model.layout import check_layout
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Recipe, StrictModel


class ChatDataConfig(StrictModel):
    train: list[str] = Field(default_factory=list, description="chat records: .jsonl or .parquet files or globs, each record {messages: [{role, content}]}")
    valid: list[str] = Field(default_factory=list, description="validation records; empty: hold out valid_fraction of train")
    valid_fraction: float = Field(default=0.05, ge=0, lt=1)
    tokenizer: str = Field(description="tokenizer.json, or a folder with tokenizer.json (+ tokenizer_config.json with a chat_template)")
    chat_template: Literal["auto", "tokenizer", "default"] = Field(
        default="auto", description="auto: the tokenizer's own when it has one, else aistack.post.chat.DEFAULT_TEMPLATE")
    packing: Literal["pack", "pad"] = Field(
        default="pack", description="pack: several conversations per row (attention and positions reset); pad: one per row")


class SFTTrainConfig(TrainConfig):
    lr: float = Field(default=2e-5, gt=0)
    min_lr: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    eval_every: int = Field(default=20, ge=1)


class FinetuneCheckpointConfig(CheckpointConfig):
    load: str | None = Field(
        default=None,
        description="pretrained weights: an aistack checkpoint (dir or its parent with `latest`, any TP/PP layout) "
                    "or a Hugging Face folder (config.json + safetensors, llama or gpt2: the model block must match it); "
                    "null trains from random init (tests, ablations)")
    load_optimizer: bool = Field(default=False, description="finetunes start a fresh optimizer at step 0")


class SFTRecipe(Recipe):
    kind: Literal["sft"] = "sft"
    model: ModelConfig = Field(default_factory=ModelConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    data: ChatDataConfig
    train: SFTTrainConfig = Field(default_factory=SFTTrainConfig)
    checkpoint: FinetuneCheckpointConfig = Field(default_factory=FinetuneCheckpointConfig)

    NON_IDENTITY_KEYS: ClassVar[tuple[str, ...]] = (
        "parallel.tensor", "parallel.pipeline", "parallel.virtual_pipeline", "parallel.sequence_parallel",
        "parallel.distributed_optimizer", "parallel.recompute", "checkpoint.every", "checkpoint.keep", "train.log_every", *SPEED_KEYS,
    )


def plan(loaded: LoadedRecipe) -> list[JobSpec]:
    """One training job (TP x PP x DP over its ranks), as pretraining."""
    check_layout(loaded.recipe, loaded.path)  # TP x PP x DP must divide ranks, heads, layers, batch
    return [JobSpec("train", "sft", 1, loaded.recipe.resources)]


SPEC = KindSpec("sft", SFTRecipe, plan, outputs={"output": CHECKPOINTS}, report="training", estimate=estimate)
