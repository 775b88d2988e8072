"""Language identification that works offline, as a datatrove filter.

datatrove's LanguageFilter downloads fastText's lid.176.bin (or GlotLID) on first
use, which fails on nodes without internet. py3langid's model ships inside its PyPI
wheel. A fastText model is still possible with a local model file.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class OfflineLanguageFilter(BaseFilter):
    name = "🌍 Language ID"

    def __init__(self, languages: list[str], threshold: float, backend: str = "py3langid", model_file: str | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages = list(languages)
        self.threshold = threshold
        self.backend = backend
        self.model_file = model_file
        self._model = None

    def _predict(self, text: str) -> tuple[str, float, dict[str, float]]:
        """(best language, its probability, probability of each wanted language)."""
        text = text.replace("\n", " ")
        if self.backend == "py3langid":
            if self._model is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                self._model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            ranked = self._model.rank(text)
            scores = dict(ranked)
            best, score = ranked[0]
        else:
            if self._model is None:
                from fasttext.FastText import _FastText

                self._model = _FastText(self.model_file)
            labels, probs = self._model.predict(text, k=-1)
            scores = {label.split("__")[-1].split("_")[0]: float(p) for label, p in zip(labels, probs)}
            best, score = max(scores.items(), key=lambda kv: kv[1])
        return best, float(score), {lang: float(scores.get(lang, 0.0)) for lang in self.languages}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        best, score, wanted = self._predict(doc.text)
        doc.metadata["language"] = best
        doc.metadata["language_score"] = score
        if any(p > self.threshold for p in wanted.values()):
            return True
        return False, f"language_{best}" if best not in self.languages else "below_threshold"
