"""datatrove readers that never lose the rest of a shard to one bad file, and never
succeed on nothing.

A truncated gzip, a file that is not WARC/jsonl/parquet, an unreadable file, a record
that cannot be decoded (a jsonl line that is not UTF-8, not JSON, not an object or
without the text key; a parquet file without the text column; a WARC response without
its target URI or date) either stops the task with an error naming the file and the
line or record (`on_bad_file: fail`), or is counted under the reader's `bad_files` stat
and the shard goes on with its next file (`skip`). The documents read from a bad file
before the damage are kept and counted either way. An empty file is not bad: it simply
has no documents (a stage whose whole input has none fails in its stats job).

WARC records become documents here (not in datatrove's `process_record`), so that
crawls without `WARC-Identified-Payload-Type` keep their HTML: a record's payload type
is its `WARC-Identified-Payload-Type`, else the media type of its HTTP `Content-Type`
header, and only when neither is there the type libmagic guesses from the bytes (which
calls XHTML with an XML prologue `text/xml`). Kept: text/html, application/xhtml+xml,
and text/plain in `conversion` (WET) records. Bytes are decoded as UTF-8, else with the
HTTP header's `charset=`, else with the charset cchardet detects. The documents (text,
id, url, date) are those datatrove makes from the same records.

Stats of the WARC reader, besides datatrove's `documents` and `input_files`:

  records               every WARC record read
  skipped_not_response  request, metadata, warcinfo, revisit... records: normal in a crawl
  skipped_not_html      responses whose payload type is not HTML (nor WET text)
  not_html:<type>       the same, by payload type (`not_html:image/png`, `not_html:text/xml`)
  skipped_empty         responses with no payload bytes (or no text)
  skipped_undecodable   payloads no charset decodes

A task whose WARC records were all skipped (records > 0, documents 0) logs a warning
naming its files and these counts; the data run's stats table and report show it too.
"""

from __future__ import annotations

import contextlib
import io
import zlib
from collections import Counter
from typing import TYPE_CHECKING, Literal

from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
from datatrove.utils.logging import logger

from aistack.data.stats import nothing_kept

if TYPE_CHECKING:
    from warcio.recordloader import ArcWarcRecord

OnBadFile = Literal["fail", "skip"]

HTML_TYPES = ("text/html", "application/xhtml+xml")


class BadInputFile(RuntimeError):
    pass


class BadRecord(ValueError):
    """A line or record of an input file that makes no document: the file is bad."""


def _bad_file_errors() -> tuple[type[BaseException], ...]:
    import json

    import pyarrow
    from warcio.exceptions import ArchiveLoadFailed

    return (EOFError, zlib.error, OSError, ArchiveLoadFailed, NotAWarcFile, BadRecord, json.JSONDecodeError, pyarrow.ArrowException,
            UnicodeDecodeError)


class _Checked:
    """Mixin over a datatrove reader: wraps read_file with the bad-file policy."""

    on_bad_file: OnBadFile = "fail"

    def read_file(self, filepath: str):
        read = 0
        try:
            inner = self._read_checked(filepath)
            for document in inner:
                read += 1
                yield document
        except _bad_file_errors() as err:
            where = self.data_folder.resolve_paths(filepath)  # type: ignore[attr-defined]
            why = f"{type(err).__name__}: {err}".strip()
            if self.on_bad_file == "fail":
                raise BadInputFile(
                    f"bad input file {where} after {read} documents ({why}); "
                    "fix or remove it, or set input.on_bad_file: skip to count and skip such files"
                ) from err
            self.stat_update("bad_files")  # type: ignore[attr-defined]
            logger.warning(f"skipping the rest of bad input file {where} after {read} documents: {why}")


class NotAWarcFile(ValueError):
    pass


def _media_type(value: str | None) -> str | None:
    """'Text/HTML; charset=UTF-8' -> 'text/html'; None when empty."""
    media = (value or "").split(";", 1)[0].strip().lower()
    return media or None


