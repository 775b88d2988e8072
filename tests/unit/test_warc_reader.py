"""WARC records -> documents: the payload type from the HTTP header when the crawler did
not identify it, every skipped record counted by reason, a loud warning when none is kept."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from aistack.data.readers import make_reader
from aistack.data.staged_run import run_staged
from aistack.data.stats import step_rows, task_result
from aistack.rundir import RunDir, atomic_write_json

XHTML = ('<?xml version="1.0" encoding="utf-8"?>\n'
         '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
         '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Notes</title></head>'
         '<body><p>Served as text/html by a crawler that names no payload type. Café.</p></body></html>')
# cchardet alone reads these latin-1 bytes as IBM865 (box drawing characters): only the
# header's charset gets the letters right.
LATIN1 = "<html><head><title>Ordliste</title></head><body><p>Ångström æøå ÆØÅ</p></body></html>"
# UTF-8 bytes whose header says latin-1 (a common mislabel): UTF-8 wins, as in datatrove.
MISLABELLED = "<html><body><p>Crème brûlée, naïve café.</p></body></html>"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def _response(writer, url, body: bytes, content_type: str | None, payload_type: str | None = None):
    headers = [("Content-Type", content_type)] if content_type else []
    http = StatusAndHeaders("200 OK", [*headers, ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
    warc = {"WARC-Date": "2024-05-01T10:00:00Z"} | ({"WARC-Identified-Payload-Type": payload_type} if payload_type else {})
    return writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http, warc_headers_dict=warc)


def _request(writer, url):
    http = StatusAndHeaders(f"GET /{url.split('/', 3)[3]} HTTP/1.1", [("Host", url.split("/")[2])], is_http_request=True)
    return writer.create_warc_record(url, "request", http_headers=http)


def write_warc(path: Path, records) -> Path:
    """records: callables writer -> record, written in order (gzipped, as crawlers do)."""
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "another-crawler/2.1"}))
        for make in records:
            writer.write_record(make(writer))
    return path


def read_all(path: Path):
    paths_file = path.parent / "paths.txt"
    paths_file.write_text(path.name + "\n")
    reader = make_reader("warc", str(path.parent), str(paths_file), "fail")
    docs = list(reader.run(rank=0, world_size=1))
    return docs, {k: v.total for k, v in reader.stats.stats.items()}


def test_html_without_payload_type_is_kept_and_skipped_records_are_counted(tmp_path):
    import magic

    assert magic.from_buffer(XHTML.encode(), mime=True) == "text/xml", "libmagic alone would drop this XHTML page"
    warc = write_warc(tmp_path / "crawl.warc.gz", [
        lambda w: _request(w, "https://example.org/notes"),
        lambda w: _response(w, "https://example.org/notes", XHTML.encode(), "text/html; charset=utf-8"),
        lambda w: _response(w, "https://example.org/logo.png", PNG, "image/png"),
        lambda w: _response(w, "https://example.org/empty", b"", "text/html"),
        lambda w: _response(w, "https://example.dk/ordliste", LATIN1.encode("latin-1"), "Text/HTML; Charset=\"ISO-8859-1\""),
        lambda w: _response(w, "https://example.fr/dessert", MISLABELLED.encode(), "text/html; charset=iso-8859-1"),
        lambda w: _response(w, "https://example.org/feed", b"<?xml version='1.0'?><rss/>", "text/html", payload_type="application/rss+xml"),
        # not UTF-8, an unknown charset, and cchardet's guess (UTF-8) fails too
        lambda w: _response(w, "https://example.org/broken", b"<html><body><p>\xff</p></body></html>", "text/html; charset=x-nonesuch"),
    ])
    docs, stats = read_all(warc)

    by_url = {d.metadata["url"]: d for d in docs}
    assert sorted(by_url) == ["https://example.dk/ordliste", "https://example.fr/dessert", "https://example.org/notes"]
    assert by_url["https://example.org/notes"].text == XHTML
    assert by_url["https://example.dk/ordliste"].text == LATIN1, "decoded with the header's charset"
    assert by_url["https://example.fr/dessert"].text == MISLABELLED, "valid UTF-8 stays UTF-8"
    notes = by_url["https://example.org/notes"]
    assert notes.id.startswith("<urn:uuid:") and notes.metadata["date"] == "2024-05-01T10:00:00Z"
    assert notes.metadata["file_path"].endswith("crawl.warc.gz")

    assert stats["records"] == 9  # warcinfo, request and 7 responses
    assert stats["documents"] == 3
    assert stats["skipped_not_response"] == 2
    assert stats["skipped_not_html"] == 2, "the PNG, and the feed its payload type names (over the HTTP header)"
    assert stats["not_html:image/png"] == 1 and stats["not_html:application/rss+xml"] == 1
    assert stats["skipped_empty"] == 1
    assert stats["skipped_undecodable"] == 1


def test_a_task_that_keeps_no_record_warns_in_its_log_result_and_report(tmp_path):
    from aistack.data.stats_report import build_report
    from aistack.report.page import build

    inputs = tmp_path / "in"
    inputs.mkdir()
    warc = write_warc(inputs / "images.warc.gz", [
        lambda w: _request(w, "https://example.org/a.png"),
        lambda w: _response(w, "https://example.org/a.png", PNG, "image/png"),
        lambda w: _response(w, "https://example.org/b.png", PNG, None),  # libmagic: not HTML either
        lambda w: _response(w, "https://example.org/c.xml", XHTML.encode(), None),  # no header at all: libmagic's text/xml
    ])
    (inputs / "paths.txt").write_text(warc.name + "\n")
    run = RunDir(tmp_path / "run")
    out = run_staged(lambda staging: [make_reader("warc", str(inputs), str(inputs / "paths.txt"), "fail")], rank=0, world_size=1,
                     logging_dir=run.path / "datatrove", staging=run.path / "staging", final=run.path / "output")

    expected = "read 5 WARC records but kept none: not_html 3 (application/octet-stream 1, image/png 1, text/xml 1), not_response 2"
    warned = [line for line in (run.path / "datatrove" / "logs" / "task_00000.log").read_text().splitlines() if "kept none" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], warned
    assert f"task 0 of 1 (input files {warc}) {expected}" in warned[0]

    rows = step_rows(out["steps"])
    assert rows[0]["records"] == 5 and rows[0]["documents_out"] == 0
    assert rows[0]["skipped_by"] == {"not_html": 3, "not_response": 2}
    result = task_result(0, rows, out["seconds"], [str(warc)], [])
    assert result["warnings"] == [f"task 0 (input files {warc}) {expected}"]

    atomic_write_json(run.path / "plan.json", {"kind": "filter", "jobs": [
        {"name": "filter", "entry": "filter", "tasks": 1}, {"name": "stats", "entry": "data_stats", "tasks": 1}]})
    run.mark_done("filter", 0, result)
    table = build_report(run)["table"]
    assert table["warnings"] == [f"job filter: task 0 (input files {warc}) {expected}"]
    assert json.loads((run.path / "stats.json").read_text())["warnings"] == table["warnings"]
    assert "not_html=3;not_response=2" in (run.path / "stats.csv").read_text()
    page = build("crawl", [{"name": "crawl", "kind": "filter", "run": str(run.path)}], tmp_path / "report")
    assert f"warning: job filter: task 0 (input files {warc}) {expected}" in Path(page["markdown"]).read_text()


@pytest.mark.parametrize("content_type, kept", [
    ("application/xhtml+xml", True),
    ("TEXT/HTML ; charset=utf-8", True),
    ("text/xml", False),
    ("", True),  # an empty header says nothing: libmagic decides (text/html here)
])
def test_http_content_type_decides_when_the_crawler_names_no_payload_type(tmp_path, content_type, kept):
    page = b"<!DOCTYPE html><html><head><title>t</title></head><body><p>Hello there.</p></body></html>"
    docs, stats = read_all(write_warc(tmp_path / "one.warc.gz", [lambda w: _response(w, "https://example.org/", page, content_type)]))
    assert len(docs) == int(kept)
    assert stats.get("skipped_not_html", 0) == int(not kept)
