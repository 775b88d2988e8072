"""The data stage: `kind: filter`, `kind: dedup`, `kind: tokenize`.

filter   raw WARC (or jsonl/parquet documents) -> FineWeb-style filtered documents
dedup    documents -> MinHash near-duplicates removed (signatures, buckets, clusters, filter)
tokenize documents -> byte-level BPE tokenizer + Megatron indexed dataset (.bin/.idx)

Every file a recipe names is checked to exist when the recipe is validated, so a typo
fails before anything is submitted, with the key that named it. Relative paths are
resolved against the directory `aistack run` is started from, and stored absolute in
the run's recipe.yaml so the tasks on the nodes read the same files.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from aistack.recipe.kinds import JobSpec, KindSpec, single_node
from aistack.data.inputs import input_manifest
from aistack.data.remote import check_no_credentials, expand_remote, is_listing, is_url, read_listing
from aistack.recipe.deferred import defer_missing, defer_remote, expected_shards, is_deferred, noted_missing
from aistack.recipe.errors import RecipeError
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Recipe, StrictModel, TaskCount

INPUT_SUFFIXES = {
    "warc": (".warc", ".warc.gz", ".arc", ".arc.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".jsonl.zst"),
    "parquet": (".parquet",),
}
# The blocklist that ships with the project (recipes/data/blocklists/default.txt).
DEFAULT_BLOCKLIST = "default"


def _repo_blocklists() -> Path:
    from aistack.assets import shipped

    return shipped("data", "blocklists")


def _existing_file(value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file() and not is_deferred(value) and not defer_missing(value):
        raise ValueError(f"an existing file (no file at {path.absolute()})")
    return str(path.absolute())


def _blocklist_path(value: str) -> str:
    if value == DEFAULT_BLOCKLIST:
        value = str(_repo_blocklists() / "default.txt")
    return _existing_file(value)


ExistingFile = Annotated[str, AfterValidator(_existing_file)]
BlocklistFile = Annotated[str, AfterValidator(_blocklist_path)]


def expand_inputs(specs: list[str], fmt: str, paths_base: str | None = None) -> list[str]:
    """Files, directories (searched recursively for `fmt` files), globs and `*.paths[.gz]`
    listings, local or fsspec URLs (s3://...) -> sorted absolute paths / URLs.

    The order is the sharding order: the planner and every task compute the same list.
    """
    suffixes = INPUT_SUFFIXES[fmt]
    found: set[str] = set()
    for spec in specs:
        if is_listing(spec):
            found.update(read_listing(spec, paths_base))
            continue
        if is_url(spec):
            found.update(expand_remote(spec, suffixes))
            continue
        path = Path(spec).expanduser()
        if path.is_dir():
            found.update(str(p.absolute()) for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
        elif path.is_file():
            found.add(str(path.absolute()))
        else:
            found.update(os.path.abspath(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
    return sorted(found)


def _remote_input_found(spec: str, fmt: str, paths_base: str | None) -> bool:
    """One fsspec listing of a remote input (or a read of a listing file); an unreachable
    store counts as not found, and is a warning in plan / dry-run like any missing input."""
    try:
        return bool(expand_inputs([spec], fmt, paths_base))
    except Exception:  # noqa: BLE001 - no network, no credentials, no bucket: all "not reachable"
        return False


def _listable(spec: str, block: "InputBlock") -> bool:
    if is_url(spec) or is_listing(spec):
        return _remote_input_found(spec, block.format, block.paths_base)
    return bool(expand_inputs([spec], block.format, block.paths_base))


def _found(spec: str, fmt: str, paths_base: str | None) -> bool:
    if is_url(spec) or (is_listing(spec) and is_url(paths_base or "")):
        return _remote_input_found(spec, fmt, paths_base) or defer_remote(spec)
    if is_listing(spec):
        if not Path(spec).expanduser().is_file():
            return defer_missing(spec)
        return True  # the files it lists are remote or checked by the job that reads them
    return bool(expand_inputs([spec], fmt)) or defer_missing(spec)


def _absolute(spec: str) -> str:
    return spec if is_url(spec) else str(Path(spec).expanduser().absolute())


class InputBlock(StrictModel):
    paths: list[str] = Field(min_length=1, description="files, directories, globs or *.paths[.gz] listings; local or s3:// (fsspec) URLs")
    # The folder or URL the keys of a *.paths[.gz] listing are relative to (Common Crawl:
    # s3://commoncrawl/ or https://data.commoncrawl.org/); default: the listing's own folder.
    paths_base: str | None = None
    format: Literal["warc", "jsonl", "parquet"] = "warc"
    text_key: str = "text"
    id_key: str = "id"
    # A truncated gzip or a file that is not what `format` says: stop with an error
    # naming the file (fail), or count it under `bad_files` and go on with the shard (skip).
    on_bad_file: Literal["fail", "skip"] = "fail"

    @field_validator("paths")
    @classmethod
    def _no_credentials_in_paths(cls, value: list[str]) -> list[str]:
        for p in value:
            check_no_credentials(p)
        return value

    @field_validator("paths_base")
    @classmethod
    def _no_credentials_in_base(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(check_no_credentials(value))

    @model_validator(mode="after")
    def _paths_exist(self) -> "InputBlock":
        missing = [p for p in self.paths if not is_deferred(p) and not _found(p, self.format, self.paths_base)]
        if missing:
            raise ValueError(f"input paths matching at least one {self.format} file; nothing found for {missing}")
        self.paths = [_absolute(p) for p in self.paths]
        return self

    def files(self) -> list[str]:
        """The input files; while a pipeline is planned, without those an upstream stage will write."""
        return expand_inputs([p for p in self.paths if not is_deferred(p) and not noted_missing(p)], self.format, self.paths_base)


class ShardedStage(StrictModel):
    tasks: TaskCount | None = Field(default=None, description="array tasks; default: one per input file")

    def num_tasks(self, files: list[str], deferred_shards: int = 0) -> int:
        return self.tasks or max(len(files) + deferred_shards, 1)


# --- filter -------------------------------------------------------------------------


class UrlFilterCfg(StrictModel):
    enabled: bool = True
    blocklists: list[BlocklistFile] = Field(default_factory=lambda: [DEFAULT_BLOCKLIST])
    # datatrove's own lists (shipped inside the datatrove package: no download).
    use_integrated_lists: bool = False
    soft_word_threshold: int = Field(default=2, ge=1)


class ExtractCfg(StrictModel):
    enabled: bool = True
    favour_precision: bool = True
    timeout: float = Field(default=1.0, gt=0, description="seconds per document before it is skipped")


class LanguageCfg(StrictModel):
    enabled: bool = True
    # py3langid: the model ships inside the PyPI wheel, works offline.
    # fasttext: datatrove's ft176/GlotLID models; they are downloaded at run time, so a
    # local `model_file` is required here instead (nodes usually have no internet).
    backend: Literal["py3langid", "fasttext"]
    model_file: ExistingFile | None = None
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    threshold: float = Field(default=0.65, ge=0, le=1)

    @field_validator("model_file")
    @classmethod
    def _fasttext_needs_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("backend") == "fasttext" and not value:
            raise ValueError(
                "backend fasttext with a local model_file (datatrove would download lid.176.bin at run time, "
                "which fails without internet); or use backend: py3langid, whose model ships in its wheel"
            )
        return value


def _badwords_list(value: str, language: str) -> str:
    if value == DEFAULT_BLOCKLIST:
        from aistack.assets import shipped

        value = str(shipped("data", "badwords", f"{language}.txt"))
        if not Path(value).is_file():
            raise ValueError(f"a bad-words list for '{language}': none ships with aistack ({value}); give a file")
    return _existing_file(value)


class BadWordsCfg(StrictModel):
    """C4's bad-words filter (aistack.data.badwords) from local word lists, after language id."""

    enabled: bool = False
    # language -> word list; `default`: the list shipped in recipes/data/badwords/<language>.txt
    lists: dict[str, str] = Field(default_factory=lambda: {"en": DEFAULT_BLOCKLIST})
    keep_fraction: float = Field(default=0.0, ge=0, le=1, description="fraction of pages with bad words kept anyway")
    fail_on_missing_language: bool = Field(default=False, description="a page in a language without a list: fail (true) or keep it")
    seed: int = 0

    @model_validator(mode="after")
    def _lists_exist(self) -> "BadWordsCfg":
        if self.enabled:  # the lists are read only by an enabled filter
            self.lists = {lang: _badwords_list(path, lang) for lang, path in self.lists.items()}
        return self


class GopherRepetitionCfg(StrictModel):
    enabled: bool = True
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: list[tuple[int, float]] = Field(default_factory=lambda: [(2, 0.2), (3, 0.18), (4, 0.16)])
    dup_n_grams: list[tuple[int, float]] = Field(
        default_factory=lambda: [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    )


class GopherQualityCfg(StrictModel):
    enabled: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2


class C4QualityCfg(StrictModel):
    enabled: bool = True
    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = False  # FineWeb turns this one off
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebQualityCfg(StrictModel):
    enabled: bool = True
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


class PiiCfg(StrictModel):
    enabled: bool = True
    remove_emails: bool = True
    remove_ips: bool = True
    only_remove_public_ips: bool = True


def _output_location(value: str | None) -> str | None:
    """A folder or an fsspec URL (s3://bucket/prefix) for the documents; never credentials."""
    return None if value is None else _absolute(check_no_credentials(value))


OutputLocation = Annotated[str | None, AfterValidator(_output_location)]


class FilterOutputCfg(StrictModel):
    formats: list[Literal["parquet", "jsonl.gz"]] = Field(default_factory=lambda: ["parquet"], min_length=1)
    # Where the documents go instead of <run>/output/filter/documents: a folder or an
    # s3:// (fsspec) URL; the run directory (logs, stats, staging) stays where it is.
    path: OutputLocation = None
    keep_removed: bool = Field(default=False, description="also write each filter's removed documents (jsonl.gz)")


class FilterConfig(ShardedStage):
    input: InputBlock
    url: UrlFilterCfg = Field(default_factory=UrlFilterCfg)
    extract: ExtractCfg = Field(default_factory=ExtractCfg)
    language: LanguageCfg = Field(default_factory=lambda: LanguageCfg(backend="py3langid"))
    badwords: BadWordsCfg = Field(default_factory=BadWordsCfg)
    gopher_repetition: GopherRepetitionCfg = Field(default_factory=GopherRepetitionCfg)
    gopher_quality: GopherQualityCfg = Field(default_factory=GopherQualityCfg)
    c4_quality: C4QualityCfg = Field(default_factory=C4QualityCfg)
    fineweb_quality: FineWebQualityCfg = Field(default_factory=FineWebQualityCfg)
    pii: PiiCfg = Field(default_factory=PiiCfg)
    output: FilterOutputCfg = Field(default_factory=FilterOutputCfg)
    # Failure injection for resume tests: these tasks SIGKILL themselves mid-shard.
    kill_tasks: list[int] = Field(default_factory=list)
    kill_after_documents: int = Field(default=5, ge=0)


class FilterRecipe(Recipe):
    kind: Literal["filter"] = "filter"
    filter: FilterConfig

    NON_IDENTITY_KEYS: ClassVar[tuple[str, ...]] = ("filter.kill_tasks", "filter.kill_after_documents")


# --- dedup --------------------------------------------------------------------------


class MinhashCfg(StrictModel):
    n_grams: int = Field(default=5, ge=1)
    num_buckets: int = Field(default=14, ge=1, description="bands")
    hashes_per_bucket: int = Field(default=8, ge=1, description="rows per band")
    seed: int = 1
    precision: Literal[32, 64] = 64
    # sha1 by default: datatrove 0.10's xxhash path passes str, which xxhash>=4 refuses.
    hash_fc: Literal["sha1", "xxhash"] = "sha1"


class DedupConfig(ShardedStage):
    input: InputBlock
    minhash: MinhashCfg = Field(default_factory=MinhashCfg)
    bucket_workers: int = Field(default=1, ge=1, description="array tasks per bucket in the buckets stage")
    language: str = "en"
    output_format: Literal["parquet", "jsonl.gz"] = "parquet"
    # Where the documents go instead of <run>/output/dedup/documents (a folder or s3:// URL).
    output_path: OutputLocation = None
    keep_removed: bool = False


class DedupRecipe(Recipe):
    kind: Literal["dedup"] = "dedup"
    dedup: DedupConfig


# --- tokenize -----------------------------------------------------------------------


class TokenizerCfg(StrictModel):
    # train: byte-level BPE on (a sample of) the input; load: use `file`, a tokenizer.json.
    mode: Literal["train", "load"] = "train"
    file: ExistingFile | None = None
    vocab_size: int = Field(default=8192, ge=260)
    min_frequency: int = Field(default=2, ge=1)
    max_train_documents: int = Field(default=100000, ge=1)
    eos_token: str = "<|endoftext|>"
    special_tokens: list[str] = Field(default_factory=list)

    @field_validator("file")
    @classmethod
    def _load_needs_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("mode") == "load" and not value:
            raise ValueError("mode: load with `file:` the path of a tokenizer.json")
        return value


class TokenizeConfig(ShardedStage):
    input: InputBlock
    tokenizer: TokenizerCfg = Field(default_factory=TokenizerCfg)
    batch_size: int = Field(default=256, ge=1, description="documents per tokenizer batch")
    # A deterministic split (by a hash of each document's id) kept out of the tokenizer and the
    # dataset, written to output/tokenize/heldout.jsonl for evaluation; 0: every document is trained on.
    heldout_fraction: float = Field(default=0.0, ge=0, lt=1, description="fraction of documents held out of training")


class TokenizeRecipe(Recipe):
    kind: Literal["tokenize"] = "tokenize"
    tokenize: TokenizeConfig


# --- plans: shard arrays over the input files, chained with afterok -------------------
#
# filter    filter[N] -> stats
# dedup     signatures[N] -> buckets[B*W] -> clusters -> filter[N] -> stats
# tokenize  tokenizer -> tokenize[N] -> merge -> stats
#
# N is `tasks` (default: one per input file); the `stats` job merges every task's stats
# into one table in the run directory, logs it to W&B and draws the funnel plot.


def _shards(loaded: LoadedRecipe, block: str) -> int:
    cfg = getattr(loaded.recipe, block)
    files = expand_inputs([p for p in cfg.input.paths if not is_deferred(p) and _listable(p, cfg.input)],
                          cfg.input.format, cfg.input.paths_base)
    deferred = [p for p in cfg.input.paths if is_deferred(p) or not _listable(p, cfg.input)]
    if deferred and not cfg.tasks:
        # Inputs an upstream stage writes: as many shards as it has array tasks.
        expected = expected_shards(deferred)
        if expected is None:
            raise RecipeError.single(str(loaded.path), f"{block}.tasks", cfg.tasks,
                                     f"a number of array tasks: the inputs {deferred} do not exist yet")
        return cfg.num_tasks(files, expected)
    if not files and not deferred:  # checked at validation too; the files may have gone since
        raise RecipeError.single(str(loaded.path), f"{block}.input.paths", cfg.input.paths, "paths matching at least one input file")
    return cfg.num_tasks(files)


def _shard_resources(loaded: LoadedRecipe):
    return loaded.recipe.resources.model_copy(update={"tasks_per_node": 1, "gpus_per_node": 0})


def plan_filter(loaded: LoadedRecipe) -> list[JobSpec]:
    return [
        JobSpec("filter", "filter", _shards(loaded, "filter"), _shard_resources(loaded)),
        JobSpec("stats", "data_stats", 1, single_node(loaded.recipe.resources), depends_on=("filter",)),
    ]


def plan_dedup(loaded: LoadedRecipe) -> list[JobSpec]:
    cfg = loaded.recipe.dedup
    res, one = _shard_resources(loaded), single_node(loaded.recipe.resources)
    shards = _shards(loaded, "dedup")
    return [
        JobSpec("signatures", "dedup_signatures", shards, res),
        JobSpec("buckets", "dedup_buckets", cfg.minhash.num_buckets * cfg.bucket_workers, res, depends_on=("signatures",)),
        JobSpec("clusters", "dedup_clusters", 1, one, depends_on=("buckets",)),
        JobSpec("filter", "dedup_filter", shards, res, depends_on=("clusters",)),
        JobSpec("stats", "data_stats", 1, one, depends_on=("filter",)),
    ]


def plan_tokenize(loaded: LoadedRecipe) -> list[JobSpec]:
    one = single_node(loaded.recipe.resources)
    return [
        JobSpec("tokenizer", "tokenizer_train", 1, one),
        JobSpec("tokenize", "tokenize", _shards(loaded, "tokenize"), _shard_resources(loaded), depends_on=("tokenizer",)),
        JobSpec("merge", "tokenize_merge", 1, one, depends_on=("tokenize",)),
        JobSpec("stats", "data_stats", 1, one, depends_on=("merge",)),
    ]


SPECS = (
    KindSpec("filter", FilterRecipe, plan_filter, outputs={"output": "output/filter/documents"},
             moved_outputs=lambda r: {"output": r.filter.output.path}, sharded_by="filter", report="data",
             inputs=lambda r: input_manifest(r.filter.input)),
    KindSpec("dedup", DedupRecipe, plan_dedup, outputs={"output": "output/dedup/documents"},
             moved_outputs=lambda r: {"output": r.dedup.output_path}, sharded_by="filter", report="data",
             inputs=lambda r: input_manifest(r.dedup.input)),
    KindSpec("tokenize", TokenizeRecipe, plan_tokenize,
             outputs={"output": "output/tokenize/data", "tokenizer": "output/tokenize/tokenizer.json",
                      "heldout": "output/tokenize/heldout.jsonl"}, report="data",
             inputs=lambda r: input_manifest(r.tokenize.input)),
)
