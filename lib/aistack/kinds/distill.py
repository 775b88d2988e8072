"""`kind: distill`: a student learns from a frozen teacher.

method: logit      Hinton et al. (2015) on the `data:` block's pretraining corpus, or on the
                   `chat:` block's records (assistant tokens only, as SFT; online only):
                   loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE.
                   logit.source online: the teacher runs beside the student in the same job;
                   offline: an array job (logit.shards tasks) first writes the teacher's
                   top-k logits to a zarr store, the student then trains from it.
method: sequence   the teacher answers a prompt set (an array job over sequence.shards), the
                   answers become chat records, the student is finetuned on them (as `kind: sft`).

`teacher.checkpoint` and `checkpoint.load` (the student's start) name checkpoints of earlier
pretraining runs (any TP/PP layout), which is how these recipes chain after pretraining.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from aistack.kinds.pretrain import CHECKPOINTS, SPEED_KEYS, DataConfig, ModelConfig, ParallelConfig, TrainConfig, estimate
from aistack.kinds.sft import ChatDataConfig, FinetuneCheckpointConfig
from aistack.recipe.kinds import JobSpec, KindSpec, single_node
from aistack.model.layout import check_layout
from aistack.recipe.errors import RecipeError
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Recipe, StrictModel, TaskCount


class TeacherConfig(StrictModel):
    checkpoint: str = Field(description="the teacher's aistack checkpoint (dir, or a parent with `latest`; any TP/PP layout)")
    model: ModelConfig = Field(description="the teacher's architecture (its pretraining recipe's model block)")
    tokenizer: str | None = Field(default=None, description="the teacher's tokenizer.json: checked against the student's")


class LogitConfig(StrictModel):
    source: Literal["online", "offline"] = "online"
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the KL term; 1 - alpha on cross-entropy")
    temperature: float = Field(default=2.0, gt=0)
    top_k: int = Field(default=32, ge=1, description="offline: logits kept per token")
    online_top_k: bool = Field(default=False, description="online: truncate the teacher to top_k too (the offline loss, exactly)")
    shards: TaskCount = Field(default=1, description="offline: array tasks writing the store")
    block: int = Field(default=64, ge=1, description="offline: sequences per zarr chunk (the unit of commit)")
    store: str | None = Field(default=None, description="offline: the zarr store; null = teacher_logits.zarr in the run directory")


class SamplingConfig(StrictModel):
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0


class SequenceConfig(StrictModel):
    prompts: list[str] = Field(default_factory=list,
                               description="jsonl/parquet: {messages: [...]} (a trailing assistant turn is dropped) or {prompt: str}")
    shards: TaskCount = Field(default=1, description="array tasks generating answers")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    tokenizer: str = Field(description="tokenizer (with chat template) shared by teacher and student")
    chat_template: Literal["auto", "tokenizer", "default"] = "auto"
    packing: Literal["pack", "pad"] = "pack"
    valid_fraction: float = Field(default=0.1, gt=0, lt=1)

    @property
    def train(self) -> list[str]:  # read as an SFT data block whose records come from generation
        return []

    @property
    def valid(self) -> list[str]:
        return []


class DistillRecipe(Recipe):
    kind: Literal["distill"] = "distill"
    method: Literal["logit", "sequence"] = "logit"
    teacher: TeacherConfig
    model: ModelConfig = Field(default_factory=ModelConfig, description="the student")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    data: DataConfig = Field(default_factory=DataConfig, description="method logit: the corpus both models read")
    chat: ChatDataConfig | None = Field(default=None, description="method logit, instead of data: chat records both models "
                                        "read, the loss on assistant tokens only (teacher online)")
    logit: LogitConfig = Field(default_factory=LogitConfig)
    sequence: SequenceConfig | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: FinetuneCheckpointConfig = Field(default_factory=FinetuneCheckpointConfig)

    NON_IDENTITY_KEYS: ClassVar[tuple[str, ...]] = (
        "parallel.tensor", "parallel.pipeline", "parallel.virtual_pipeline", "parallel.sequence_parallel",
        "parallel.distributed_optimizer", "parallel.recompute", "checkpoint.every", "checkpoint.keep", "train.log_every",
        "logit.shards", "data.num_workers", *SPEED_KEYS,
    )

    @model_validator(mode="after")
    def _method_inputs(self):
        if self.method == "logit":
            if bool(self.data.paths) == (self.chat is not None):
                raise ValueError("method logit needs one of data.paths (a pretraining corpus) and chat (chat records): "
                                 "what teacher and student read")
            if self.chat is not None and self.logit.source == "offline":
                raise ValueError("logit.source offline stores the teacher's top-k for a pretraining corpus (data.paths); "
                                 "with chat records the teacher runs online (logit.online_top_k=true gives the top-k loss)")
            if self.teacher.model.seq_length != self.model.seq_length:
                raise ValueError(f"teacher.model.seq_length {self.teacher.model.seq_length} != model.seq_length "
                                 f"{self.model.seq_length}: both read the same sequences")
            if self.logit.source == "offline" and self.logit.top_k > (self.model.vocab_size or self.logit.top_k):
                raise ValueError(f"logit.top_k {self.logit.top_k} exceeds model.vocab_size {self.model.vocab_size}")
        elif self.chat is not None:
            raise ValueError("chat is read by method logit; method sequence finetunes on the teacher's answers to "
                             "sequence.prompts")
        elif self.sequence is None or not self.sequence.prompts:
            raise ValueError("method sequence needs sequence.prompts (and sequence.tokenizer)")
        return self


def plan(loaded: LoadedRecipe) -> list[JobSpec]:
    """The teacher's work as an array over shards, then the student's training job.

    logit, online    train
    logit, offline   teacher_logits[logit.shards] -> train       (top-k logits in a zarr store)
    sequence         generate[sequence.shards] -> train          (answers as chat records, then SFT)
    """
    recipe = loaded.recipe
    check_layout(loaded.recipe, loaded.path)  # TP x PP x DP must divide ranks, heads, layers, batch
    teacher = single_node(recipe.resources, gpus=True)  # the teacher alone (TP=PP=1) per shard
    if recipe.method == "sequence":
        return [
            JobSpec("generate", "distill_generate", recipe.sequence.shards, teacher),
            JobSpec("train", "distill_sft", 1, recipe.resources, depends_on=("generate",)),
        ]
    teacher_vocab, student_vocab = recipe.teacher.model.vocab_size, recipe.model.vocab_size
    if teacher_vocab and student_vocab and teacher_vocab != student_vocab:
        raise RecipeError.single(str(loaded.path), "teacher.model.vocab_size", teacher_vocab,
                                 f"the student's vocabulary size {student_vocab} (model.vocab_size): logit distillation "
                                 "needs teacher and student to share one vocabulary")
    if recipe.logit.source == "online":
        return [JobSpec("train", "distill_train", 1, recipe.resources)]
    return [
        JobSpec("teacher_logits", "distill_logits", recipe.logit.shards, teacher),
        JobSpec("train", "distill_train", 1, recipe.resources, depends_on=("teacher_logits",)),
    ]


SPEC = KindSpec("distill", DistillRecipe, plan, outputs={"output": CHECKPOINTS}, report="training", estimate=estimate)
