"""The data stage end to end on real HTML: filter, MinHash dedup, tokenize, resume, bad input."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aistack.launch import launcher
from aistack.launch.executor import JobFailed
from aistack.recipe import RecipeError
from conftest import RECIPES
from aistack.data.sample_crawl import build_corpus

FINEWEB = RECIPES / "data" / "fineweb.yaml"
MINHASH = RECIPES / "data" / "minhash.yaml"
TOKENIZE = RECIPES / "data" / "tokenize.yaml"
# Generous per-document extraction timeout: 2 CPU cores run 4 tasks at once here.
COMMON = ["tracking.mode=disabled", "filter.extract.timeout=30"]
LIGHT = ["filter.gopher_repetition.enabled=false", "filter.gopher_quality.enabled=false",
         "filter.c4_quality.enabled=false", "filter.fineweb_quality.enabled=false"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("warc"), shards=4)


@pytest.fixture(scope="module")
def filtered(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    overrides = [f"output.root={root}", f"filter.input.paths=[{corpus.shards[0].parent}]", "filter.output.keep_removed=true", *COMMON]
    return launcher.launch(FINEWEB, overrides, on="local"), overrides


def rows(folder):
    out = []
    for path in sorted(folder.glob("*.parquet")):
        out += pq.read_table(path).to_pylist()
    return out


def removed_urls(run, step):
    urls = set()
    for path in (run.path / "output" / "filter" / "removed" / step).glob("*.jsonl.gz"):
        urls |= {json.loads(line)["url"] for line in gzip.open(path, "rt")}
    return urls


def test_filter_output_is_input_minus_what_each_filter_says_it_dropped(filtered, corpus):
    result, _ = filtered
    kept = rows(result.run.path / "output" / "filter" / "documents")
    table = json.loads((result.run.path / "stats.json").read_text())
    steps = table["jobs"][0]["steps"]
    read = steps[0]["documents_out"]
    assert read == len(corpus.kinds), "every HTML response record becomes a document"
    assert len(kept) == read - sum(s["dropped"] for s in steps) == table["jobs"][0]["documents_out"]
    for step in steps:
        assert step["dropped"] == sum(step["dropped_by"].values()), f"{step['name']}: every drop has a reason"
    assert len({r["id"] for r in kept}) == len(kept)
    assert (result.run.path / "stats.csv").read_text().count("\n") == len(steps) + 1
    assert (result.run.path / "funnel.png").read_bytes()[:4] == b"\x89PNG"

    urls = {r["url"] for r in kept}
    for kind in ("non_english", "blocklisted", "boilerplate"):
        assert not urls & corpus.urls(kind), f"{kind} pages must all be filtered out"
    assert corpus.urls("blocklisted") <= removed_urls(result.run, "url"), "the URL filter itself removed them"
    assert len(corpus.urls("non_english") & removed_urls(result.run, "language")) >= len(corpus.urls("non_english")) - 2
    survivors = urls & corpus.urls("real")
    assert len(survivors) >= 10, f"real documentation pages survive ({len(survivors)} did)"
    assert all(r["language"] == "en" and r["language_score"] > 0.65 and r["text"].strip() for r in kept)
    emails = {e for r in kept for e in re.findall(r"[\w.+-]+@[\w-]+\.[\w.-]+", r["text"])}
    assert emails <= {"email@example.com", "firstname.lastname@example.org"}, emails


def test_report_command_prints_the_table_and_funnel(filtered, capsys):
    from aistack.cli import main

    result, _ = filtered
    (result.run.path / "funnel.png").unlink()
    assert main(["report", str(result.run.path)]) == 0
    out = capsys.readouterr().out
    assert "Language ID" in out and "funnel.png" in out
    assert (result.run.path / "funnel.png").exists(), "report draws the funnel when it is missing"


def test_dedup_removes_injected_near_duplicates_and_keeps_distinct_pages(corpus, tmp_path):
    root = tmp_path / "runs"
    light = launcher.launch(FINEWEB, [f"output.root={root}", f"filter.input.paths=[{corpus.shards[0].parent}]", *COMMON, *LIGHT], on="local")
    docs = light.run.path / "output" / "filter" / "documents"
    before = {r["url"] for r in rows(docs)}
    pairs = [(a, b) for a, b in corpus.pairs if a in before and b in before]
    assert len(pairs) >= 10, "enough injected pairs reach dedup to measure recall"
    dedup = launcher.launch(MINHASH, [f"output.root={root}", f"dedup.input.paths=[{docs}]", "tracking.mode=disabled"], on="local")
    after = {r["url"] for r in rows(dedup.run.path / "output" / "dedup" / "documents")}
    caught = [p for p in pairs if len(set(p) & after) == 1]
    assert len(caught) / len(pairs) >= 0.9, f"recall {len(caught)}/{len(pairs)}"
    # a toxic page is a copy of a real one: without the bad-words filter it is a near-duplicate too
    in_pairs = {u for p in corpus.pairs + corpus.toxic_pairs for u in p}
    distinct = before - in_pairs
    lost = distinct - after
    assert len(lost) <= 0.01 * len(distinct), f"distinct pages removed: {sorted(lost)}"
    steps = json.loads((dedup.run.path / "stats.json").read_text())["jobs"][3]["steps"]
    assert steps[1]["dropped"] == len(before) - len(after) == steps[1]["dropped_by"]["near_duplicate"]

    # tokenize the deduplicated documents: Megatron's IndexedDataset reads them back exactly
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    tok_run = launcher.launch(TOKENIZE, [f"output.root={root}", f"tokenize.input.paths=[{dedup.run.path / 'output' / 'dedup' / 'documents'}]",
                                         "tokenize.tokenizer.vocab_size=1000", "tracking.mode=disabled"], on="local")
    out = tok_run.run.path / "output" / "tokenize"
    dataset = IndexedDataset(str(out / "data"))
    texts = [r["text"] for r in rows(dedup.run.path / "output" / "dedup" / "documents")]
    assert len(dataset) == len(texts)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    for i, text in enumerate(texts):
        ids = dataset[i].tolist()
        assert ids[-1] == eos and eos not in ids[:-1]
        assert tok.decode(ids[:-1]) == text
    stats = json.loads((tok_run.run.path / "stats.json").read_text())
    assert stats["jobs"][1]["tokens"] == int(dataset.sequence_lengths.sum())


def test_killed_task_reruns_alone_and_output_has_every_document_once(filtered, corpus, tmp_path):
    reference, overrides = filtered
    expected = sorted(r["id"] for r in rows(reference.run.path / "output" / "filter" / "documents"))
    base = [o for o in overrides if not o.startswith("output.root")] + [f"output.root={tmp_path}"]
    with pytest.raises(JobFailed):
        launcher.launch(FINEWEB, [*base, "filter.kill_tasks=[1]", "filter.kill_after_documents=3"], on="local")
    run = launcher.prepare(FINEWEB, base, on="local")[2]
    assert [t for t in range(4) if run.is_done("filter", t)] == [0, 2, 3]
    assert not _processes_of(run.log_dir("filter")), "the killed task left processes behind"
    published = sorted(p.name for p in (run.path / "output" / "filter" / "documents").glob("*"))
    assert len(published) == 3 and not [n for n in published if n.endswith("00001.parquet")], "a killed task publishes nothing"
    done_before = {t: run.done_file("filter", t).stat().st_mtime_ns for t in (0, 2, 3)}

    again = launcher.launch(FINEWEB, base, on="local")
    assert [(s.job, s.task_ids) for s in again.submitted] == [("filter", [1]), ("stats", [0])]
    assert {t: run.done_file("filter", t).stat().st_mtime_ns for t in (0, 2, 3)} == done_before
    got = sorted(r["id"] for r in rows(run.path / "output" / "filter" / "documents"))
    assert got == expected


def _processes_of(log_dir) -> list[int]:
    """Live (not zombie) processes whose command line names this job's log folder."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if str(log_dir).encode() in (proc / "cmdline").read_bytes() and " Z " not in (proc / "stat").read_text():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def test_bad_input_files_fail_naming_the_file_or_are_counted_and_skipped(corpus, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = corpus.shards[0].read_bytes()
    (bad / "a-truncated.warc.gz").write_bytes(good[: len(good) // 2])
    (bad / "b-not-a-warc.warc").write_text("<html><body>just a page, not a WARC file</body></html>\n")
    (bad / "c-empty.warc.gz").write_bytes(b"")
    (bad / "d-good.warc.gz").write_bytes(corpus.shards[1].read_bytes())
    base = [f"output.root={tmp_path / 'runs'}", f"filter.input.paths=[{bad}]", "filter.tasks=2", *COMMON, *LIGHT]
    with pytest.raises(JobFailed, match=r"bad input file .*a-truncated\.warc\.gz after \d+ documents"):
        launcher.launch(FINEWEB, base, on="local")
    result = launcher.launch(FINEWEB, [*base, "filter.input.on_bad_file=skip"], on="local")
    steps = json.loads((result.run.path / "stats.json").read_text())["jobs"][0]["steps"]
    assert steps[0]["dropped_by"] == {"bad_files": 2}
    urls = {r["url"] for r in rows(result.run.path / "output" / "filter" / "documents")}
    import warcio.archiveiterator as ai
    with open(corpus.shards[1], "rb") as fh:
        shard1 = {r.rec_headers["WARC-Target-URI"] for r in ai.ArchiveIterator(fh) if r.rec_type == "response"}
    assert urls & shard1, "the good file after the bad ones is still read"
    assert steps[0]["documents_out"] > len(shard1), "documents before the truncation are kept"


def _image_crawl(path: Path) -> Path:
    """A crawl of images only, without WARC-Identified-Payload-Type: no record is HTML."""
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "another-crawler/2.1"}))
        for name in ("a", "b"):
            url = f"https://img.example.org/{name}.png"
            request = StatusAndHeaders(f"GET /{name}.png HTTP/1.1", [("Host", "img.example.org")], is_http_request=True)
            writer.write_record(writer.create_warc_record(url, "request", http_headers=request))
            headers = StatusAndHeaders("200 OK", [("Content-Type", "image/png"), ("Content-Length", str(len(png)))], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(png), http_headers=headers))
    return path