def _charset(content_type: str | None) -> str | None:
    """'text/html; charset="ISO-8859-1"' -> 'ISO-8859-1'."""
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        value = value.strip().strip("'\"")
        if key.strip().lower() == "charset" and value:
            return value
    return None


def decode_payload(content: bytes, header_charset: str | None) -> str | None:
    """UTF-8 first (as datatrove does, so valid UTF-8 mislabelled latin-1 stays right), then
    the HTTP header's charset, then cchardet's guess; None when none of them decodes it."""
    for charset in ("utf-8", header_charset):
        if charset:
            try:
                return content.decode(charset)
            except (UnicodeDecodeError, LookupError):
                pass
    import cchardet

    detected = cchardet.detect(content)["encoding"]
    if not detected or detected.lower() in ("utf-8", (header_charset or "").lower()):
        return None
    try:
        return content.decode(detected)
    except (UnicodeDecodeError, LookupError):
        return None


def process_record(record: "ArcWarcRecord") -> tuple[dict | None, str, str | None]:
    """One WARC record -> (document dict or None, why it was skipped or "", payload type)."""
    if record.rec_type not in ("response", "conversion"):  # WET files have "conversion" records
        return None, "not_response", None
    http = record.http_headers
    content_type = http.get_header("Content-Type") if http is not None else None
    mime = _media_type(record.rec_headers.get_header("WARC-Identified-Payload-Type")) or _media_type(content_type)
    accepted = lambda m: m in HTML_TYPES or (record.rec_type == "conversion" and m == "text/plain")  # noqa: E731
    if mime is not None and not accepted(mime):
        return None, "not_html", mime
    content = record.content_stream().read()
    if not content:
        return None, "empty", mime
    if mime is None:  # neither header says: guess from the bytes
        import magic

        mime = magic.from_buffer(content, mime=True)
        if not accepted(mime):
            return None, "not_html", mime
    text = decode_payload(content, _charset(content_type))
    if text is None:
        return None, "undecodable", mime
    headers = record.rec_headers
    url = headers.get_header("WARC-Target-URI") or dict(headers.headers).get("uri")  # older (ARC) formats
    date = headers.get_header("WARC-Date") or dict(headers.headers).get("archive-date")
    for header, value in (("WARC-Target-URI", url), ("WARC-Date", date)):
        if not value:
            raise BadRecord(f"a {record.rec_type} record without its {header} header")
    return {"text": text, "id": headers.get_header("WARC-Record-ID"), "url": url, "date": date}, "", mime


class CheckedWarcReader(_Checked, WarcReader):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._counts: Counter = Counter()  # the stats above, for this task's warning
        self._files: list[str] = []

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self._counts, self._files = Counter(), []
        yield from super().run(data, rank, world_size)
        if self._counts["records"] and not self._counts["documents"]:
            shown = ", ".join(self._files[:5]) + (f" and {len(self._files) - 5} more" if len(self._files) > 5 else "")
            skipped = {k.removeprefix("skipped_"): v for k, v in self._counts.items() if k.startswith("skipped_")}
            types = {k.removeprefix("not_html:"): v for k, v in self._counts.items() if k.startswith("not_html:")}
            logger.warning(f"task {rank} of {world_size} (input files {shown}) {nothing_kept(self._counts['records'], skipped, types)}")

    def _count(self, *names: str) -> None:
        self.stat_update(*names)
        self._counts.update(names)

    def _read_checked(self, filepath: str):
        from warcio.archiveiterator import ArchiveIterator

        self._files.append(self.data_folder.resolve_paths(filepath))
        with contextlib.ExitStack() as opened:
            f = opened.enter_context(self.data_folder.open(filepath, "rb", compression=self.compression))
            # warcio yields nothing (no error) for some non-WARC files: check the first bytes.
            head = f.read(8)
            if head and not head.startswith(b"WARC/") and not head[:1].isdigit() and not head.startswith(b"filedesc"):
                raise NotAWarcFile(f"not a WARC file (it starts with {head!r})")
            try:  # the same handle, rewound: an object store's file is fetched once, not twice
                f.seek(0)
            except (OSError, io.UnsupportedOperation):  # a stream that cannot go back
                f = opened.enter_context(self.data_folder.open(filepath, "rb", compression=self.compression))
            records = ArchiveIterator(f)
            for ri, record in enumerate(_parsed(records)):
                with self.track_time():
                    self._count("records")
                    try:
                        data, why, mime = process_record(record)
                    except BadRecord as err:
                        raise BadRecord(f"record {ri} at byte {records.get_record_offset()}: {err}") from None
                    document = self.get_document_from_dict(data, filepath, ri) if data else None
                    if document is None:
                        why = why or "empty"  # a document without text
                        self._count(f"skipped_{why}")
                        if why == "not_html":
                            self._count(f"not_html:{mime[:80]}")
                        continue
                    self._counts["documents"] += 1
                yield document


