"""Filter-stage throughput reading WARC from an S3-compatible object store vs from local files.

Builds a sample crawl (real HTML, build_corpus), starts moto's S3 server in this process on
loopback, uploads the shards and a Common Crawl style warc.paths.gz listing, then runs the
filter stage's task body (jobs/filter.py `run`, one task over all shards, in this process:
no launcher, no process start-up) over the same blocks in three modes, interleaved:
  local   filter.input.paths = the local shard files
  s3      filter.input.paths = s3://.../warc.paths.gz (input listing and WARC read from S3)
  s3+out  as s3, and the documents written to s3:// (filter.output.path)
Each repeat checks every mode kept the same documents (same rows in the same parquet files).
Prints documents, median seconds and median documents/s per mode and the ratio to local.
moto serves from threads of this same process, so it shares the interpreter (and the GIL)
with the pipeline: a remote store would cost network time instead of CPU time here.

    python benchmarks/bench_object_store.py [--shards 2] [--docs 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINEWEB = REPO / "recipes" / "data" / "fineweb.yaml"


class RequestCount(logging.Filter):
    """Counts the requests moto's server (werkzeug) logs, and those answered >= 400; prints none."""

    def __init__(self):
        super().__init__()
        self.total = self.failed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 3:  # '"%s" %s %s': request line, code, size
            self.total += 1
            self.failed += str(record.args[1]).isdigit() and int(record.args[1]) >= 400
        return False


def start_s3():
    """moto's S3 server on a free loopback port; AWS_* set for this process; returns (server, fs, request counter)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(var, None)
    s3fs.S3FileSystem.clear_instance_cache()
    requests = RequestCount()
    logging.getLogger("werkzeug").addFilter(requests)
    return server, s3fs.S3FileSystem(), requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=2, help="WARC shards (all read by the one task)")
    parser.add_argument("--docs", type=int, default=60, help="real documentation pages per shard")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-s3-output", action="store_true", help="leave out the s3+out row")
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from aistack.data.sample_crawl import build_corpus
    from aistack.jobs.filter import run as filter_task  # jobs/filter.py
    from aistack.rundir import RunDir
    from aistack.runtime.task import TaskContext
    from aistack.recipe import load_recipe

    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    corpus = build_corpus(work / "crawl", shards=args.shards, real=args.docs * args.shards,
                          blocked=2, boilerplate=2, near_dups=2, toxic=2)
    server, fs, requests = start_s3()
    try:
        fs.mkdir("crawl-input")
        fs.mkdir("crawl-output")
        keys = [f"crawl-data/segment-0/warc/{p.name}" for p in corpus.shards]
        for key, shard in zip(keys, corpus.shards):
            fs.put_file(str(shard), f"crawl-input/{key}")
        fs.pipe_file("crawl-input/listings/warc.paths.gz", gzip.compress("".join(k + "\n" for k in keys).encode()))

        common = ["tracking.mode=disabled", "filter.extract.timeout=30", f"output.root={work / 'runs'}"]
        listing = ["filter.input.paths=[s3://crawl-input/listings/warc.paths.gz]", "filter.input.paths_base=s3://crawl-input/"]
        overrides = {"local": [f"filter.input.paths=[{','.join(map(str, corpus.shards))}]"], "s3": listing}
        if not args.no_s3_output:
            overrides["s3+out"] = [*listing, "filter.output.path=s3://crawl-output/docs"]
        recipes = {mode: load_recipe(FINEWEB, [*common, *extra]).recipe for mode, extra in overrides.items()}

        def run_once(mode: str, tag: str) -> tuple[float, int, dict, tuple[int, int]]:
            recipe, run = recipes[mode], RunDir(work / "runs" / f"{mode}-{tag}")
            if recipe.filter.output.path and fs.exists("crawl-output/docs"):
                fs.rm("crawl-output/docs", recursive=True)  # untimed: no documents of the last run left
            ctx = TaskContext(run, recipe, kind="filter", job="filter", task_id=0, num_tasks=1)
            before = requests.total, requests.failed
            t = time.perf_counter()
            result = filter_task(ctx)
            seconds = time.perf_counter() - t
            calls = requests.total - before[0], requests.failed - before[1]
            if recipe.filter.output.path:
                rows = {p.rsplit("/", 1)[1]: pq.read_table(io.BytesIO(fs.cat_file(p))).to_pylist()
                        for p in sorted(fs.glob("crawl-output/docs/*.parquet"))}
            else:
                rows = {p.name: pq.read_table(p).to_pylist()
                        for p in sorted((run.path / "output" / "filter" / "documents").glob("*.parquet"))}
            return seconds, result["documents_in"], rows, calls

        _, docs, expected, _ = run_once("local", "warmup")  # untimed: imports, models, caches
        if not expected or not any(expected.values()):
            raise SystemExit("FAIL: the local run kept no documents")
        times = {mode: [] for mode in recipes}
        calls = {}  # mode -> (S3 requests, of them answered >= 400) in its last timed run
        for i in range(args.repeats):
            order = list(recipes)[i % len(recipes):] + list(recipes)[:i % len(recipes)]  # rotated: drift hits all
            for mode in order:
                seconds, n, rows, calls[mode] = run_once(mode, str(i))
                if n != docs or rows != expected:
                    raise SystemExit(f"FAIL: {mode} (repeat {i}) read {n} documents, kept "
                                     f"{sum(map(len, rows.values()))} in {sorted(rows)}; local read {docs}, kept "
                                     f"{sum(map(len, expected.values()))} in {sorted(expected)}")
                times[mode].append(seconds)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    kept = sum(map(len, expected.values()))
    print(f"filter stage, jobs/filter.py task body in-process (no launcher/process start-up), one task over "
          f"{args.shards} WARC shards; moto S3 on loopback in this process")
    print(f"documents read per run: {docs} (kept: {kept}, identical in every mode), repeats: {args.repeats}, "
          f"after one untimed warm-up run")
    local = docs / statistics.median(times["local"])
    print(f"{'mode':<8} {'documents':>9} {'median s':>9} {'docs/s':>8} {'ratio':>6} {'S3 req (>=400)':>15}  runs (s)")
    for mode, ts in times.items():
        med = statistics.median(ts)
        req = f"{calls[mode][0]} ({calls[mode][1]})"
        print(f"{mode:<8} {docs:>9} {med:>9.2f} {docs / med:>8.2f} {docs / med / local:>6.3f} {req:>15}  "
              + ", ".join(f"{t:.2f}" for t in ts))


if __name__ == "__main__":
    main()