def test_a_filter_run_whose_whole_input_makes_no_document_fails_saying_why_in_the_log_the_table_and_at_the_end(tmp_path, capsys):
    from aistack.cli import main

    warc = _image_crawl(tmp_path / "crawl" / "images.warc.gz")
    why = "read 5 WARC records but kept none: not_response 3, not_html 2 (image/png 2)"
    args = ["run", str(FINEWEB), f"output.root={tmp_path / 'runs'}", f"filter.input.paths=[{warc.parent}]", *COMMON, *LIGHT, "--on", "local"]
    assert main(args) == 1, "a stage whose whole input makes no document fails"
    captured = capsys.readouterr()
    out = captured.out
    assert f"warning: job filter: task 0 (input files {warc}) {why}" in out, out
    assert f"job filter read no document from the whole input (1 task): {why}" in captured.err, captured.err
    run = next((tmp_path / "runs").glob("fineweb-*"))
    table = json.loads((run / "stats.json").read_text())
    assert table["warnings"] == [f"job filter: task 0 (input files {warc}) {why}"]
    reader = table["jobs"][0]["steps"][0]
    assert (reader["records"], reader["documents_out"], reader["skipped_by"]) == (5, 0, {"not_html": 2, "not_response": 3})
    assert main(["logs", str(run), "--job", "filter"]) == 0
    assert "WARNING  | aistack.data.readers" in capsys.readouterr().out, "the task's own log warns"
    assert main(["report", str(run)]) == 0
    assert why in capsys.readouterr().out


