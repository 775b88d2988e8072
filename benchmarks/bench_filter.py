"""Filter-stage throughput: our task path vs the plain datatrove pipeline, same blocks.

Both run the same FineWeb pipeline over the same WARC shard in this process, one task:
  ours   jobs/filter.py's path: paths file, staged outputs, publish, stats rows
  plain  datatrove's LocalPipelineExecutor on the same blocks, writing directly
Prints documents/s (median over --repeats) and the ratio ours/plain.

    python benchmarks/bench_filter.py [--docs 80] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=80, help="real documentation pages in the shard")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from datatrove.executor import LocalPipelineExecutor

    from aistack.data.staged_run import run_staged
    from aistack.data.filters import build_filter_pipeline
    from aistack.data.inputs import write_paths_file
    from aistack.data.stats import step_rows
    from aistack.recipe import load_recipe
    from aistack.data.sample_crawl import build_corpus

    work = Path(tempfile.mkdtemp(prefix="bench-filter-"))
    corpus = build_corpus(work / "warc", shards=1, real=args.docs, blocked=2, boilerplate=2, near_dups=2)
    cfg = load_recipe(REPO / "recipes" / "data" / "fineweb.yaml", [f"filter.input.paths=[{corpus.shards[0]}]", "filter.extract.timeout=30"]).recipe.filter
    data_folder, paths_file = write_paths_file(cfg.input.files(), work / "inputs.txt")
    docs = len(corpus.kinds)

    def ours(i: int) -> float:
        t = time.perf_counter()
        out = run_staged(lambda staging: build_filter_pipeline(cfg, data_folder, str(paths_file), staging / "documents", None),
                         rank=0, world_size=1, logging_dir=work / f"ours{i}" / "datatrove", staging=work / f"ours{i}" / "staging",
                         final=work / f"ours{i}" / "final")
        step_rows(out["steps"])
        return docs / (time.perf_counter() - t)

    def plain(i: int) -> float:
        t = time.perf_counter()
        steps = build_filter_pipeline(cfg, data_folder, str(paths_file), work / f"plain{i}" / "documents", None)
        LocalPipelineExecutor(steps, tasks=1, workers=1, logging_dir=str(work / f"plain{i}" / "logs")).run()
        return docs / (time.perf_counter() - t)

    rates = {"ours": [], "plain": []}
    for i in range(args.repeats):  # interleaved, so drift hits both alike
        rates["plain"].append(plain(i))
        rates["ours"].append(ours(i))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"documents per task: {docs} (one WARC shard), repeats: {args.repeats}")
    print(f"plain datatrove pipeline: {med['plain']:.2f} documents/s  (runs: {', '.join(f'{r:.2f}' for r in rates['plain'])})")
    print(f"aistack filter task path: {med['ours']:.2f} documents/s  (runs: {', '.join(f'{r:.2f}' for r in rates['ours'])})")
    print(f"ratio aistack/plain: {med['ours'] / med['plain']:.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
