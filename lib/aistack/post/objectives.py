"""Post-training objectives for the training loop (aistack.model.train.Objective):

SFTObjective     chat records, assistant-only cross-entropy, packed or padded rows
DistillObjective pretraining data; KD loss against a frozen teacher that runs in the same
                 process (online) or against its top-k logits read from a zarr store (offline)

In evaluation (model.eval()) every objective reports plain next-token cross-entropy, so
validation losses compare across pretraining, SFT and distillation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from aistack.model import checkpoint, gpt, nemo
from aistack.model.train import Objective, lm_forward_step
from aistack.post.chat import ChatTokenizer, load_chat_tokenizer
from aistack.post.distill_loss import KDLoss, gather_vocab, topk
from aistack.post.sft_data import build_sft_readers
from aistack.post.topk_store import TopKStore, sequence_key


class SFTObjective(Objective):
    def __init__(self, data_cfg: Any, train_files: list[Path] | None = None):
        self.data_cfg = data_cfg  # ChatDataConfig-like: tokenizer, chat_template, packing, valid, valid_fraction
        self.train_files = train_files  # sequence-level distillation: the generated records
        self.stats: dict[str, Any] = {}

    def vocab_size(self, recipe: Any) -> int:
        self.chat: ChatTokenizer = load_chat_tokenizer(self.data_cfg.tokenizer, self.data_cfg.chat_template)
        if recipe.model.vocab_size and recipe.model.vocab_size < self.chat.vocab_size:
            raise ValueError(f"model.vocab_size {recipe.model.vocab_size} is smaller than the tokenizer's {self.chat.vocab_size} "
                             f"({self.data_cfg.tokenizer})")
        return recipe.model.vocab_size or self.chat.vocab_size

    def readers(self, recipe: Any, layout: Any, ctx: Any):
        t = recipe.train
        train, valid, self.stats = build_sft_readers(self.data_cfg, self.chat, recipe.model.seq_length, t.seed,
                                                     t.global_batch_size, t.micro_batch_size, layout.dp, layout.dp_rank,
                                                     train_files=self.train_files)
        if layout.rank == 0:
            print(f"sft data: {self.stats}", flush=True)
        return train, valid

    def summary(self) -> dict[str, Any]:
        return {"data": self.stats}


class _WithTeacherTopK:
    """A pretraining BatchReader whose batches also carry the teacher's top-k for each sample."""

    def __init__(self, reader: Any, store: Any):
        self.reader, self.store = reader, store

    @property
    def num_microbatches(self) -> int:
        return self.reader.num_microbatches

    def microbatches(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        for indices, batch in zip(self.reader.sample_indices(step), self.reader.microbatches(step)):
            self.store.check_data(indices, [sequence_key(tokens) for tokens in batch["tokens"]])
            ids, values = self.store.read(indices)
            yield {**batch, "teacher_ids": torch.from_numpy(ids), "teacher_values": torch.from_numpy(values)}


class DistillObjective(Objective):
    """Logit distillation on the recipe's pretraining data (`data:` block, as in pretrain), or
    on its chat records (`chat:` block, read as SFT reads them: assistant tokens carry the loss)."""

    metric_keys = ("ce", "kl")

    def __init__(self, store_path: Path | None = None):
        self.store_path = store_path  # offline: the teacher's top-k store
        self.teacher = None
        self.chat_data: SFTObjective | None = None  # chat records: SFT's batches

    def vocab_size(self, recipe: Any) -> int:
        if getattr(recipe, "chat", None) is not None:
            self.chat_data = SFTObjective(recipe.chat)
            vocab = self.chat_data.vocab_size(recipe)
        else:
            vocab = super().vocab_size(recipe)
        check_shared_vocab(recipe, vocab)
        self.vocab = vocab
        self.loss = KDLoss(recipe.logit.alpha, recipe.logit.temperature)
        self.online_top_k = recipe.logit.top_k if recipe.logit.online_top_k else None
        return vocab

    def setup(self, recipe: Any, layout: Any, padded_vocab: int) -> None:
        if recipe.logit.source == "online":
            if layout.pp > 1:
                raise ValueError("online distillation runs the teacher beside each student rank: it needs parallel.pipeline=1 "
                                 "(use logit.source=offline with pipeline parallelism)")
            self.teacher = load_teacher(recipe, layout.tp)

    def readers(self, recipe: Any, layout: Any, ctx: Any):
        if self.chat_data is not None:
            return self.chat_data.readers(recipe, layout, ctx)
        train, valid = super().readers(recipe, layout, ctx)
        if recipe.logit.source == "offline":
            store = TopKStore(self.store_path)
            check_store(store, recipe, self.vocab)
            train = _WithTeacherTopK(train, store)
        return train, valid

    def forward_step(self, data_iterator: Iterator, model):
        if not model.training:  # validation: plain cross-entropy, as pretraining reports it
            return lm_forward_step(data_iterator, model)
        batch = {k: v.to(_device()) for k, v in next(data_iterator).items()}
        mask = batch.get("attention_mask")  # packed chat records: each attends within its own
        logits = model(batch["tokens"], batch["position_ids"], attention_mask=mask)  # [b, s, V/tp]
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = gather_vocab(self.teacher(batch["tokens"], batch["position_ids"], attention_mask=mask))
                if self.online_top_k:  # what the offline store would hold: top-k ids, float16 values
                    batch["teacher_ids"], batch["teacher_values"] = topk(teacher_logits, self.online_top_k, self.vocab)
                    teacher_logits = None

        def loss_func(output):
            loss, parts = self.loss(gather_vocab(output), batch["labels"], batch["loss_mask"], self.vocab,
                                    teacher_logits=teacher_logits, teacher_ids=batch.get("teacher_ids"),
                                    teacher_values=batch.get("teacher_values"))
            return loss, {"loss": loss.detach().clone(), **{k: v.detach().clone() for k, v in parts.items()}}

        return logits, loss_func

    def summary(self) -> dict[str, Any]:
        return {"distill": {"source": "online" if self.teacher is not None else "offline",
                            "store": str(self.store_path) if self.store_path else None,
                            **({"data": self.chat_data.stats} if self.chat_data is not None else {})}}


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


# --- teacher --------------------------------------------------------------------------


def load_teacher(recipe: Any, tensor: int):
    """The frozen teacher at this rank's TP size (its checkpoint reshards from any layout), PP=1."""
    return load_frozen(recipe.teacher.model, recipe.teacher.checkpoint, teacher_vocab_size(recipe), tensor,
                       gpt.resolve_precision(recipe.train.precision), key="teacher.checkpoint")


def load_frozen(model_cfg: Any, path: str | Path, vocab_size: int, tensor: int = 1, precision: str = "fp32",
                key: str = "checkpoint"):
    """A GPT (one stage, TP=`tensor`) with a checkpoint's weights, in eval mode, without gradients.
    Megatron's parallel state must be initialised with this TP size and PP=1."""
    source = checkpoint.latest(path)
    if source is None:
        raise FileNotFoundError(f"{key}: no checkpoint at {path}")
    if nemo.is_nemo_checkpoint(source):
        nemo.check_model(source, model_cfg)
    model = checkpoint.load_model(source, model_cfg, vocab_size, tensor, precision)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def teacher_vocab_size(recipe: Any) -> int:
    tcfg = recipe.teacher
    if tcfg.model.vocab_size:
        return tcfg.model.vocab_size
    if tcfg.tokenizer:
        from aistack.model.dataset import Tokenizer

        return Tokenizer.from_file(tcfg.tokenizer).vocab_size
    return recipe.model.vocab_size or 0


def check_shared_vocab(recipe: Any, student_vocab: int) -> None:
    """Logit distillation compares distributions token by token: one vocabulary for both."""
    teacher_vocab = teacher_vocab_size(recipe)
    chat = getattr(recipe, "chat", None)
    t_tok, s_tok = recipe.teacher.tokenizer, chat.tokenizer if chat is not None else recipe.data.tokenizer
    if s_tok and Path(s_tok).is_dir():  # a chat tokenizer given as its folder
        s_tok = str(Path(s_tok) / "tokenizer.json")
    if t_tok and s_tok and Path(t_tok).resolve() != Path(s_tok).resolve():
        from tokenizers import Tokenizer

        if Tokenizer.from_file(t_tok).get_vocab(with_added_tokens=True) != Tokenizer.from_file(s_tok).get_vocab(with_added_tokens=True):
            raise ValueError(f"teacher.tokenizer {t_tok} and the student's tokenizer {s_tok} have different vocabularies: "
                             "logit distillation needs teacher and student to share one (use method: sequence otherwise)")
    if teacher_vocab != student_vocab:
        raise ValueError(f"teacher vocabulary ({teacher_vocab} tokens, teacher.model.vocab_size) differs from the student's "
                         f"({student_vocab}, model.vocab_size / data.tokenizer): logit distillation needs a shared vocabulary")


def check_store(store: Any, recipe: Any, vocab: int) -> None:
    spec = store.spec
    need = recipe.train.steps * recipe.train.global_batch_size
    problems = []
    if spec.vocab_size != vocab:
        problems.append(f"vocab_size {spec.vocab_size} != the student's {vocab}")
    if spec.seq_length != recipe.model.seq_length:
        problems.append(f"seq_length {spec.seq_length} != model.seq_length {recipe.model.seq_length}")
    if spec.num_sequences < need:
        problems.append(f"{spec.num_sequences} sequences < train.steps x train.global_batch_size = {need}")
    if problems:
        raise ValueError(f"top-k store {store.path} does not fit this student: " + "; ".join(problems))