def _parsed(records):
    """warcio's records; a record warcio itself cannot parse (a response without its
    target URI trips it) is a bad record, named by its index and byte offset."""
    iterator = iter(records)
    index = 0
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as err:
            at = getattr(records, "offset", None)  # where the record it could not parse starts
            raise BadRecord(f"record {index}{f' at byte {at}' if at is not None else ''}: warcio cannot parse it, a header "
                            f"it needs is missing, such as WARC-Target-URI ({type(err).__name__}: {str(err)[:200]})") from None
        yield record
        index += 1


class CheckedJsonlReader(_Checked, JsonlReader):
    def _read_checked(self, filepath: str):
        """datatrove's JsonlReader logs and skips a line it cannot read, and ends the file
        quietly at a byte that is not UTF-8: here either makes the file bad."""
        import base64

        import orjson

        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            for li, raw in enumerate(f):
                with self.track_time():
                    where = f"line {li + 1}"
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as err:
                        raise BadRecord(f"{where}: not UTF-8 ({err.reason} at byte {err.start} of the line)") from None
                    if not line.strip():
                        continue
                    try:
                        data = orjson.loads(line)
                    except orjson.JSONDecodeError as err:
                        raise BadRecord(f"{where}: not JSON ({err})") from None
                    if not isinstance(data, dict):
                        raise BadRecord(f"{where}: a JSON {type(data).__name__}, not an object")
                    if self.text_key not in data:
                        raise BadRecord(f"{where}: no {self.text_key!r} key (its keys: {', '.join(list(data)[:10])}); "
                                        "set input.text_key to the key that holds the text")
                    for media in data.get("media", []):  # as datatrove's reader
                        if media.get("media_bytes") is not None:
                            media["media_bytes"] = base64.decodebytes(media["media_bytes"].encode("ascii"))
                    document = self.get_document_from_dict(data, filepath, li)
                if document:
                    yield document


class CheckedParquetReader(_Checked, ParquetReader):
    def _read_checked(self, filepath: str):
        """A file without the text (or id) column makes no document: it is bad."""
        import pyarrow.parquet as pq

        with self.data_folder.open(filepath, "rb") as f:
            columns = pq.ParquetFile(f).schema_arrow.names
        if self.text_key not in columns:
            raise BadRecord(f"no {self.text_key!r} column (its columns: {', '.join(columns[:10])}); "
                            "set input.text_key to the column that holds the text")
        yield from ParquetReader.read_file(self, filepath)  # datatrove's own (super() is the checked one)


def make_reader(fmt: str, data_folder: str, paths_file: str, on_bad_file: OnBadFile, text_key: str = "text", id_key: str = "id"):
    cls = {"warc": CheckedWarcReader, "jsonl": CheckedJsonlReader, "parquet": CheckedParquetReader}[fmt]
    kwargs = {} if fmt == "warc" else {"text_key": text_key, "id_key": id_key}
    if fmt == "parquet":
        kwargs["read_metadata"] = True
    reader = cls(data_folder, paths_file=paths_file, **kwargs)
    reader.on_bad_file = on_bad_file
    return reader
