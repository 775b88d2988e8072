"""`kind: tokenize`, first job: train a byte-level BPE on the input, or take the given tokenizer.json."""

from __future__ import annotations

import itertools

from aistack.data.inputs import planned_files, write_paths_file
from aistack.data.run_paths import output_dir
from aistack.data.readers import make_reader
from aistack.data.tokenize import copy_tokenizer, is_held_out, load_tokenizer, train_bpe
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    cfg = ctx.recipe.tokenize
    out = output_dir(ctx.run.path, "tokenize") / "tokenizer.json"
    tk = cfg.tokenizer
    if tk.mode == "load":
        copy_tokenizer(tk.file, out)
        trained_on = 0
    else:
        i = cfg.input
        data_folder, paths_file = write_paths_file(planned_files(ctx.run, i), ctx.task_dir / "inputs.txt")
        reader = make_reader(i.format, data_folder, str(paths_file), i.on_bad_file, i.text_key, i.id_key)
        docs = (d for d in reader.run(None, 0, 1) if not is_held_out(d.id, cfg.heldout_fraction))  # never seen in training
        texts = [d.text for d in itertools.islice(docs, tk.max_train_documents)]
        train_bpe(iter(texts), tk.vocab_size, tk.min_frequency, tk.eos_token, tk.special_tokens, out)
        trained_on = len(texts)
    tok, eos = load_tokenizer(out, tk.eos_token)  # fails here, not in every shard, if EOS is missing
    result = {"tokenizer": str(out), "vocab_size": tok.get_vocab_size(), "eos_id": eos, "trained_on_documents": trained_on}
    ctx.log(0, {k: v for k, v in result.items() if k != "tokenizer"})
    return result
