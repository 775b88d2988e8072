"""`kind: tokenize`, array: this shard's documents -> a Megatron .bin/.idx (EOS after each document)."""

from __future__ import annotations

from aistack.data.readers import make_reader
from aistack.data.run_paths import output_dir
from aistack.data.shard_task import paths_file_for, run_shard_task
from aistack.data.tokenize import HeldOutSplit, MegatronTokenWriter
from aistack.data.inputs import planned_files
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.tokenize
    files = planned_files(ctx.run, cfg.input, shard=(ctx.task_id, ctx.num_tasks))  # fixed when the run was planned
    data_folder, paths_file = paths_file_for(ctx, files)
    tokenizer = output_dir(ctx.run.path, "tokenize") / "tokenizer.json"

    def build(staging):
        i = cfg.input
        split = [HeldOutSplit(cfg.heldout_fraction, str(staging / "heldout" / f"{ctx.task_id:05d}.jsonl"))] \
            if cfg.heldout_fraction > 0 else []
        return [make_reader(i.format, data_folder, paths_file, i.on_bad_file, i.text_key, i.id_key), *split,
                MegatronTokenWriter(str(tokenizer), cfg.tokenizer.eos_token, str(staging / "shards" / f"{ctx.task_id:05d}"), cfg.batch_size)]

    return run_shard_task(ctx, build, output_dir(ctx.run.path, "tokenize"), files, outputs_under="/shards/")
