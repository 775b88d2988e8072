"""metrics.jsonl: one JSON object per logged step, kept consistent across resumes."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from aistack.rundir import append_jsonl, atomic_write_text, read_jsonl

TYPE_CHECKING = False  # typing is an import a small task can do without
if TYPE_CHECKING:
    from typing import Any


class MetricsFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """On resume from a checkpoint at `step`, drop records logged after it, so the
        file holds one trace without the steps that are about to be redone. Returns the
        records kept."""
        if not self.path.exists():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if _step(line) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        return [json.loads(line) for line in kept]

    def log(self, step: int, values: dict[str, Any]) -> None:
        append_jsonl(self.path, {"step": step, "time": time.time(), **{k: _plain(v) for k, v in values.items()}})

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(path))


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", -1))
    except json.JSONDecodeError:  # a torn last line from a killed writer
        return 1 << 62


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
