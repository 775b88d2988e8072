"""`kind: tokenize`, last job: the shards' datasets merged, in shard order, into output/tokenize/data.bin/.idx."""

from __future__ import annotations

from aistack.data.megatron import merge, open_dataset
from aistack.data.run_paths import output_dir
from aistack.data.tokenize import load_tokenizer, merge_held_out
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.tokenize
    out = output_dir(ctx.run.path, "tokenize")
    shards = sorted((out / "shards").glob("*.idx"))
    prefixes = [p.with_suffix("") for p in shards]
    tok, _ = load_tokenizer(out / "tokenizer.json", cfg.tokenizer.eos_token)
    prefix = merge(prefixes, out / "data", tok.get_vocab_size())
    dataset = open_dataset(prefix)
    tokens = int(dataset.sequence_lengths.sum())
    result = {"prefix": str(prefix), "documents_in": len(dataset), "documents_out": len(dataset), "tokens": tokens,
              "bytes_out": (out / "data.bin").stat().st_size, "shards": len(prefixes)}
    if cfg.heldout_fraction > 0:
        result["heldout_documents"] = merge_held_out(sorted((out / "heldout").glob("*.jsonl")), out / "heldout.jsonl")
    ctx.log(0, {k: v for k, v in result.items() if k != "prefix"})
    return result
