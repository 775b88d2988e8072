"""Input files -> the paths file datatrove shards by rank (files[rank::world_size])."""

from __future__ import annotations

from pathlib import Path

from aistack.data.remote import common_root, relative

from aistack.rundir import atomic_write_text


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
