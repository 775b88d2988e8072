"""Logit distillation (Hinton et al. 2015), per token:

    loss = alpha * T^2 * KL(p_teacher,T || q_student,T) + (1 - alpha) * CE(student, labels)

p_T is the teacher's softmax at temperature T, over the full vocabulary (online teacher) or
renormalised over its top-k logits (offline store); q_T is the student's, always over the full
vocabulary, read at the teacher's k ids. T^2 keeps the soft-target gradients on the scale of
the hard-target ones when T changes. Both terms are averaged over the loss mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KDLoss:
    alpha: float = 0.5
    temperature: float = 2.0

    def __call__(self, student_logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, vocab_size: int,
                 teacher_logits: torch.Tensor | None = None, teacher_ids: torch.Tensor | None = None,
                 teacher_values: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """student_logits [b, s, V_padded] (the whole vocabulary, gathered over TP); the teacher as
        full logits [b, s, >= vocab_size] or top-k (ids int, values float) [b, s, k]."""
        mask = loss_mask.float()
        count = mask.sum().clamp(min=1)
        logits = student_logits.float()
        # CE over the padded vocabulary, as pretraining's loss: the two are comparable.
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(mask)
        ce = (ce * mask).sum() / count
        if self.alpha == 0:
            return ce, {"ce": ce, "kl": torch.zeros_like(ce)}
        log_q = F.log_softmax(logits[..., :vocab_size] / self.temperature, dim=-1)
        if teacher_logits is not None:
            log_p = F.log_softmax(teacher_logits[..., :vocab_size].float() / self.temperature, dim=-1)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        else:
            log_p = F.log_softmax(teacher_values.float() / self.temperature, dim=-1)
            kl = (log_p.exp() * (log_p - log_q.gather(-1, teacher_ids.long()))).sum(-1)
        kl = (kl * mask).sum() / count
        loss = self.alpha * self.temperature ** 2 * kl + (1 - self.alpha) * ce
        return loss, {"ce": ce, "kl": kl}


def topk(logits: torch.Tensor, k: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int32, values float16) of the k largest logits over the real (unpadded) vocabulary."""
    values, ids = logits[..., :vocab_size].float().topk(k, dim=-1)
    return ids.to(torch.int32), values.to(torch.float16)


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """The full vocabulary on every tensor-parallel rank (logits come vocab-sharded); autograd-aware."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if ps.get_tensor_model_parallel_world_size() == 1:
        return logits
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)
