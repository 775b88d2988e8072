"""Sequence-level distillation: the teacher answers prompts; the answers become SFT records.

Prompts are read from sequence.prompts (jsonl/parquet; `{messages: [...]}` whose trailing
assistant turn, if any, is dropped, or `{prompt: str}`), numbered in file order, and task i of
n answers prompts i, i+n, ... Its output, RUN/generated/shard_<i>.jsonl, holds one record per
prompt, `{"prompt_index", "messages": prompt + [{"role": "assistant", "content": answer}]}`,
and is written to a temporary file and renamed: a shard file exists complete or not at all.

Decoding: greedy (sampling.temperature 0) or temperature + nucleus (top_p) sampling with a
seeded generator per prompt, until the end-of-turn token or max_new_tokens. A plain loop that
re-runs the whole sequence for each new token (no KV cache): fine for tiny models and tests,
quadratic in length for real ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from aistack.model import cpu_compat
from aistack.post.chat import ChatTokenizer, load_chat_tokenizer, record_messages
from aistack.post.sft_data import expand_paths, read_records

GENERATED = "generated"


def shard_file(run_path: Path, task_id: int) -> Path:
    return Path(run_path) / GENERATED / f"shard_{task_id:05d}.jsonl"


def generated_files(run_path: Path, shards: int) -> list[Path]:
    files = [shard_file(run_path, i) for i in range(shards)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"generated answers missing (the generate job did not finish): {missing}")
    return files


def read_prompts(patterns: list[str]) -> Iterator[list[dict]]:
    """Each record's conversation without its trailing assistant answer: `messages`, NeMo's
    `conversations` or `input` (its `output`, if any, dropped), or a bare `prompt` string."""
    for record in read_records(expand_paths(patterns, "sequence.prompts")):
        where = record.get("_where", "record")
        if isinstance(record.get("prompt"), str):
            yield [{"role": "user", "content": record["prompt"]}]
            continue
        if "input" in record and "output" not in record:
            record = {**record, "output": ""}
        messages = record_messages(record, where)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise ValueError(f"{where}: no prompt left once the assistant answer is dropped")
        yield messages


@torch.no_grad()
def generate(model, chat: ChatTokenizer, messages: list[dict], max_new_tokens: int, max_length: int,
             temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> str:
    """The model's answer to a conversation (decoded text, end-of-turn excluded)."""
    ids = chat.encode_prompt(messages)[-max_length:]
    prompt_len, stop = len(ids), chat.end_of_turn_id
    vocab = chat.vocab_size
    for _ in range(max_new_tokens):
        window = ids[-max_length:]
        tokens = torch.tensor([window])
        positions = torch.arange(len(window))[None]
        logits = model(tokens, positions, attention_mask=None)[0, -1, :vocab].float()
        token = int(sample(logits, temperature, top_p, generator))
        if token == stop:
            break
        ids.append(token)
    return chat.decode(ids[prompt_len:])


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None) -> int:
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def generate_shard(recipe: Any, run_path: Path, task_id: int, num_tasks: int) -> dict[str, Any]:
    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
    from aistack.post.objectives import load_teacher

    seq = recipe.sequence
    out = shard_file(run_path, task_id)
    if out.exists():  # written atomically: complete
        return {"file": str(out), "records": sum(1 for _ in open(out))}
    chat = load_chat_tokenizer(recipe.teacher.tokenizer or seq.tokenizer, seq.chat_template)
    init_model_parallel(1, 1)
    try:
        with cpu_compat.device_scope():
            set_seeds(recipe.train.seed)
            teacher = load_teacher(recipe, tensor=1)
            records = []
            for index, messages in enumerate(read_prompts(seq.prompts)):
                if index % num_tasks != task_id:
                    continue
                generator = torch.Generator().manual_seed(seq.sampling.seed * 1_000_003 + index)
                answer = generate(teacher, chat, messages, seq.sampling.max_new_tokens, recipe.teacher.model.seq_length,
                                  seq.sampling.temperature, seq.sampling.top_p, generator)
                records.append({"prompt_index": index, "messages": [*messages, {"role": "assistant", "content": answer}]})
    finally:
        destroy_model_parallel()
    write_jsonl_atomic(out, records)
    return {"file": str(out), "records": len(records)}


def write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
