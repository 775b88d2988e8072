"""Data stage inputs and outputs on object stores (s3://, gs://, ... any fsspec URL).

Reading and writing go through fsspec (datatrove's DataFolder does the same); credentials
come only from the environment (AWS_* variables, the boto/fsspec chain), never from a
recipe: a URL carrying them (`s3://KEY:SECRET@bucket/...`, a presigned query) is refused.

`*.paths` / `*.paths.gz` files list input files as Common Crawl publishes them: one key
per line, relative to a base URL or folder (`input.paths_base`, by default the listing's
own folder).
"""

from __future__ import annotations

import gzip
import io

from aistack.recipe.urls import check_no_credentials, is_url  # noqa: F401  (data's own names too)

LISTING_SUFFIXES = (".paths", ".paths.gz")


def is_listing(path: str) -> bool:
    return str(path).endswith(LISTING_SUFFIXES)


def fs_and_path(url: str):
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def join(base: str, rel: str) -> str:
    return base.rstrip("/") + "/" + rel.lstrip("/")


def expand_remote(spec: str, suffixes: tuple[str, ...]) -> list[str]:
    """A URL of a file, a folder (searched recursively for `suffixes`) or a glob -> file URLs."""
    fs, path = fs_and_path(spec)
    proto = spec.split("://", 1)[0]
    unstrip = lambda p: f"{proto}://{p}"  # noqa: E731
    if any(c in path for c in "*?["):
        return [unstrip(p) for p in fs.glob(path) if fs.isfile(p)]
    if fs.isfile(path):
        return [spec]
    if fs.isdir(path):
        return [unstrip(p) for p in fs.find(path) if p.endswith(suffixes)]
    return []


def read_listing(listing: str, base: str | None) -> list[str]:
    """A `*.paths[.gz]` file (local or URL) -> the files it lists, resolved against `base`."""
    import fsspec

    with fsspec.open(listing, "rb") as f:
        raw = f.read()
    if listing.endswith(".gz"):
        raw = gzip.decompress(raw)
    base = base if base is not None else listing.rsplit("/", 1)[0]
    out = []
    for line in io.StringIO(raw.decode("utf-8")):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line if is_url(line) or line.startswith("/") else join(base, line))
    return out


def common_root(files: list[str]) -> str:
    """The deepest folder holding every file, URLs included (same scheme and bucket)."""
    import os

    if not any(is_url(f) for f in files):
        return os.path.commonpath([os.path.dirname(f) for f in files])
    schemes = {f.split("://", 1)[0] for f in files}
    if len(schemes) != 1 or not all(is_url(f) for f in files):
        raise ValueError(f"input files mix storage locations ({sorted(schemes)}); one location per stage")
    scheme = schemes.pop()
    dirs = [f.split("://", 1)[1].rsplit("/", 1)[0].split("/") for f in files]
    prefix = dirs[0]
    for d in dirs[1:]:
        n = 0
        while n < min(len(prefix), len(d)) and prefix[n] == d[n]:
            n += 1
        prefix = prefix[:n]
    if not prefix:
        raise ValueError("input files span several buckets; one bucket per stage")
    return f"{scheme}://" + "/".join(prefix)


def relative(file: str, root: str) -> str:
    import os

    if is_url(file):
        return file[len(root):].lstrip("/")
    return os.path.relpath(file, root)


def remote_stat(url: str) -> dict:
    """{size, etag} of an object: fsspec answers from the listing it keeps of the object's
    folder when that was listed (expanding a folder or glob input), else with one request.
    The ETag (or the store's own checksum) changes when the object is rewritten."""
    fs, path = fs_and_path(url)
    info = fs.info(path)
    out = {"size": int(info.get("size") or 0)}
    tag = next((info[key] for key in ("ETag", "etag", "md5Hash", "crc32c", "checksum") if info.get(key)), None)
    if tag is not None:
        out["etag"] = str(tag).strip('"')
    return out


def upload(local: str, url: str) -> None:
    fs, path = fs_and_path(url)
    fs.put_file(local, path)


def size(path: str) -> int:
    fs, p = fs_and_path(path)
    try:
        return int(fs.size(p) or 0)
    except (FileNotFoundError, OSError):
        return 0