def test_recipe_errors_name_the_key_before_anything_runs(corpus, tmp_path):
    base = [f"output.root={tmp_path}", f"filter.input.paths=[{corpus.shards[0]}]"]
    with pytest.raises(RecipeError, match=r"filter\.url\.blocklists\.1.*no-such-list\.txt"):
        launcher.prepare(FINEWEB, [*base, f"filter.url.blocklists=[default,{tmp_path}/no-such-list.txt]"], on="local")
    with pytest.raises(RecipeError, match=r"filter\.language.*model_file"):
        launcher.prepare(FINEWEB, [*base, "filter.language.backend=fasttext"], on="local")
    with pytest.raises(RecipeError, match=r"filter\.input.*nothing found"):
        launcher.prepare(FINEWEB, [f"output.root={tmp_path}", f"filter.input.paths=[{tmp_path}/none/*.warc.gz]"], on="local")
    with pytest.raises(RecipeError, match=r"filter\.gopher_quality\.min_doc_wordz.*unknown key"):
        launcher.prepare(FINEWEB, [*base, "filter.gopher_quality.min_doc_wordz=5"], on="local")


@pytest.mark.slurm
def test_filter_recipe_as_slurm_array(slurm_cluster, corpus, tmp_path):
    overrides = [f"output.root={tmp_path}", f"filter.input.paths=[{corpus.shards[0].parent}]", *COMMON]
    result = launcher.launch(FINEWEB, overrides, on="slurm")
    assert [(s.job, s.is_array, len(s.task_ids)) for s in result.submitted] == [("filter", True, 4), ("stats", False, 1)]
    states = launcher.wait(result, timeout_s=600)
    assert {s.state for s in states} == {"COMPLETED"}, states
    table = json.loads((result.run.path / "stats.json").read_text())["jobs"][0]
    kept = rows(result.run.path / "output" / "filter" / "documents")
    assert len(kept) == table["steps"][0]["documents_out"] - sum(s["dropped"] for s in table["steps"])
    assert not {r["url"] for r in kept} & (corpus.urls("non_english") | corpus.urls("blocklisted") | corpus.urls("boilerplate"))


