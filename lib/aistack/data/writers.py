"""Writers and the columns of the documents a data job writes."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

# Fixed columns, so every shard's parquet has the same schema whatever a document's
# metadata holds; anything else in metadata is dropped on output.
COLUMNS = ("text", "id", "url", "date", "language", "language_score")


def document_row(writer, document: Document) -> dict:
    meta = document.metadata
    row = {"text": document.text, "id": str(document.id)}
    row["url"] = meta.get("url")
    row["date"] = None if meta.get("date") is None else str(meta.get("date"))
    row["language"] = meta.get("language")
    score = meta.get("language_score")
    row["language_score"] = None if score is None else float(score)
    return row


def parquet_schema():
    import pyarrow as pa

    return pa.schema([("text", pa.string()), ("id", pa.string()), ("url", pa.string()), ("date", pa.string()),
                      ("language", pa.string()), ("language_score", pa.float64())])


def make_writer(fmt: str, folder: str):
    """One output file per task: ${rank}.parquet or ${rank}.jsonl.gz."""
    if fmt == "parquet":
        return ParquetWriter(folder, output_filename="${rank}.parquet", adapter=document_row, schema=parquet_schema())
    return JsonlWriter(folder, output_filename="${rank}.jsonl.gz", adapter=document_row)


def removed_writer(folder: str):
    """Documents a filter removed, for inspection (its own metadata kept: scores, reasons)."""
    return JsonlWriter(folder, output_filename="${rank}.jsonl.gz", expand_metadata=True)
