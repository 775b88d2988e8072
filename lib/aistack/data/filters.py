"""The FineWeb filter pipeline of one task, built from datatrove's own blocks.

reader -> URL filter -> trafilatura -> language id -> C4 bad words -> Gopher repetition -> Gopher
quality -> C4 quality -> FineWeb quality -> PII scrubbing -> writers. Each step can be
switched off in the recipe; thresholds default to FineWeb's.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.formatters import PIIFormatter

from aistack.data.blocklist import OfflineURLFilter, read_blocklists
from aistack.data.langid import OfflineLanguageFilter
from aistack.data.readers import make_reader
from aistack.data.writers import make_writer, removed_writer


class KillAfter(PipelineStep):
    """Failure injection: SIGKILL this process after `n` documents (a node dying mid-shard)."""

    name = "💀 kill"

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def run(self, data, rank: int = 0, world_size: int = 1):
        for i, doc in enumerate(data):
            if i >= self.n:
                os.kill(os.getpid(), signal.SIGKILL)
            yield doc


def _preflight_trafilatura() -> None:
    """datatrove runs trafilatura in a sandbox process that reports a broken import as a
    timeout on every document; import it here so a broken install fails loudly."""
    try:
        import trafilatura  # noqa: F401
    except ImportError as err:
        raise ImportError(f"trafilatura cannot be imported ({err}); the extract step needs it (pip install trafilatura lxml_html_clean)") from err


def build_filter_pipeline(cfg, data_folder: str, paths_file: str, out_dir: Path, removed_dir: Path | None, kill: bool = False) -> list:
    """cfg: the recipe's FilterConfig. Writers write under out_dir (a staging folder)."""

    def excluded(step: str):
        return removed_writer(str(removed_dir / step)) if removed_dir is not None else None

    steps: list = [make_reader(cfg.input.format, data_folder, paths_file, cfg.input.on_bad_file, cfg.input.text_key, cfg.input.id_key)]
    if cfg.url.enabled:
        steps.append(OfflineURLFilter(read_blocklists(cfg.url.blocklists), cfg.url.use_integrated_lists,
                                      cfg.url.soft_word_threshold, exclusion_writer=excluded("url")))
    if cfg.extract.enabled:
        _preflight_trafilatura()
        steps.append(Trafilatura(favour_precision=cfg.extract.favour_precision, timeout=cfg.extract.timeout))
    lang = cfg.language
    if lang.enabled:
        steps.append(OfflineLanguageFilter(lang.languages, lang.threshold, lang.backend, lang.model_file, exclusion_writer=excluded("language")))
    language = lang.languages[0] if lang.enabled else "en"
    bad = cfg.badwords
    if bad.enabled:
        from aistack.data.badwords import OfflineC4BadWordsFilter

        steps.append(OfflineC4BadWordsFilter(bad.lists, bad.keep_fraction, bad.fail_on_missing_language, bad.seed,
                                             default_language=language, exclusion_writer=excluded("badwords")))
    g = cfg.gopher_repetition
    if g.enabled:
        steps.append(GopherRepetitionFilter(
            dup_line_frac=g.dup_line_frac, dup_para_frac=g.dup_para_frac, dup_line_char_frac=g.dup_line_char_frac,
            dup_para_char_frac=g.dup_para_char_frac, top_n_grams=tuple(map(tuple, g.top_n_grams)),
            dup_n_grams=tuple(map(tuple, g.dup_n_grams)), exclusion_writer=excluded("gopher_repetition"), language=language))
    # These configs name exactly the datatrove filters' keyword arguments (FineWeb's defaults).
    for name, block, step in (
        ("gopher_quality", cfg.gopher_quality, GopherQualityFilter),
        ("c4_quality", cfg.c4_quality, C4QualityFilter),
        ("fineweb_quality", cfg.fineweb_quality, FineWebQualityFilter),
    ):
        if block.enabled:
            steps.append(step(**block.model_dump(exclude={"enabled"}), exclusion_writer=excluded(name), language=language))
    if cfg.pii.enabled:
        steps.append(PIIFormatter(**cfg.pii.model_dump(exclude={"enabled"})))
    if kill:
        steps.append(KillAfter(cfg.kill_after_documents))
    steps += [make_writer(fmt, str(out_dir)) for fmt in cfg.output.formats]
    return steps
