"""C4's bad-words filter, offline: datatrove's C4BadWordsFilter fed from shipped word lists.

datatrove downloads the LDNOOBW lists when the filter first meets a language, which fails on
a node without internet. Here each language's list is a local file (recipes/data/badwords/,
source and licence in its README.md); matching is datatrove's own (whole words, lower case;
no word boundary for ja/th/zh; its allowlist applied). A dropped page is counted under
`dropped_document_removed_with_badwords` in the funnel.
"""

from __future__ import annotations

import re
from pathlib import Path

from datatrove.pipeline.filters import C4BadWordsFilter
from datatrove.pipeline.filters.c4_filters import _BADWORDS_ALLOWLIST


def read_words(path: str | Path) -> set[str]:
    """One word or phrase a line; blank lines and `#` comment lines are skipped."""
    words = {line.strip().lower() for line in Path(path).read_text("utf-8").splitlines()}
    words = {w for w in words if w and not w.startswith("#")}
    if not words:
        raise ValueError(f"{path}: no words in this bad-words list")
    return words


def pattern(words: set[str], lang: str) -> re.Pattern:
    for allowlist in _BADWORDS_ALLOWLIST.values():
        words = words - allowlist
    alternatives = "|".join(re.escape(w) for w in sorted(words))
    if lang in ("ja", "th", "zh"):
        return re.compile(alternatives)
    return re.compile(r"(?:\W|^)({})(?:\W|$)".format(alternatives))


class OfflineC4BadWordsFilter(C4BadWordsFilter):
    """`lists`: language -> word-list file. A page in a language without a list is kept (and
    counted as missing_badwords_lang) or fails the task, as fail_on_missing_language says."""

    def __init__(self, lists: dict[str, str], keep_fraction: float = 0.0, fail_on_missing_language: bool = False,
                 seed: int | None = None, default_language: str = "en", exclusion_writer=None):
        super().__init__(keep_fraction=keep_fraction, fail_on_missing_language=fail_on_missing_language, seed=seed,
                         default_language=default_language, exclusion_writer=exclusion_writer)
        self.lists = dict(lists)

    def _get_badwords(self, lang: str):
        if lang not in self._badwords_regex:
            if lang not in self.lists:
                if self.fail_on_missing_language:
                    raise ValueError(f'no bad-words list for language "{lang}" (filter.badwords.lists); '
                                     "or set filter.badwords.fail_on_missing_language: false")
                return None
            self._badwords_regex[lang] = pattern(read_words(self.lists[lang]), lang)
        return self._badwords_regex[lang]
