"""What each recipe kind leaves in its run directory for later stages to read.

`${stages.NAME.output}` is a stage's main output, `${stages.NAME.output.KEY}` another
one, `${stages.NAME.run}` its run directory.
"""

from __future__ import annotations

from pathlib import Path

_CHECKPOINTS = "jobs/train/tasks/00000/checkpoints"

OUTPUTS: dict[str, dict[str, str]] = {
    "filter": {"output": "output/filter/documents"},
    "dedup": {"output": "output/dedup/documents"},
    "tokenize": {"output": "output/tokenize/data", "tokenizer": "output/tokenize/tokenizer.json"},
    "pretrain": {"output": _CHECKPOINTS},
    "sft": {"output": _CHECKPOINTS},
    "distill": {"output": _CHECKPOINTS},
    "evaluate": {"output": "results.json", "csv": "results.csv"},
    "bench": {"output": "report.md", "csv": "results.csv"},
    "smoke": {"output": "jobs/reduce/tasks/00000/DONE"},
    "report": {"output": "report.md"},
}

# The job whose array tasks each write one file of the main output: a later data stage
# reading it gets that many shards by default.
SHARDED_BY: dict[str, str] = {"filter": "filter", "dedup": "filter"}


def references(stage: str, kind: str, run_path: Path) -> dict[str, str]:
    """`stages.<stage>.output[.KEY]` and `stages.<stage>.run` -> absolute paths."""
    refs = {f"stages.{stage}.run": str(run_path)}
    for key, rel in OUTPUTS.get(kind, {}).items():
        name = f"stages.{stage}.output" if key == "output" else f"stages.{stage}.output.{key}"
        refs[name] = str(run_path / rel)
    return refs
