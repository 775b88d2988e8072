"""One (checkpoint, task) pair of an evaluation sweep: load the model, run lm-eval, keep the metrics."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from aistack.eval import tasks as task_lib
from aistack.eval.source import UNTRAINED, Source, describe, untrained


def source_of(cfg: Any, checkpoint: str) -> Source:
    """`checkpoint` is a pairs() entry: a checkpoint, or UNTRAINED + a checkpoint (its run's fresh init)."""
    model = cfg.model.model_dump() if cfg.model is not None else None
    if checkpoint.startswith(UNTRAINED):
        return untrained(describe(checkpoint[len(UNTRAINED):], model=model, tokenizer=cfg.tokenizer))
    return describe(checkpoint, model=model, tokenizer=cfg.tokenizer)


def make_lm(cfg: Any, source: Source, work_dir: Path):
    """lm-eval model for this backend: the registered aistack model, or lm-eval's `hf` on an export."""
    if source.format == "hf" or cfg.backend == "hf":
        from lm_eval.models.huggingface import HFLM

        folder = source.path if source.format == "hf" else export_for_hf(source, work_dir / "hf")
        return HFLM(pretrained=str(folder), tokenizer=str(folder), device=_device(), dtype=cfg.dtype, batch_size=cfg.batch_size,
                    max_length=source.model_cfg.seq_length if source.model_cfg else None)
    from aistack.eval.lm_model import AistackLM

    return AistackLM(source=source, batch_size=cfg.batch_size, dtype=cfg.dtype)


def export_for_hf(source: Source, out_dir: Path) -> Path:
    """The checkpoint as a transformers folder (model.export_hf), written once per directory."""
    from aistack.model.export_hf import export_hf

    from aistack.eval.source import load_gpt
    from aistack.model.dataset import Tokenizer

    if (out_dir / "config.json").exists():
        return out_dir
    model = load_gpt(source)  # (a fresh init when source.init_seed is set)
    vocab = source.model_cfg.vocab_size or Tokenizer.from_file(source.tokenizer).vocab_size
    export_hf(model.state_dict(), source.model_cfg, vocab, out_dir, tokenizer_json=str(source.tokenizer) if source.tokenizer else None)
    (out_dir / "aistack_export.json").write_text(json.dumps({"checkpoint": str(source.path), "step": source.step}))
    return out_dir


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_pair(cfg: Any, checkpoint: str, task: str, work_dir: str | Path) -> dict[str, Any]:
    """Run one lm-eval task on one checkpoint; returns a JSON-ready row (also written to result.json)."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    task_lib.set_offline(cfg.offline)  # before lm-eval (and datasets) touch a dataset
    os.environ.setdefault("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap, in this process
    from lm_eval import simple_evaluate

    start = time.time()
    source = source_of(cfg, checkpoint)
    folders = list(cfg.task_folders)
    if task in cfg.data_tasks:  # built from a local file, with this checkpoint's chat template
        from aistack.eval.data_tasks import write_data_tasks

        folders.append(write_data_tasks({task: cfg.data_tasks[task]}, work / "data_tasks", source.tokenizer))
    manager = task_lib.task_manager(folders, work, [task], cfg.code_allowed)
    task_lib.load_task(task, manager)  # fails fast, naming the dataset, when it is missing
    lm = make_lm(cfg, source, work)
    out = simple_evaluate(lm, tasks=[task], task_manager=manager,
                          num_fewshot=cfg.num_fewshot, limit=_limit(cfg.limit), log_samples=False,
                          bootstrap_iters=STDERR_BOOTSTRAP_ITERS,
                          random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
                          fewshot_random_seed=cfg.seed)
    row = {
        # an untrained baseline keeps its marker: the tables label it as such
        "checkpoint": (UNTRAINED if source.init_seed is not None else "") + str(source.path),
        "run": source.run, "step": source.step, "task": task,
        "backend": "hf" if source.format == "hf" else cfg.backend,
        "metrics": metrics_of(out["results"]), "samples": {k: v.get("effective", v.get("original"))
                                                          for k, v in (out.get("n-samples") or {}).items()},
        "seconds": round(time.time() - start, 3),
    }
    (work / "result.json").write_text(json.dumps(row, indent=2, sort_keys=True))
    return row


# lm-eval gives a mean's standard error in closed form once bootstrap_iters > 0, and bootstraps
# only the few metrics it lists (median, F1, BLEU...): in this process (DISABLE_MULTIPROC), not
# in a pool of one worker per core of the node.
STDERR_BOOTSTRAP_ITERS = 1000


def _limit(limit: float | None) -> int | float | None:
    if limit is None:
        return None
    return int(limit) if limit >= 1 else limit


def metrics_of(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """lm-eval's results -> {task: {metric: value}}: 'acc,none' -> 'acc'; another filter is kept
    as 'metric/filter'; a standard error as 'metric_stderr' (lm-eval's closed form for means:
    exact match, accuracy; none for perplexities); non-numbers ('N/A') are dropped."""
    out: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        metrics = {}
        for key, value in values.items():
            if "," not in key:
                continue
            metric, filt = key.split(",", 1)
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                metrics[metric if filt == "none" else f"{metric}/{filt}"] = number
        out[task] = metrics
    return out
