"""A small sample crawl: WARC shards of real HTML with injected pages of known kinds.

The data tests and the tiny end-to-end pipeline read it (`python -m
aistack.data.sample_crawl OUT_DIR`); nothing is downloaded.

Real pages: Debian's Python documentation (python3-doc, /usr/share/doc/python3-doc/html),
served under their docs.python.org URLs as HTTP 200 response records (with warcinfo
and request records around them, as a crawler writes them). Injected, each with a URL
the tests can look up in `Corpus.kinds`:

  non_english   Debian's German/French/Spanish/Italian manual pages (real text), as HTML
  blocklisted   real documentation pages under a domain or URL word of the default blocklist
  boilerplate   real documentation pages with their main content cut out (menus only)
  near_dup      real pages copied to a mirror site with a banner and a few words changed,
                each in another shard than its original (`Corpus.pairs`)
  toxic         real pages copied to a forum with a reader's comment holding words of the
                English bad-words list shipped with the recipes (recipes/data/badwords/en.txt)
"""

from __future__ import annotations

import gzip
import io
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc/python3-doc/html")
MAN_ROOT = Path("/usr/share/man")
DOC_URL = "https://docs.python.org/3.11/"
MIRROR_URL = "https://python-docs-mirror.example-mirror.org/3.11/"
BLOCKED = ("https://www.casino-bonus-online.com/docs/", "https://files.example-host.net/xxx/")
TOXIC_URL = "https://forum.example-board.org/threads/"
# Bumped when the pages change: `main` rewrites a crawl written by an older version.
VERSION = 2
MAN_PAGES = [(lang, page) for lang in ("de", "fr", "es", "it") for page in ("apt-get.8", "apt-cache.8", "apt.8")]


@dataclass
class Corpus:
    shards: list[Path]
    kinds: dict[str, str] = field(default_factory=dict)  # url -> real | non_english | blocklisted | boilerplate | near_dup
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (original url, near-duplicate url)
    # (original url, toxic copy url): a copy is a near-duplicate too when no bad-words filter drops it
    toxic_pairs: list[tuple[str, str]] = field(default_factory=list)
    html: dict[str, str] = field(default_factory=dict)  # url -> the HTML served

    def urls(self, kind: str) -> set[str]:
        return {u for u, k in self.kinds.items() if k == kind}


