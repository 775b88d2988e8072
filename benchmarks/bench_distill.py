"""Logit distillation: student training tokens/s with the teacher online vs its top-k logits
read from the zarr store (offline), and the store's size per million tokens at k = 8, 32, 64.

    python benchmarks/bench_distill.py [--steps 30] [--out /tmp/bench-distill]

The teacher (4 layers, hidden 256) is pretrained briefly on the tiny synthetic corpus (its
quality does not change the throughput); the student is the tiny 2-layer GPT. Both run on
this machine through the local executor; tokens/s is the median over the steps after the
first five. Store sizes are measured on disk (zarr v3, Blosc zstd level 3, int32 ids +
float16 values) for real teacher logits, then scaled to 1M tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "recipes" / "pretrain" / "gpt-tiny.yaml"
LOGIT = REPO / "recipes" / "distill" / "gpt-tiny-logit.yaml"
TEACHER = ["model.num_layers=4", "model.hidden_size=256", "model.num_attention_heads=8", "model.num_query_groups=4"]


def tokens_per_s(run) -> float:
    from aistack.track.metrics import read_metrics

    rows = [r["tokens_per_s"] for r in read_metrics(run.task_dir("train", 0) / "metrics.jsonl") if "tokens_per_s" in r]
    return statistics.median(rows[5:] or rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-distill"))
    args = parser.parse_args()

    from aistack.launch import launcher
    from aistack.model.dataset import make_tiny_dataset

    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    data = make_tiny_dataset(out / "data" / "tiny", vocab_size=512, num_docs=400)
    base = [f"data.paths=[{{path: {data}}}]", "tracking.mode=disabled"]
    teacher_run = launcher.launch(PRETRAIN, [f"output.root={out / 'teacher'}", *base, *TEACHER, "train.steps=20",
                                             "train.eval_every=20"], on="local")
    teacher = teacher_run.run.task_dir("train", 0) / "checkpoints"
    teacher_model = [f"teacher.{o}" for o in TEACHER]
    student = [*base, f"teacher.checkpoint={teacher}", *teacher_model, f"train.steps={args.steps}",
               f"train.eval_every={args.steps}", "checkpoint.every=100000"]

    online = launcher.launch(LOGIT, [f"output.root={out / 'online'}", *student], on="local")
    offline = launcher.launch(LOGIT, [f"output.root={out / 'offline'}", *student, "logit.source=offline", "logit.top_k=64",
                                      "logit.shards=1", "logit.block=16"], on="local")
    precompute_s = offline.run.task_result("teacher_logits", 0)["result"]["seconds"]
    on_tps, off_tps = tokens_per_s(online.run), tokens_per_s(offline.run)

    sizes = store_sizes(offline.run.path / "teacher_logits.zarr", out / "sizes", (8, 32, 64))
    print(f"student training tokens/s   online teacher {on_tps:8.0f}   offline zarr (k=64) {off_tps:8.0f}   "
          f"ratio offline/online {off_tps / on_tps:.2f}")
    print(f"offline precompute (teacher top-64 over {args.steps} steps of data): {precompute_s:.1f} s")
    for k, mb in sizes.items():
        print(f"zarr store, k={k:2d}: {mb:7.1f} MB per 1M tokens   (raw int32+float16: {6 * k:.0f} MB)")


def store_sizes(source: Path, root: Path, ks: tuple[int, ...]) -> dict[int, float]:
    """MB per 1M tokens of stores holding the teacher's top-k for k in ks. topk() sorts by value,
    so the top-k for k <= the source's is its prefix: the same real logits at every k."""
    from aistack.post.topk_store import StoreSpec, TopKStore, create

    src = TopKStore(source)
    n = src.spec.num_sequences
    ids, values = src.read(list(range(n)))
    keys = [key for block in range(src.spec.num_blocks) for key in src.block_keys(block)]
    out = {}
    for k in ks:
        store = create(root / f"k{k}.zarr", StoreSpec(n, src.spec.seq_length, k, src.spec.vocab_size, src.spec.block))
        for block in range(store.spec.num_blocks):
            lo, hi = store.block_range(block)
            store.write_block(block, ids[lo:hi, :, :k], values[lo:hi, :, :k], keys[lo:hi])
        out[k] = store.nbytes_on_disk() / (n * src.spec.seq_length)  # bytes per token = MB per 1M tokens
    return out


if __name__ == "__main__":
    sys.exit(main())
