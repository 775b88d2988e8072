"""datatrove readers that never lose the rest of a shard to one bad file.

A truncated gzip, a file that is not WARC/jsonl/parquet, or an unreadable file either
stops the task with an error naming the file (`on_bad_file: fail`), or is counted under
the reader's `bad_files` stat and the shard goes on with its next file (`skip`). The
documents read from a bad file before the damage are kept and counted either way.
An empty file is not bad: it simply has no documents.
"""

from __future__ import annotations

import zlib
from typing import Literal

from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
from datatrove.utils.logging import logger

OnBadFile = Literal["fail", "skip"]


class BadInputFile(RuntimeError):
    pass


def _bad_file_errors() -> tuple[type[BaseException], ...]:
    import json

    import pyarrow
    from warcio.exceptions import ArchiveLoadFailed

    return (EOFError, zlib.error, OSError, ArchiveLoadFailed, NotAWarcFile, json.JSONDecodeError, pyarrow.ArrowException, UnicodeDecodeError)


class _Checked:
    """Mixin over a datatrove reader: wraps read_file with the bad-file policy."""

    on_bad_file: OnBadFile = "fail"

    def read_file(self, filepath: str):
        read = 0
        try:
            inner = self._read_warc(filepath) if isinstance(self, WarcReader) else super().read_file(filepath)  # type: ignore[misc]
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


class CheckedWarcReader(_Checked, WarcReader):
    def _read_warc(self, filepath: str):
        # warcio yields nothing (no error) for some non-WARC files: check the first bytes.
        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            head = f.read(8)
        if head and not head.startswith(b"WARC/") and not head[:1].isdigit() and not head.startswith(b"filedesc"):
            raise NotAWarcFile(f"not a WARC file (it starts with {head!r})")
        yield from WarcReader.read_file(self, filepath)


class CheckedJsonlReader(_Checked, JsonlReader):
    pass


class CheckedParquetReader(_Checked, ParquetReader):
    pass


def make_reader(fmt: str, data_folder: str, paths_file: str, on_bad_file: OnBadFile, text_key: str = "text", id_key: str = "id"):
    cls = {"warc": CheckedWarcReader, "jsonl": CheckedJsonlReader, "parquet": CheckedParquetReader}[fmt]
    kwargs = {} if fmt == "warc" else {"text_key": text_key, "id_key": id_key}
    if fmt == "parquet":
        kwargs["read_metadata"] = True
    reader = cls(data_folder, paths_file=paths_file, **kwargs)
    reader.on_bad_file = on_bad_file
    return reader
