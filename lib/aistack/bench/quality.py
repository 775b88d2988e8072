"""Quality of a model as FP8 makes it: perplexity on held-out text and one lm-eval task."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F


def read_texts(path: str | Path, max_docs: int) -> list[str]:
    """A .jsonl with a 'text' field per line, or a plain text file (one document per blank-line block)."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    else:
        texts = [block.strip() for block in path.read_text().split("\n\n") if block.strip()]
    if not texts:
        raise ValueError(f"{path}: no text to measure perplexity on")
    return texts[:max_docs]


@torch.inference_mode()
def perplexity(model, tokenizer, texts: list[str], max_len: int, eos_id: int | None) -> dict[str, float]:
    """Token-weighted perplexity: each document is scored from an end-of-text token, in
    windows of at most max_len tokens (a model cannot look further); and bits per byte (every
    token of the document scored, over its UTF-8 bytes: independent of the tokenizer, as
    lm-eval's bits_per_byte)."""
    device = next(model.parameters()).device
    nll, count, size = 0.0, 0, 0
    for text in texts:
        size += len(text.encode("utf-8"))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        seq = ([eos_id] if eos_id is not None else []) + ids
        for start in range(0, len(seq) - 1, max_len):
            window = torch.tensor(seq[start : start + max_len + 1], device=device)[None]
            if window.shape[1] < 2:
                continue
            logits = model(input_ids=window[:, :-1]).logits.float()
            nll += float(F.cross_entropy(logits[0], window[0, 1:], reduction="sum"))
            count += window.shape[1] - 1
    mean = nll / max(count, 1)
    return {"nll": mean, "perplexity": math.exp(mean), "bits_per_byte": nll / math.log(2) / max(size, 1), "tokens": count}


def task_score(model, tokenizer, task: str, limit: int | None, batch_size: int = 16, seed: int = 1234,
               data_tasks: dict[str, Any] | None = None, chat_tokenizer: Path | None = None) -> dict[str, float]:
    """One lm-eval task on an in-memory transformers model (lm-eval's `hf` model). A task of
    `data_tasks` is built as the evaluation builds it (aistack.eval.data_tasks: a chat task's
    prompts rendered with `chat_tokenizer`'s chat template)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from aistack.eval import tasks as task_lib
    from aistack.eval.evaluator import metrics_of

    import tempfile

    spec = (data_tasks or {}).get(task)
    with tempfile.TemporaryDirectory() as work:
        folders = []
        if spec is not None:
            from aistack.eval.data_tasks import write_data_tasks

            folders.append(write_data_tasks({task: spec}, Path(work) / "data_tasks", chat_tokenizer))
        manager = task_lib.task_manager(folders, work, [task])
        task_lib.load_task(task, manager)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=model.config.max_position_embeddings
                  if hasattr(model.config, "max_position_embeddings") else None)
        with _stop_at_end_of_turn(model, spec, chat_tokenizer):
            out = simple_evaluate(lm, tasks=[task], task_manager=manager, limit=limit, log_samples=False, bootstrap_iters=0,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    return metrics_of(out["results"]).get(task, {})


@contextmanager
def _stop_at_end_of_turn(model, spec: Any, chat_tokenizer: Path | None):
    """A chat task stops at the end-of-turn token, a special token: HFLM decodes its answers
    skipping special tokens, so its stop string never shows in the text, and a row of a batch
    that ended its turn would go on generating until the whole batch stops. As the evaluation's
    model (aistack.eval.lm_model) catches it by id, the end-of-turn id is made an end of
    sequence of `generate` for the task: the row stops there (padded after it, and the padding
    is skipped on decoding)."""
    config = getattr(model, "generation_config", None)
    if spec is None or spec.type != "chat" or config is None or chat_tokenizer is None:
        yield
        return
    from aistack.post.chat import load_chat_tokenizer

    before = config.eos_token_id
    ids = [before] if isinstance(before, int) else list(before or [])
    config.eos_token_id = [*ids, load_chat_tokenizer(chat_tokenizer).end_of_turn_id]
    try:
        yield
    finally:
        config.eos_token_id = before


def deltas(bf16: dict[str, float], fp8: dict[str, float]) -> dict[str, float]:
    return {k: fp8[k] - bf16[k] for k in bf16 if k in fp8 and isinstance(bf16[k], (int, float))}


def quality_of(models: dict[str, Any], tokenizer, cfg: Any, max_len: int, eos_id: int | None,
               chat_tokenizer: Path | None = None, prepare: Callable[[str], None] | None = None) -> dict[str, Any]:
    """{name: {perplexity..., task metrics}} and each FP8 entry's deltas from BF16. Names are
    'bf16', and 'fp8' or one 'fp8_<mode>' per FP8 mode (weight_only, w8a8) when the FP8 model
    runs several: `prepare(name)` is called before each is scored (it switches that model's
    mode). With several modes, 'fp8' and 'delta_fp8_minus_bf16' are the one whose perplexity
    moved most ('fp8_mode' names it): a quality goal then holds for every mode.
    `chat_tokenizer`: the tokenizer.json whose chat template renders a chat data task's prompts."""
    from aistack.eval.tasks import project_tasks

    text = cfg.text or str(project_tasks() / "tinylang" / "ppl.jsonl")
    texts = read_texts(text, cfg.max_docs)
    out: dict[str, Any] = {"text": text, "task": cfg.task}
    for name, model in models.items():
        if prepare is not None:
            prepare(name)
        row = {f"text_{k}": v for k, v in perplexity(model, tokenizer, texts, max_len, eos_id).items()}
        if cfg.task:
            row.update({f"{cfg.task}/{k}": v for k, v in task_score(model, tokenizer, cfg.task, cfg.limit, data_tasks=cfg.data_tasks,
                                                                   chat_tokenizer=chat_tokenizer).items()})
        out[name] = row
    if "bf16" not in out:
        return out
    fp8_names = [n for n in models if n == "fp8" or n.startswith("fp8_")]
    for name in fp8_names:
        delta = deltas(out["bf16"], out[name])
        delta["text_perplexity_rel"] = out[name]["text_perplexity"] / out["bf16"]["text_perplexity"] - 1
        out[f"delta_{name}_minus_bf16"] = delta
    if fp8_names and "fp8" not in out:
        worst = max(fp8_names, key=lambda n: abs(out[f"delta_{n}_minus_bf16"]["text_perplexity_rel"]))
        out["fp8_mode"] = worst.removeprefix("fp8_")
        out["fp8"], out["delta_fp8_minus_bf16"] = out[worst], out[f"delta_{worst}_minus_bf16"]
    return out
