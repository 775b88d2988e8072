"""The FineWeb filter pipeline of one task, built from datatrove's own blocks.

reader -> URL filter -> trafilatura -> language id -> Gopher repetition -> Gopher
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
from aistack.data.outputs import make_writer, removed_writer
from aistack.data.readers import make_reader


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
    g = cfg.gopher_repetition
    if g.enabled:
        steps.append(GopherRepetitionFilter(
            dup_line_frac=g.dup_line_frac, dup_para_frac=g.dup_para_frac, dup_line_char_frac=g.dup_line_char_frac,
            dup_para_char_frac=g.dup_para_char_frac, top_n_grams=tuple(map(tuple, g.top_n_grams)),
            dup_n_grams=tuple(map(tuple, g.dup_n_grams)), exclusion_writer=excluded("gopher_repetition"), language=language))
    q = cfg.gopher_quality
    if q.enabled:
        steps.append(GopherQualityFilter(
            min_doc_words=q.min_doc_words, max_doc_words=q.max_doc_words, min_avg_word_length=q.min_avg_word_length,
            max_avg_word_length=q.max_avg_word_length, max_symbol_word_ratio=q.max_symbol_word_ratio,
            max_bullet_lines_ratio=q.max_bullet_lines_ratio, max_ellipsis_lines_ratio=q.max_ellipsis_lines_ratio,
            max_non_alpha_words_ratio=q.max_non_alpha_words_ratio, min_stop_words=q.min_stop_words,
            exclusion_writer=excluded("gopher_quality"), language=language))
    c = cfg.c4_quality
    if c.enabled:
        steps.append(C4QualityFilter(
            split_paragraph=c.split_paragraph, remove_citations=c.remove_citations,
            filter_no_terminal_punct=c.filter_no_terminal_punct, min_num_sentences=c.min_num_sentences,
            min_words_per_line=c.min_words_per_line, max_word_length=c.max_word_length,
            filter_lorem_ipsum=c.filter_lorem_ipsum, filter_javascript=c.filter_javascript,
            filter_curly_bracket=c.filter_curly_bracket, filter_policy=c.filter_policy,
            exclusion_writer=excluded("c4_quality"), language=language))
    f = cfg.fineweb_quality
    if f.enabled:
        steps.append(FineWebQualityFilter(
            line_punct_thr=f.line_punct_thr, line_punct_exclude_zero=f.line_punct_exclude_zero,
            short_line_thr=f.short_line_thr, short_line_length=f.short_line_length,
            char_duplicates_ratio=f.char_duplicates_ratio, new_line_ratio=f.new_line_ratio,
            exclusion_writer=excluded("fineweb_quality"), language=language))
    if cfg.pii.enabled:
        steps.append(PIIFormatter(remove_emails=cfg.pii.remove_emails, remove_ips=cfg.pii.remove_ips,
                                  only_remove_public_ips=cfg.pii.only_remove_public_ips))
    if kill:
        steps.append(KillAfter(cfg.kill_after_documents))
    steps += [make_writer(fmt, str(out_dir)) for fmt in cfg.output.formats]
    return steps
