"""Input files -> the paths file datatrove shards by rank (files[rank::world_size]).

A data stage's inputs are fixed when it is planned: the manifest (every input file with its
size and modification time; a remote object with its size and ETag, from the folder listing
fsspec already made; an object a `*.paths` listing names by its path, the listing itself by
its size and ETag) is part of the run's identity and is written to the run directory, and its
tasks take their shards from it. A file added to the
input folder afterwards is a new run when the recipe is planned again, never a reshuffle of
a run's shards; a file changed or removed under a planned run stops its task, saying so.
Paths an upstream stage writes (a pipeline's `${stages...}`) are listed when the task runs:
the upstream stage's own identity fixes them.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from aistack.data.remote import common_root, is_listing, is_url, read_listing, relative, remote_stat
from aistack.recipe.deferred import is_deferred
from aistack.rundir import RunDir, atomic_write_text, read_input_manifest


class InputsChanged(RuntimeError):
    """An input file of a planned run changed, vanished or appeared since it was planned."""


def input_manifest(block: Any) -> dict[str, Any]:
    """The input files of an InputBlock as planned now: {"files": [{path, size, mtime_ns or
    etag}], "deferred": [paths an upstream stage writes], "listings": [{path, size, etag}]}."""
    listings = [p for p in block.paths if is_listing(p) and not is_deferred(p)]
    # A listing may name thousands of objects: one request each would be a plan of minutes.
    named = {f for p in listings for f in read_listing(p, block.paths_base) if is_url(f)}
    files = [{"path": f, **({} if f in named else _stat(f))} for f in block.files()]
    manifest = {"files": files, "deferred": [p for p in block.paths if is_deferred(p)]}
    if listings:
        manifest["listings"] = [{"path": p, **_stat(p)} for p in listings]
    return manifest


def planned_files(run: RunDir, block: Any, shard: tuple[int, int] | None = None) -> list[str]:
    """The files a task reads: the manifest's (checked unchanged), plus what the paths an
    upstream stage wrote hold now; without a manifest (a run planned before there was one),
    the input paths listed now. `shard` (rank, world size): the task reads files[rank::world
    size], and only those are checked (8000 tasks each checking 8000 files would be 64M
    metadata calls on a shared file system)."""
    manifest = read_input_manifest(run)
    if manifest is None:
        return block.files()
    planned = {e["path"]: e for e in manifest["files"]}
    files = set(planned)
    upstream = manifest["deferred"]
    if upstream:  # on the node nothing is deferred: the listing has the upstream stages' files too
        files |= {f for f in block.files() if any(_within(f, d) for d in upstream)}
    files = sorted(files)
    mine = files if shard is None else files[shard[0]::shard[1]]
    changed = [f"{path} ({why})" for path in mine if path in planned and (why := _changed(planned[path]))]
    if changed:
        raise InputsChanged(f"input files of run {run.name} changed since it was planned: {', '.join(changed[:5])}"
                            f"{f' and {len(changed) - 5} more' if len(changed) > 5 else ''}; its shards were fixed "
                            "then. Restore them, or run the recipe again: changed inputs plan a new run")
    return files


def _within(path: str, spec: str) -> bool:
    if any(c in spec for c in "*?["):
        return fnmatch.fnmatch(path, spec)
    spec = spec.rstrip("/")
    return path == spec or path.startswith(spec + "/")


def _stat(path: str) -> dict[str, Any]:
    if is_url(path):
        return remote_stat(path)
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _changed(entry: dict[str, Any]) -> str:
    if "size" not in entry:
        return ""
    try:
        now = _stat(entry["path"])
    except OSError:  # a missing object too (FileNotFoundError)
        return "gone"
    if now["size"] != entry["size"]:
        return f"size {entry['size']} -> {now['size']}"
    if any(now.get(key) != entry[key] for key in ("mtime_ns", "etag") if key in entry):
        return "modified"
    return ""


def write_paths_file(files: list[str], path: Path) -> tuple[str, Path]:
    """Write the files relative to their common folder; returns (data_folder, paths_file).

    Every task writes the same list in the same order, so datatrove's own sharding
    (line i goes to rank i % world_size) gives each array task a disjoint shard.
    """
    if not files:
        raise ValueError("no input files")
    root = common_root(files)  # a folder, or a URL prefix (s3://bucket/crawl) read through fsspec
    atomic_write_text(path, "".join(relative(f, root) + "\n" for f in files))
    return root, path


def shard_of(files: list[str], rank: int, world_size: int) -> list[str]:
    """The files datatrove gives to `rank` (same rule as get_shard_from_paths_file)."""
    return files[rank::world_size]
