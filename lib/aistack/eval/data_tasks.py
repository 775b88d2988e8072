"""lm-eval tasks built at run time from a local jsonl file (`evaluate.data_tasks`).

    evaluate:
      tasks: [heldout_ppl, reverse_words]
      data_tasks:
        heldout_ppl: {type: perplexity, data: runs/tokenize-abc/output/tokenize/heldout.jsonl}
        reverse_words: {type: chat, data: data/reverse-task/eval.jsonl, max_gen_toks: 12}

perplexity  documents ({"text": ...}) scored with loglikelihood_rolling: word perplexity,
            byte perplexity, bits per byte (held-out documents of the pipeline's own crawl)
chat        conversations ({"messages": [..., {"role": "assistant", ...}]}): the conversation up to
            its last assistant turn, rendered with the checkpoint's chat template, is the prompt
            of a greedy `generate_until` (stopping at the end-of-turn token); the last assistant
            turn is the target, scored by exact match (leading/trailing spaces ignored)

Each task is an ordinary lm-eval task folder (a YAML and its data, absolute paths) written
into the evaluation task's own directory, so it runs like the project's shipped tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

PERPLEXITY_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def _records(path: Path, max_docs: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no records to build an evaluation task from")
    return rows[:max_docs] if max_docs else rows


def _write(folder: Path, name: str, rows: list[dict], spec: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
           "test_split": "test", **spec, "metadata": {"version": 1.0}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def perplexity_task(name: str, data: Path, out_dir: Path, max_docs: int | None = None) -> Path:
    rows = []
    for i, r in enumerate(_records(data, max_docs)):
        if not isinstance(r.get("text"), str):
            raise ValueError(f"{data}: record {i} has no 'text' string (a perplexity task scores documents)")
        rows.append({"text": r["text"]})
    return _write(out_dir / name, name, rows, {
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m} for m in PERPLEXITY_METRICS]})


def chat_task(name: str, data: Path, out_dir: Path, tokenizer: Path, max_docs: int | None = None,
              max_gen_toks: int = 32) -> Path:
    from aistack.post.chat import load_chat_tokenizer, validate_messages

    chat = load_chat_tokenizer(tokenizer)
    stop = chat.tokenizer.id_to_token(chat.end_of_turn_id)
    rows = []
    for i, r in enumerate(_records(data, max_docs)):
        messages = r.get("messages")
        validate_messages(messages, f"{data} record {i}")
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise ValueError(f"{data}: record {i} does not end with an assistant turn (its target)")
        rows.append({"context": chat.render(messages[:-1], add_generation_prompt=True), "target": messages[-1]["content"]})
    return _write(out_dir / name, name, rows, {
        "output_type": "generate_until", "doc_to_text": "{{context}}", "doc_to_target": "{{target}}",
        "generation_kwargs": {"until": [stop], "max_gen_toks": max_gen_toks, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "regexes_to_ignore": ["^\\s+", "\\s+$"]}]})


def write_data_tasks(specs: dict[str, Any], out_dir: str | Path, tokenizer: Path | None) -> Path:
    """Every configured data task as a task folder under out_dir (rewritten each time)."""
    out = Path(out_dir)
    for name, spec in specs.items():
        if spec.type == "perplexity":
            perplexity_task(name, Path(spec.data), out, spec.max_docs)
        else:
            if tokenizer is None:
                raise ValueError(f"data task {name}: the checkpoint has no tokenizer to render its chat prompts with")
            chat_task(name, Path(spec.data), out, tokenizer, spec.max_docs, spec.max_gen_toks)
    return out
