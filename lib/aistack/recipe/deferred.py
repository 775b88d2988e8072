"""Paths a recipe may name before they exist: outputs of earlier pipeline stages.

A stage of a pipeline is validated when the whole pipeline is planned, before the stages
it reads from have run. Inside `deferring(...)` the validators that check a path exists
(or expand it: input files, checkpoint step directories) leave a path that lies under an
upstream stage's run directory as it is; the job validates it again on the node, where
the upstream stage has finished. Such a path is never expanded at planning time even when
it exists, so a stage's identity (its run directory) does not change between the first
run of a pipeline and a rerun.

An upstream stage that writes its main output elsewhere (an s3:// URL: KindSpec.moved_outputs)
is upstream by that location too.

`aistack plan` / `--dry-run` may also defer inputs that are missing on the planning
machine (a cluster's crawl storage seen from a laptop): they are reported, not errors.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from pathlib import Path

from aistack.recipe.urls import is_url


@dataclass
class Deferral:
    # upstream run directory -> how many files its main output has (shards), when known
    upstream: dict[str, int | None] = field(default_factory=dict)
    allow_missing: bool = False  # plan / dry-run: missing paths are noted, not errors
    missing: list[str] = field(default_factory=list)
    deferred: set[str] = field(default_factory=set)  # paths left for the node to check


_current: contextvars.ContextVar[Deferral | None] = contextvars.ContextVar("aistack_deferral", default=None)


@contextlib.contextmanager
def deferring(upstream: dict[str, int | None] | None = None, allow_missing: bool = False):
    deferral = Deferral({_normal(k): v for k, v in (upstream or {}).items()}, allow_missing)
    token = _current.set(deferral)
    try:
        yield deferral
    finally:
        _current.reset(token)


def _normal(path: str) -> str:
    """An absolute path, or a URL as it is (less a trailing slash)."""
    return str(path).rstrip("/") if is_url(path) else os.path.abspath(os.path.expanduser(path))


def _upstream_of(path: str) -> str | None:
    deferral = _current.get()
    if deferral is None:
        return None
    full = _normal(path)
    for root in deferral.upstream:
        if full == root or full.startswith(root + ("/" if "://" in root else os.sep)):
            return root
    return None


def is_deferred(path: str) -> bool:
    """True for a path an upstream stage will produce (checked again when the job runs)."""
    if _upstream_of(path) is None:
        return False
    _current.get().deferred.add(path)
    return True


def defer_missing(path: str) -> bool:
    """In plan/dry-run mode, note a missing path and say it may be skipped."""
    deferral = _current.get()
    if deferral is None or not deferral.allow_missing or Path(path).expanduser().exists():
        return False
    deferral.missing.append(str(Path(path).expanduser().absolute()))
    return True


def defer_remote(url: str) -> bool:
    """In plan/dry-run mode, note a remote input (s3://...) that could not be listed from here."""
    deferral = _current.get()
    if deferral is None or not deferral.allow_missing:
        return False
    deferral.missing.append(url)
    return True


def expected_shards(paths: list[str]) -> int | None:
    """Shards that deferred inputs will hold: the upstream stages' array sizes, when known."""
    deferral = _current.get()
    if deferral is None:
        return None
    counts = [deferral.upstream.get(_upstream_of(p) or "") for p in paths if is_deferred(p)]
    known = [c for c in counts if c]
    return sum(known) if known else None


def noted_missing(path: str) -> bool:
    """A path plan/dry-run found missing (or unreachable) and noted instead of failing."""
    deferral = _current.get()
    return deferral is not None and path in deferral.missing
