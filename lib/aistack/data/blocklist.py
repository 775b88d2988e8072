"""URL blocklists: a small text format, and datatrove's URLFilter fed from it offline.

File format, one entry a line, `#` starts a comment:
    domain example-casino.com     the registered domain or a full host name
    url    http://spam.example/x  one exact URL
    word   casino                 a banned word among the URL's words
    subword xxx                   a banned substring anywhere in the URL
    soft   free                   soft words: `soft_word_threshold` of them block a URL
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datatrove.pipeline.filters import URLFilter

KINDS = ("domain", "url", "word", "subword", "soft")


class BlocklistError(ValueError):
    pass


@dataclass
class Blocklist:
    domain: set[str] = field(default_factory=set)
    url: set[str] = field(default_factory=set)
    word: set[str] = field(default_factory=set)
    subword: set[str] = field(default_factory=set)
    soft: set[str] = field(default_factory=set)

    def update(self, other: "Blocklist") -> None:
        for kind in KINDS:
            getattr(self, kind).update(getattr(other, kind))


def read_blocklist(path: str | Path) -> Blocklist:
    out = Blocklist()
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, value = line.partition(" ")
        value = value.strip()
        if kind not in KINDS or not value:
            raise BlocklistError(f"{path}:{number}: expected '<{'|'.join(KINDS)}> VALUE', got {raw!r}")
        getattr(out, kind).add(value.lower())
    return out


def read_blocklists(paths: list[str]) -> Blocklist:
    merged = Blocklist()
    for path in paths:
        merged.update(read_blocklist(path))
    return merged


class OfflineURLFilter(URLFilter):
    """datatrove's URLFilter with a public-suffix list that is never fetched.

    tldextract would download the suffix list on first use; its snapshot inside the
    wheel is used instead. With `use_integrated_lists`, datatrove's lists come from
    its own package (no download either).
    """

    def __init__(self, blocklist: Blocklist, use_integrated_lists: bool, soft_word_threshold: int, exclusion_writer=None):
        super().__init__(
            soft_word_threshold=soft_word_threshold,
            extra_domains=blocklist.domain,
            extra_urls=blocklist.url,
            banned_words=blocklist.word,
            banned_subwords=blocklist.subword,
            soft_banned_words=blocklist.soft,
            use_integrated_lists=use_integrated_lists,
            exclusion_writer=exclusion_writer,
        )
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)

    def download_data(self):
        if self.use_integrated_lists:
            return super().download_data()
        if not self._downloaded:  # datatrove builds the subword automaton only with its lists
            for word in self.banned_subwords:
                self.banned_subwords_automaton.add_word(word, len(self.banned_subwords_automaton))
            if self.banned_subwords:
                self.banned_subwords_automaton.make_automaton()
            self._downloaded = True
