"""Tokenizers (train a byte-level BPE or load a tokenizer.json) and the tokenizing step."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from aistack.data.megatron import ShardWriter


def train_bpe(texts, vocab_size: int, min_frequency: int, eos_token: str, special_tokens: list[str], out: Path) -> Path:
    """Byte-level BPE (GPT-2 style pre-tokenizer and decoder) saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eos_token, *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return save_atomic(tok, out)


def save_atomic(tok, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tok.save(str(tmp))
    tmp.replace(out)
    return out


def load_tokenizer(path: Path, eos_token: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    eos = tok.token_to_id(eos_token)
    if eos is None:
        raise ValueError(f"tokenizer {path} has no token {eos_token!r} (tokenize.tokenizer.eos_token)")
    return tok, eos


def copy_tokenizer(src: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(out)
    return out


def is_held_out(doc_id: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a pure function of its id, so every
    task, the tokenizer trainer and a rerun agree without sharing any state."""
    if fraction <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(str(doc_id).encode()).digest()[:8], "big") / 2**64
    return bucket < fraction


class HeldOutSplit(PipelineStep):
    """Keeps a deterministic fraction of the documents (by a hash of their id) out of training:
    they are written as jsonl ({"id", "text"}) to `path` and not forwarded to the token writer;
    the funnel counts them as `dropped_held_out`."""

    type = "🔻 - FILTER"
    name = "Held-out split"

    def __init__(self, fraction: float, path: str):
        super().__init__()
        self.fraction = fraction
        self.path = path

    def run(self, data, rank: int = 0, world_size: int = 1):
        out = Path(self.path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as handle:
            for doc in data or []:
                self.stat_update("total")
                if is_held_out(doc.id, self.fraction):
                    handle.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
                    self.stat_update("dropped_held_out")
                    continue
                self.stat_update("forwarded")
                yield doc


def merge_held_out(shards: list[Path], out: Path) -> int:
    """The shards' held-out documents, in shard order, as one jsonl (written atomically)."""
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    with open(tmp, "w") as handle:
        for shard in shards:
            for line in shard.read_text().splitlines():
                if line.strip():
                    handle.write(line + "\n")
                    count += 1
    tmp.replace(out)
    return count


class MegatronTokenWriter(PipelineStep):
    """Tokenizes documents in batches and writes them, EOS after each, to prefix.bin/.idx."""

    type = "🔢 - TOKENIZE"
    name = "Megatron indexed dataset"

    def __init__(self, tokenizer_file: str, eos_token: str, prefix: str, batch_size: int):
        super().__init__()
        self.tokenizer_file = tokenizer_file
        self.eos_token = eos_token
        self.prefix = prefix
        self.batch_size = batch_size

    def run(self, data, rank: int = 0, world_size: int = 1):
        tok, eos = load_tokenizer(Path(self.tokenizer_file), self.eos_token)
        writer = ShardWriter(Path(self.prefix), tok.get_vocab_size())
        batch = []

        def flush():
            with self.track_time():
                for enc in tok.encode_batch([d.text for d in batch], add_special_tokens=False):
                    writer.add_document(enc.ids + [eos])
                    self.stat_update("total")
                    self.stat_update("tokens", value=len(enc.ids) + 1)
            batch.clear()

        for doc in data or []:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                flush()
        if batch:
            flush()
        writer.close()
        return
        yield  # a generator: the executor drains it