def real_pages(count: int, min_bytes: int = 6000, max_bytes: int = 60000) -> list[Path]:
    """A fixed, spread-out choice of documentation pages of moderate size."""
    if not DOC_ROOT.is_dir():
        raise FileNotFoundError(f"{DOC_ROOT} is missing: install Debian's python3-doc package (apt-get install python3-doc)")
    pages = sorted(
        p for p in DOC_ROOT.rglob("*.html")
        if min_bytes <= p.stat().st_size <= max_bytes and not p.name.startswith(("genindex", "search", "py-modindex"))
        and "_static" not in p.parts
    )
    step = max(len(pages) // count, 1)
    return pages[::step][:count]


def write_reference(path: Path, crawl_pages: int, count: int = 40) -> Path:
    """Documentation pages that are not in the crawl, as text (jsonl {"id", "text"}, extracted
    with trafilatura as the filter stage extracts): held-out documents that no variant of a
    data recipe trains on, so models trained on different data are measured on the same text."""
    import json

    import trafilatura

    in_crawl = set(real_pages(crawl_pages))
    others = [p for p in real_pages(10 * crawl_pages) if p not in in_crawl]
    step = max(len(others) // count, 1)
    records = []
    for page in others[::step]:
        text = trafilatura.extract(page.read_text("utf-8", "replace"), favor_precision=True)
        if text and len(text.split()) >= 50:
            records.append({"id": DOC_URL + page.relative_to(DOC_ROOT).as_posix(), "text": text})
        if len(records) == count:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tmp.replace(path)
    return path


def roff_to_text(source: str) -> str:
    """The running text of a man page (enough of roff for language identification)."""
    lines = []
    for line in source.splitlines():
        if line.startswith(("'", '.\\"', ".\\\"")):
            continue
        if line.startswith("."):
            _, _, rest = line.partition(" ")
            line = rest.strip('"') if line[1:3] in ("SH", "SS", "B ", "I ", "BR", "IR", "IP", "TP") else ""
        line = re.sub(r"\\f[BIRP]|\\f\(..|\\\(..|\\\[..\]|\\[&e%]|\\-", lambda m: _GLYPHS.get(m.group()[2:].strip("[]"), "-" if m.group() == "\\-" else ""), line)
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# roff glyph escapes used by Debian's translated man pages: \(:u -> ü, ...
_GLYPHS = {":a": "ä", ":o": "ö", ":u": "ü", ":A": "Ä", ":O": "Ö", ":U": "Ü", "ss": "ß", "'e": "é", "`e": "è",
           "^e": "ê", "`a": "à", ",c": "ç", "~n": "ñ", "'a": "á", "'i": "í", "'o": "ó", "'u": "ú", "^o": "ô", "`u": "ù", "^i": "î", "^a": "â"}


def man_page_html(lang: str, page: str) -> str | None:
    path = MAN_ROOT / lang / f"man{page.rsplit('.', 1)[1]}" / f"{page}.gz"
    if not path.exists():
        return None
    text = roff_to_text(gzip.decompress(path.read_bytes()).decode("utf-8", "replace"))
    paragraphs = [p.replace("\n", " ").strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    body = "\n".join(f"<p>{_escape(p)}</p>" for p in paragraphs)
    return (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8"><title>{page}</title></head>'
            f'<body><nav><a href="/">manpages</a></nav><main><h1>{page}</h1>\n{body}\n</main></body></html>')


def boilerplate_only(html: str) -> str:
    """The page's menus, sidebar and footer, without its main content."""
    start = html.find('<div class="body" role="main">')
    end = html.find('<div class="sphinxsidebar"')
    if start < 0 or end < 0:
        raise ValueError("not a Sphinx page")
    return html[: start] + '<div class="body" role="main"></div></div></div>' + html[end:]


def near_duplicate(html: str, rng: random.Random) -> str:
    """A mirror's copy: a banner on top and a few words changed in the text."""
    banner = "<p>This page is mirrored for offline reading.</p>"
    html = html.replace('<div class="body" role="main">', '<div class="body" role="main">' + banner, 1)
    words = list(re.finditer(r"(?<=>)([^<]{40,})(?=<)", html))
    for match in rng.sample(words, min(3, len(words))):
        text = match.group(1)
        html = html.replace(text, text.replace(" the ", " this ", 1), 1)
    return html


def toxic_copy(html: str, words: list[str]) -> str:
    """The page with a reader's comment holding `words` on top of its main content."""
    comment = (f"<p>Comment from a reader: honestly this whole page is {words[0]} and the examples are {words[1]}, "
               f"whoever wrote the last section is a {words[2]} and should read it again.</p>")
    return html.replace('<div class="body" role="main">', '<div class="body" role="main">' + comment, 1)


def toxic_words(rng: random.Random, count: int = 3) -> list[str]:
    """Single words (letters only) of the shipped English bad-words list."""
    from aistack.assets import shipped
    from aistack.data.badwords import read_words

    words = sorted(w for w in read_words(shipped("data", "badwords", "en.txt")) if w.isalpha() and len(w) >= 4)
    return rng.sample(words, count)


def build_corpus(out_dir: Path, shards: int = 4, real: int = 120, blocked: int = 4, boilerplate: int = 6, near_dups: int = 14,
                 toxic: int = 4, seed: int = 0) -> Corpus:
    rng = random.Random(seed)
    pages = real_pages(real)
    docs: list[tuple[str, str, str]] = []  # (url, html, kind)
    for page in pages:
        docs.append((DOC_URL + page.relative_to(DOC_ROOT).as_posix(), page.read_text("utf-8", "replace"), "real"))
    for lang, page in MAN_PAGES:
        html = man_page_html(lang, page)
        if html:
            docs.append((f"https://manpages.debian.org/bookworm/{page}.{lang}.html", html, "non_english"))
    reals = [d for d in docs if d[2] == "real"]
    picks = rng.sample(reals, blocked + boilerplate + near_dups)
    for i, (url, html, _) in enumerate(picks[:blocked]):
        docs.append((BLOCKED[i % len(BLOCKED)] + url.rsplit("/", 1)[1], html, "blocklisted"))
    for url, html, _ in picks[blocked: blocked + boilerplate]:
        docs.append((url.replace(DOC_URL, "https://docs.python.org/3.12/"), boilerplate_only(html), "boilerplate"))
    pairs = []
    for url, html, _ in picks[blocked + boilerplate:]:
        dup_url = url.replace(DOC_URL, MIRROR_URL)
        docs.append((dup_url, near_duplicate(html, rng), "near_dup"))
        pairs.append((url, dup_url))
    # another generator: the pages above stay what they were before toxic pages were added
    toxic_rng = random.Random(seed + 1)
    toxic_pairs: list[tuple[str, str]] = []
    for url, html, _ in toxic_rng.sample([d for d in reals if d not in picks], toxic):
        docs.append((TOXIC_URL + url.rsplit("/", 1)[1], toxic_copy(html, toxic_words(toxic_rng)), "toxic"))
        toxic_pairs.append((url, docs[-1][0]))
    rng.shuffle(docs)
    # A near-duplicate goes to another shard than its original, so dedup works across shards.
    shard_of: dict[str, int] = {}
    buckets: list[list[tuple[str, str, str]]] = [[] for _ in range(shards)]
    originals = {dup: orig for orig, dup in pairs}
    for i, doc in enumerate(d for d in docs if d[2] != "near_dup"):
        buckets[i % shards].append(doc)
        shard_of[doc[0]] = i % shards
    for doc in (d for d in docs if d[2] == "near_dup"):
        target = (shard_of[originals[doc[0]]] + 1) % shards
        buckets[target].append(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_warc(out_dir / f"crawl-{i:05d}.warc.gz", bucket) for i, bucket in enumerate(buckets)]
    return Corpus(paths, {u: k for u, _, k in docs}, pairs, toxic_pairs, {u: h for u, h, _ in docs})


def record_id(url: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"


def write_warc(path: Path, docs: list[tuple[str, str, str]]) -> Path:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "aistack-sample-crawl", "format": "WARC File Format 1.1"}))
        for i, (url, html, _) in enumerate(docs):
            date = f"2024-03-{1 + i % 28:02d}T12:{i % 60:02d}:00Z"
            host = url.split("/")[2]
            request = StatusAndHeaders(f"GET /{url.split('/', 3)[3]} HTTP/1.1", [("Host", host), ("User-Agent", "aistack-sample-crawler/1.0")], is_http_request=True)
            writer.write_record(writer.create_warc_record(url, "request", http_headers=request, warc_headers_dict={"WARC-Date": date}))
            body = html.encode("utf-8")
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=headers,
                warc_headers_dict={"WARC-Record-ID": record_id(url), "WARC-Date": date, "WARC-Identified-Payload-Type": "text/html"},
            ))
    return path


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a sample crawl (WARC shards of Debian's HTML documentation).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--pages", type=int, default=200, help="real documentation pages")
    parser.add_argument("--near-dups", type=int, default=10)
    args = parser.parse_args(argv)
    done = args.out_dir / "COMPLETE"
    reference = args.out_dir / "reference" / "documents.jsonl"
    if not reference.exists():  # beside the crawl, not in it: its WARC reader reads only *.warc.gz
        write_reference(reference, args.pages)
        print(f"reference documents (not in the crawl): {reference}")
    if done.exists() and f"version {VERSION}" in done.read_text().splitlines():
        # written once; rerunning the demo keeps the same input (and run hashes)
        print(f"sample crawl already in {args.out_dir}")
        return
    for old in args.out_dir.glob("crawl-*.warc.gz"):  # an older version's shards
        old.unlink()
    corpus = build_corpus(args.out_dir, shards=args.shards, real=args.pages, near_dups=args.near_dups)
    done.write_text(f"{len(corpus.kinds)} pages\nversion {VERSION}\n")
    print(f"sample crawl: {len(corpus.kinds)} pages in {len(corpus.shards)} WARC shards under {args.out_dir}")


if __name__ == "__main__":
    main()
