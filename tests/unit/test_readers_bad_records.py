"""Readers never succeed on nothing: a line or record that makes no document makes its file
bad, under `on_bad_file` (fail: the file and the line or record named; skip: counted under
`bad_files`, the documents before it kept). Every format: jsonl, parquet, WARC."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from aistack.data.readers import BadInputFile, make_reader


def read(path: Path, fmt: str, on_bad_file: str, text_key: str = "text"):
    paths_file = path.parent / "paths.txt"
    paths_file.write_text(path.name + "\n")
    reader = make_reader(fmt, str(path.parent), str(paths_file), on_bad_file, text_key=text_key)
    docs = list(reader.run(rank=0, world_size=1))
    return [d.text for d in docs], {k: v.total for k, v in reader.stats.stats.items()}


def jsonl(tmp_path: Path, *lines: bytes) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = json.dumps({"text": "first document", "id": "a"}).encode()
LATER = json.dumps({"text": "after the damage", "id": "c"}).encode()


@pytest.mark.parametrize("bad, why", [
    (b'{"text": "caf\xe9 latin-1", "id": "b"}', r"line 2: not UTF-8"),
    (b'{"text": "no closing brace"', r"line 2: not JSON"),
    (b'["a", "list"]', r"line 2: a JSON list, not an object"),
    (json.dumps({"content": "the wrong key", "id": "b"}).encode(), r"line 2: no 'text' key \(its keys: content, id\)"),
])
def test_a_jsonl_line_that_makes_no_document_fails_naming_file_and_line_or_is_counted(tmp_path, bad, why):
    path = jsonl(tmp_path, GOOD, bad, LATER)
    with pytest.raises(BadInputFile, match=rf"{path}.*after 1 documents.*{why}"):
        read(path, "jsonl", "fail")
    texts, stats = read(path, "jsonl", "skip")
    assert texts == ["first document"] and stats.get("bad_files") == 1


def test_blank_lines_and_an_empty_text_are_not_bad(tmp_path):
    path = jsonl(tmp_path, GOOD, b"", json.dumps({"text": "", "id": "e"}).encode(), LATER)
    texts, stats = read(path, "jsonl", "fail")
    assert texts == ["first document", "after the damage"] and not stats.get("bad_files")


def test_a_parquet_file_without_the_text_column_is_bad(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "id": ["1", "2"]}), path)
    with pytest.raises(BadInputFile, match=rf"{path}.*no 'text' column \(its columns: content, id\)"):
        read(path, "parquet", "fail")
    texts, stats = read(path, "parquet", "skip")
    assert texts == [] and stats.get("bad_files") == 1
    assert read(path, "parquet", "fail", text_key="content")[0] == ["a", "b"], "the right text_key reads it"


def _response(writer, url: str, warc_headers: dict):
    body = b"<html><body><p>A page with enough words to be a document.</p></body></html>"
    http = StatusAndHeaders("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
    return writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http, warc_headers_dict=warc_headers)


@pytest.mark.parametrize("drop", ["WARC-Target-URI", "WARC-Date"])
def test_a_warc_response_without_its_uri_or_date_is_a_bad_record_not_a_crash(tmp_path, drop):
    path = tmp_path / "crawl.warc.gz"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        writer.write_record(_response(writer, "https://example.org/a", {"WARC-Date": "2024-05-01T10:00:00Z"}))
        broken = _response(writer, "https://example.org/b", {"WARC-Date": "2024-05-01T10:00:00Z"})
        broken.rec_headers.remove_header(drop)
        writer.write_record(broken)
    # warcio itself cannot parse a response without its URI; one without its date makes no document
    why = "warcio cannot parse it, a header it needs is missing" if drop == "WARC-Target-URI" else f"a response record without its {drop}"
    with pytest.raises(BadInputFile, match=rf"{path}.*after 1 documents.*record 1 at byte [1-9]\d*: {why}"):
        read(path, "warc", "fail")
    texts, stats = read(path, "warc", "skip")
    assert len(texts) == 1 and stats.get("bad_files") == 1


def test_a_run_whose_whole_input_was_bad_files_has_no_documents_and_says_why(tmp_path):
    """From the reader's own stats to the gather job's verdict: every file skipped as bad
    is no document at all; one good document anywhere is not an empty run."""
    from datatrove.utils.stats import PipelineStats

    from aistack.data.stats import step_rows
    from aistack.data.stats_report import no_documents

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["wrong column"]}), path)
    paths_file = tmp_path / "paths.txt"
    paths_file.write_text(path.name + "\n")
    reader = make_reader("parquet", str(tmp_path), str(paths_file), "skip")
    assert list(reader.run(rank=0, world_size=1)) == []
    rows = step_rows(json.loads(PipelineStats([reader]).to_json()))  # what a task's stats file holds
    table = {"jobs": [{"job": "filter", "tasks": 2, "steps": rows}]}
    assert no_documents(table) == ("job filter read no document from the whole input (2 tasks): "
                                   "1 bad input files skipped (on_bad_file: skip)")
    rows[0]["documents_out"] = 1
    assert no_documents(table) is None
    assert no_documents({"jobs": [{"job": "clusters", "tasks": 1, "steps": []}]}) is None