def test_tokenize_keeps_a_held_out_split_by_document_id_out_of_training(filtered, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    from aistack.data.tokenize import is_held_out

    reference, _ = filtered
    docs = reference.run.path / "output" / "filter" / "documents"
    source = rows(docs)
    tok_run = launcher.launch(TOKENIZE, [f"output.root={tmp_path}", f"tokenize.input.paths=[{docs}]", "tokenize.heldout_fraction=0.3",
                                         "tokenize.tokenizer.vocab_size=1000", "tracking.mode=disabled"], on="local")
    out = tok_run.run.path / "output" / "tokenize"
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    expected = [r for r in source if is_held_out(r["id"], 0.3)]
    assert 0 < len(held) < len(source)
    assert sorted(h["id"] for h in held) == sorted(r["id"] for r in expected)
    assert {h["text"] for h in held} == {r["text"] for r in expected}
    # the training set is exactly the other documents: no held-out text reaches it
    dataset = IndexedDataset(str(out / "data"))
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    trained = {tok.decode(dataset[i].tolist()[:-1]) for i in range(len(dataset))}
    assert len(dataset) == len(source) - len(held)
    assert trained == {r["text"] for r in source if not is_held_out(r["id"], 0.3)}
    # the funnel says where they went
    steps = json.loads((tok_run.run.path / "stats.json").read_text())["jobs"][1]["steps"]
    split = next(s for s in steps if s["name"] == "Held-out split")
    assert split["dropped_by"] == {"held_out": len(held)} and split["documents_out"] == len(dataset)


def test_bad_words_filter_drops_the_toxic_pages_offline_and_counts_them(corpus, tmp_path):
    toxic = corpus.urls("toxic")
    assert len(toxic) == 4
    run = launcher.launch(FINEWEB, [f"output.root={tmp_path}", f"filter.input.paths=[{corpus.shards[0].parent}]", *COMMON, *LIGHT,
                                    "filter.badwords.enabled=true", "filter.output.keep_removed=true"], on="local").run
    kept = {r["url"] for r in rows(run.path / "output" / "filter" / "documents")}
    removed = removed_urls(run, "badwords")
    assert toxic <= removed and not toxic & kept
    # C4's list also takes the odd real page (the sockets HOWTO: "suck"): only pages holding a listed word
    from aistack.assets import shipped
    from aistack.data.badwords import read_words

    words = {w for w in read_words(shipped("data", "badwords", "en.txt")) if " " not in w}
    texts = {}
    for path in (run.path / "output" / "filter" / "removed" / "badwords").glob("*.jsonl.gz"):
        texts |= {(d := json.loads(line))["url"]: d["text"] for line in gzip.open(path, "rt")}
    for url in removed - toxic:
        assert words & set(re.findall(r"\w+", texts[url].lower())), url
    assert len(removed - toxic) <= 2 and len(kept) > 100
    steps = json.loads((run.path / "stats.json").read_text())["jobs"][0]["steps"]
    bad = next(s for s in steps if s["name"] == "C4 Badwords")
    assert bad["dropped"] == len(removed) and bad["dropped_by"] == {"document_removed_with_badwords": len(removed)}
