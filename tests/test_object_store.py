"""Data stages on an object store: WARC read from S3 through a Common Crawl style
`warc.paths.gz` listing, documents written to another bucket, against moto's S3 server
on loopback; the outputs must equal those of the same pipeline on local files."""

from __future__ import annotations

import gzip
import json
import io
import urllib.request

import pyarrow.parquet as pq
import pytest
import yaml

from aistack.data.sample_crawl import build_corpus
from aistack.launch import launcher
from aistack.recipe import RecipeError
from conftest import RECIPES

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

FINEWEB = RECIPES / "data" / "fineweb.yaml"
MINHASH = RECIPES / "data" / "minhash.yaml"
TOKENIZE = RECIPES / "data" / "tokenize.yaml"
# Small and quick: two filter shards, one MinHash band, a tiny vocabulary, the cheap filters.
FILTER = ["tracking.mode=disabled", "filter.extract.timeout=30", "filter.gopher_repetition.enabled=false",
          "filter.gopher_quality.enabled=false", "filter.c4_quality.enabled=false", "filter.fineweb_quality.enabled=false"]
DEDUP = ["tracking.mode=disabled", "dedup.tasks=1", "dedup.minhash.num_buckets=1", "dedup.minhash.hashes_per_bucket=4"]
TOKEN = ["tracking.mode=disabled", "tokenize.tasks=1", "tokenize.tokenizer.vocab_size=300"]


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on a free loopback port; AWS_* from the environment only."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        # moto keeps its buckets in this process across servers: start from none
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=30).close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(var, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()  # no client made for another endpoint
        yield s3fs.S3FileSystem()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def local_rows(folder):
    return {p.name: pq.read_table(p).to_pylist() for p in sorted(folder.glob("*.parquet"))}


def bucket_rows(fs, prefix):
    return {p.rsplit("/", 1)[1]: pq.read_table(io.BytesIO(fs.cat_file(p))).to_pylist()
            for p in sorted(fs.glob(f"{prefix}/*.parquet"))}


def run_locally(root, warc_folder: str):
    """filter -> dedup -> tokenize here, stage by stage, on local files: the reference."""
    filt = launcher.launch(FINEWEB, [f"output.root={root}", f"filter.input.paths=[{warc_folder}]", *FILTER], on="local")
    filtered = filt.run.path / "output" / "filter" / "documents"
    dedup = launcher.launch(MINHASH, [f"output.root={root}", f"dedup.input.paths=[{filtered}]", *DEDUP], on="local")
    deduped = dedup.run.path / "output" / "dedup" / "documents"
    tok = launcher.launch(TOKENIZE, [f"output.root={root}", f"tokenize.input.paths=[{deduped}]", *TOKEN], on="local")
    return filt, dedup, tok


def bucketed_pipeline(path, root, listing: str, docs_to: str):
    """The same three stages as one pipeline, documents in the bucket: each stage reads
    `${stages.X.output}`, which is where X wrote (the bucket), not its run directory."""
    stages = {
        "filter": {"recipe": str(FINEWEB), "overrides": {
            **_overrides(FILTER[1:]), "filter.input.paths": [listing], "filter.input.paths_base": "s3://crawl-input/",
            "filter.output.path": f"{docs_to}/filter"}},
        "dedup": {"recipe": str(MINHASH), "overrides": {
            **_overrides(DEDUP[1:]), "dedup.input.paths": ["${stages.filter.output}"], "dedup.output_path": f"{docs_to}/dedup"}},
        "tokenize": {"recipe": str(TOKENIZE), "overrides": {
            **_overrides(TOKEN[1:]), "tokenize.input.paths": ["${stages.dedup.output}"]}},
    }
    path.write_text(yaml.safe_dump({"kind": "pipeline", "name": "bucketed", "output": {"root": str(root)},
                                    "tracking": {"mode": "disabled"}, "report": False, "stages": stages}, sort_keys=False))
    return path


def test_pipeline_on_s3_matches_the_pipeline_on_local_files(s3, tmp_path):
    from aistack.cli import main
    from aistack.launch.stages import resolve
    from aistack.recipe import load_recipe

    corpus = build_corpus(tmp_path / "crawl", shards=2, real=24, blocked=2, boilerplate=2, near_dups=4, toxic=2)
    s3.mkdir("crawl-input")
    s3.mkdir("crawl-output")
    keys = [f"crawl-data/segment-0/warc/{p.name}" for p in corpus.shards]
    for key, shard in zip(keys, corpus.shards):
        s3.put_file(str(shard), f"crawl-input/{key}")
    s3.pipe_file("crawl-input/listings/warc.paths.gz", gzip.compress("".join(k + "\n" for k in keys).encode()))

    local = run_locally(tmp_path / "local", str(corpus.shards[0].parent))
    recipe = bucketed_pipeline(tmp_path / "pipe.yaml", tmp_path / "runs", "s3://crawl-input/listings/warc.paths.gz",
                               "s3://crawl-output/docs")
    assert main(["run", str(recipe), "--on", "local"]) == 0
    pipeline = resolve(load_recipe(recipe))
    remote = [pipeline.stage(name) for name in ("filter", "dedup", "tokenize")]
    # Each stage read where the one before it wrote, planned before that existed.
    assert remote[1].loaded.recipe.dedup.input.paths == ["s3://crawl-output/docs/filter"]
    assert remote[2].loaded.recipe.tokenize.input.paths == ["s3://crawl-output/docs/dedup"]

    # The run directories stay here; the documents are in the bucket and only there.
    for stage, kind in zip(remote[:2], ("filter", "dedup")):
        assert not list((stage.run.path / "output" / kind).rglob("*.parquet")), f"{kind} documents written locally"
    filtered = bucket_rows(s3, "crawl-output/docs/filter")
    assert filtered == local_rows(local[0].run.path / "output" / "filter" / "documents")
    assert len(filtered) == 2, "one file per filter shard: both listed WARC files were read"
    assert sum(map(len, filtered.values())) >= 10
    deduped = bucket_rows(s3, "crawl-output/docs/dedup")
    assert deduped == local_rows(local[1].run.path / "output" / "dedup" / "documents")
    assert sum(map(len, deduped.values())) < sum(map(len, filtered.values())), "near-duplicates were removed"

    out_local, out_remote = (r.run.path / "output" / "tokenize" for r in (local[2], remote[2]))
    for name in ("data.bin", "data.idx", "tokenizer.json"):
        assert (out_remote / name).read_bytes() == (out_local / name).read_bytes(), name
    assert (out_remote / "data.bin").stat().st_size > 1000

    # A changed filter changes what dedup reads, though not its location: dedup and tokenize rerun.
    changed = resolve(load_recipe(recipe, ["stages.filter.overrides.filter.extract.timeout=31"]))
    assert changed.stage("dedup").run.name != remote[1].run.name
    assert changed.stage("tokenize").run.name != remote[2].run.name


def test_remote_inputs_are_planned_with_their_etags_and_a_rewritten_object_is_a_new_run(s3, tmp_path):
    from aistack.data.inputs import InputsChanged, planned_files
    from aistack.launch.stages import resolve
    from aistack.launch.submit import prepare_stage
    from aistack.recipe import load_recipe
    from aistack.rundir import read_input_manifest

    s3.mkdir("docs")
    for name in ("a", "b"):
        s3.pipe_file(f"docs/in/{name}.jsonl", (json.dumps({"text": f"document {name}", "id": name}) + "\n").encode())
    s3.pipe_file("docs/list.paths", b"in/a.jsonl\nin/b.jsonl\n")

    def stage(paths: str):
        overrides = [f"output.root={tmp_path / 'runs'}", f"filter.input.paths=[{paths}]", "filter.input.format=jsonl", *FILTER]
        return resolve(load_recipe(FINEWEB, overrides)).stages[0]

    folder, listed = stage("s3://docs/in/"), stage("s3://docs/list.paths")
    for planned in (folder, listed):
        prepare_stage(planned, "local")
    manifest = read_input_manifest(folder.run)
    assert [e["path"] for e in manifest["files"]] == ["s3://docs/in/a.jsonl", "s3://docs/in/b.jsonl"]
    assert all(e["size"] > 0 and e["etag"] for e in manifest["files"])
    by_listing = read_input_manifest(listed.run)
    assert [set(e) for e in by_listing["files"]] == [{"path"}, {"path"}], "named by the listing: no request per object"
    assert by_listing["listings"][0]["path"] == "s3://docs/list.paths" and by_listing["listings"][0]["etag"]

    # The same bytes count in a new object: rewritten with a different text of the same size
    s3.pipe_file("docs/in/b.jsonl", (json.dumps({"text": "document c", "id": "b"}) + "\n").encode())
    s3fs.S3FileSystem.clear_instance_cache()
    assert stage("s3://docs/in/").run != folder.run, "a rewritten object: a new run"
    with pytest.raises(InputsChanged, match=r"s3://docs/in/b\.jsonl \(modified\)"):
        planned_files(folder.run, folder.loaded.recipe.filter.input, shard=(1, 2))
    assert planned_files(folder.run, folder.loaded.recipe.filter.input, shard=(0, 2))[0] == "s3://docs/in/a.jsonl"
    s3.pipe_file("docs/list.paths", b"in/b.jsonl\n")
    assert stage("s3://docs/list.paths").run != listed.run, "a rewritten listing: a new run"


def test_remote_inputs_checked_at_plan_time(s3, tmp_path, capsys, monkeypatch):
    s3.mkdir("crawl-input")
    root = f"output.root={tmp_path}"
    # Credentials in a recipe are refused, naming the key, never echoing the secret.
    for key, value in (("filter.input.paths", "[s3://AKIAEXAMPLE:s3cr3tvalue@crawl-input/x.warc.gz]"),
                       ("filter.output.path", "s3://AKIAEXAMPLE:s3cr3tvalue@crawl-output/docs"),
                       ("filter.input.paths_base", "s3://crawl-input/?X-Amz-Signature=s3cr3tvalue")):
        with pytest.raises(RecipeError) as err:
            launcher.launch(FINEWEB, [root, key + "=" + value, *FILTER, "filter.tasks=1"], on="local", dry_run=True)
        assert key in str(err.value) and "credentials" in str(err.value)
        assert "s3cr3tvalue" not in str(err.value), "the secret is not repeated"
    # An empty bucket prefix is a missing input: an error for a real run ...
    with pytest.raises(RecipeError, match="s3://crawl-input/nothing"):
        launcher.launch(FINEWEB, [root, "filter.input.paths=[s3://crawl-input/nothing/]", *FILTER], on="local")
    # ... and a warning in a pipeline's dry run (as inputs only the cluster sees); so is a
    # store that does not answer at all.
    capsys.readouterr()
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    for endpoint, url in ((None, "s3://crawl-input/nothing/"), (dead, "s3://crawl-input/x/")):
        if endpoint:
            monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
            monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
            s3fs.S3FileSystem.clear_instance_cache()
        pipeline = tmp_path / "p.yaml"
        pipeline.write_text(yaml.safe_dump({"kind": "pipeline", "name": "objstore", "output": {"root": str(tmp_path)},
                                            "tracking": {"mode": "disabled"}, "stages": {"filter": {
                                                "recipe": str(FINEWEB), "overrides": {"filter.input.paths": [url], "filter.tasks": 2}}}}))
        result = launcher.launch(pipeline, [], on="local", dry_run=True)
        assert result.pipeline.missing_inputs == [url]
        with pytest.raises(RecipeError, match=url):
            launcher.launch(pipeline, [], on="local")


def _overrides(items) -> dict:
    return {k: yaml.safe_load(v) for k, v in (i.split("=", 1) for i in items)}
