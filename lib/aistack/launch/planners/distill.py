"""distill: the teacher's work as an array over shards, then the student's training job.

logit, online    train
logit, offline   teacher_logits[logit.shards] -> train       (top-k logits in a zarr store)
sequence         generate[sequence.shards] -> train          (answers as chat records, then SFT)
"""

from __future__ import annotations

from aistack.launch.plan import JobSpec, planner
from aistack.launch.planners.sft import check_layout
from aistack.recipe import LoadedRecipe, RecipeError


def _one_rank(loaded: LoadedRecipe):
    """Teacher shards run the teacher alone (TP=PP=1): one rank, one GPU per array task."""
    res = loaded.recipe.resources
    return res.model_copy(update={"nodes": 1, "tasks_per_node": 1, "gpus_per_node": min(res.gpus_per_node, 1)})


@planner("distill")
def plan_distill(loaded: LoadedRecipe) -> list[JobSpec]:
    recipe = loaded.recipe
    check_layout(loaded)
    if recipe.method == "sequence":
        return [
            JobSpec("generate", "distill_generate", recipe.sequence.shards, _one_rank(loaded)),
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
        JobSpec("teacher_logits", "distill_logits", recipe.logit.shards, _one_rank(loaded)),
        JobSpec("train", "distill_train", 1, recipe.resources, depends_on=("teacher_logits",)),
    ]
