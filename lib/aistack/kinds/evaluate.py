"""`kind: evaluate`: lm-evaluation-harness over checkpoints x tasks, as one Slurm array.

    evaluate:
      checkpoints: [runs/gpt-tiny-abc]   # pretrain runs, checkpoints roots, step_* dirs or HF folders
      all_steps: true                    # every saved step of each (metrics vs training step)
      tasks: [tinylang_mc, tinylang_ppl] # lm-eval task names: the project's local ones or any lm-eval task
      data_tasks:                        # tasks built at run time from local jsonl files (aistack.eval.data_tasks)
        heldout_ppl: {type: perplexity, data: runs/tokenize-abc/output/tokenize/heldout.jsonl}
      untrained: [runs/gpt-tiny-abc]     # also each run's model untrained (a fresh init with its seed, step 0)

Checkpoints are resolved to their step directories when the recipe is validated: the
run's identity (and its directory) names exactly the weights it evaluates, and every
array task reads the same list from the run's recipe.yaml, even while training goes on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from aistack.eval.tasks import code_in
from aistack.model.nemo import is_nemo_checkpoint
from aistack.recipe.deferred import defer_missing, is_deferred
from aistack.kinds.pretrain import ModelConfig
from aistack.recipe.kinds import JobSpec, KindSpec, single_node
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Recipe, StrictModel

_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.*:-]{0,127}$")
_STEP_RE = re.compile(r"^step_(\d{6,})$")


def _task_name(value: str) -> str:
    if not _TASK_RE.fullmatch(value):
        raise ValueError("an lm-eval task name (letters, digits and '_.-:*')")
    return value


def _existing(kind: str):
    def check(value: str) -> str:
        path = Path(value).expanduser()
        ok = path.is_dir() if kind == "dir" else path.is_file()
        if not ok and not is_deferred(value) and not defer_missing(value):
            raise ValueError(f"an existing {'directory' if kind == 'dir' else 'file'} (nothing at {path.absolute()})")
        return str(path.absolute())

    return check


TaskName = Annotated[str, AfterValidator(_task_name)]
ExistingDir = Annotated[str, AfterValidator(_existing("dir"))]
ExistingFile = Annotated[str, AfterValidator(_existing("file"))]


def expand_checkpoints(spec: str, all_steps: bool) -> list[str]:
    """One `checkpoints` entry -> absolute step directories (or the HF folder itself).

    Accepts a step_* directory, a checkpoints root (`latest`), a pretrain task or run
    directory (searched for */checkpoints/latest), a Hugging Face model folder or a NeMo 2
    checkpoint."""
    path = Path(spec).expanduser().absolute()
    if is_deferred(spec) or defer_missing(spec):
        # An earlier pipeline stage writes it: its latest checkpoint is found when the job runs.
        if all_steps:
            raise ValueError(f"all_steps: false for {path}: an earlier stage writes it, so its steps are not known yet")
        return [str(path)]
    if not path.exists():
        raise ValueError(f"a checkpoint, checkpoints root, pretrain run or HF folder (nothing at {path})")
    if (path / "metadata.json").exists() or (path / "config.json").exists() or is_nemo_checkpoint(path):
        return [str(path)]
    roots = [path] if (path / "latest").exists() else sorted(p for p in path.glob("**/checkpoints") if (p / "latest").exists())
    if not roots:
        raise ValueError(f"a directory holding checkpoints (no step_*/metadata.json, 'latest' or */checkpoints/latest in {path})")
    if len(roots) > 1:
        raise ValueError(f"one checkpoints root ({path} holds several: {', '.join(str(r) for r in roots)})")
    root = roots[0]
    if all_steps:
        steps = sorted(p for p in root.iterdir() if _STEP_RE.match(p.name) and (p / "metadata.json").exists())
        return [str(p) for p in steps]
    latest = root / (root / "latest").read_text().strip()
    if not (latest / "metadata.json").exists():
        raise ValueError(f"a complete checkpoint ({root / 'latest'} names {latest.name}, which is incomplete)")
    return [str(latest)]


class DataTask(StrictModel):
    """An lm-eval task built when the job runs from a local jsonl (aistack.eval.data_tasks)."""

    type: Literal["perplexity", "chat"] = Field(description="perplexity: documents {text}; chat: conversations {messages}, "
                                                            "the last assistant turn generated and exact-matched")
    data: ExistingFile = Field(description="the jsonl file (an earlier stage's output in a pipeline)")
    max_docs: int | None = Field(default=None, ge=1, description="the first N records; null: all")
    max_gen_toks: int = Field(default=32, ge=1, description="chat: tokens generated at most")


class TaskFolder(StrictModel):
    path: ExistingDir
    allow_code: bool = Field(default=False, description="let lm-eval import this folder's Python (`.py` files, `!function` "
                                                        "in its YAML): only for a folder whose code you trust")


class EvaluateConfig(StrictModel):
    all_steps: bool = Field(default=False, description="every saved step of each checkpoints root, not only the latest")
    checkpoints: list[str] = Field(min_length=1, description="pretrain runs, checkpoints roots, step_* dirs or HF model folders")
    tasks: list[TaskName] = Field(min_length=1, description="lm-eval task (or group) names")
    data_tasks: dict[TaskName, DataTask] = Field(default_factory=dict, description="tasks built from local jsonl files, by name")
    task_paths: list[ExistingDir | TaskFolder] = Field(
        default_factory=list, description="more folders of lm-eval task YAMLs (recipes/eval/tasks is always included): a path, "
                                          "or {path, allow_code: true} for a folder with Python that lm-eval may import")
    backend: Literal["aistack", "hf"] = Field(default="aistack", description="aistack: the registered megatron model; hf: export to HF, lm-eval's `hf` model")
    untrained: list[str] = Field(default_factory=list, description="runs (or their checkpoints) whose model is also evaluated "
                                 "untrained: the run's model block freshly initialised with its train.seed, as step 0")
    model: ModelConfig | None = Field(default=None, description="null: the model block of the pretrain run the checkpoint is in")
    tokenizer: ExistingFile | None = Field(default=None, description="tokenizer.json; null: the pretrain run's data.tokenizer")
    batch_size: int = Field(default=8, ge=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: float | None = Field(default=None, gt=0, description="documents per task (int) or fraction (<1)")
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 1234
    offline: bool = Field(default=True, description="HF_HUB_OFFLINE/HF_DATASETS_OFFLINE in the jobs: uncached data fails fast")

    @field_validator("checkpoints")
    @classmethod
    def _resolve(cls, specs: list[str], info: ValidationInfo) -> list[str]:
        resolved: list[str] = []
        for spec in specs:
            resolved += [p for p in expand_checkpoints(spec, info.data.get("all_steps", False)) if p not in resolved]
        if not resolved:
            raise ValueError(f"checkpoints holding at least one complete checkpoint ({specs} hold none)")
        return resolved

    @field_validator("untrained")
    @classmethod
    def _resolve_untrained(cls, specs: list[str]) -> list[str]:
        return [expand_checkpoints(spec, all_steps=False)[0] for spec in specs]

    def pairs(self) -> list[tuple[str, str]]:
        """Array task i -> (checkpoint, task): checkpoint-major, so one node reuses a loaded model's files;
        the untrained baselines first, as UNTRAINED + a checkpoint of their run."""
        from aistack.eval.source import UNTRAINED

        models = [UNTRAINED + c for c in self.untrained] + self.checkpoints
        return [(c, t) for c in models for t in self.tasks]

    @field_validator("task_paths")
    @classmethod
    def _task_folders_are_data(cls, folders: list) -> list:
        for folder in folders:
            path, allowed = (folder, False) if isinstance(folder, str) else (folder.path, folder.allow_code)
            if not allowed and not is_deferred(path) and (code := code_in(path)):
                raise ValueError(f"a folder of task YAMLs only: {', '.join(code[:3])} would make lm-eval import and run "
                                 f"Python from it; if you trust it, write {{path: {path}, allow_code: true}}")
        return folders

    @property
    def task_folders(self) -> list[str]:
        return [f if isinstance(f, str) else f.path for f in self.task_paths]

    @property
    def code_allowed(self) -> list[str]:
        return [f.path for f in self.task_paths if not isinstance(f, str) and f.allow_code]


class EvaluateRecipe(Recipe):
    kind: Literal["evaluate"] = "evaluate"
    evaluate: EvaluateConfig

    NON_IDENTITY_KEYS = ("evaluate.batch_size",)


def plan(loaded: LoadedRecipe) -> list[JobSpec]:
    """eval[checkpoints x tasks] (one Slurm array) -> gather (afterok).

    Task i evaluates pair i of EvaluateConfig.pairs() (checkpoint-major); the gather job
    merges every task's metrics into one table and plots each metric against training step.
    """
    recipe = loaded.recipe
    # One process per task: the model is loaded at TP=1 PP=1 whatever layout it was trained with.
    res = recipe.resources.model_copy(update={"nodes": 1, "tasks_per_node": 1})
    return [
        JobSpec("eval", "eval_task", len(recipe.evaluate.pairs()), res),
        JobSpec("gather", "eval_gather", 1, single_node(recipe.resources), depends_on=("eval",)),
    ]


SPEC = KindSpec("evaluate", EvaluateRecipe, plan, outputs={"output": "results.json", "csv": "results.csv"},
                report="evaluation")
