"""filter, dedup, tokenize: shard arrays over the input files, chained with afterok.

filter    filter[N] -> stats
dedup     signatures[N] -> buckets[B*W] -> clusters -> filter[N] -> stats
tokenize  tokenizer -> tokenize[N] -> merge -> stats

N is `tasks` (default: one per input file); the `stats` job merges every task's stats
into one table in the run directory, logs it to W&B and draws the funnel plot.
"""

from __future__ import annotations

from aistack.launch.plan import JobSpec, planner
from aistack.recipe import LoadedRecipe, RecipeError
from aistack.recipe.deferred import expected_shards, is_deferred
from aistack.recipe.kinds.data import expand_inputs


def _shards(loaded: LoadedRecipe, block: str) -> int:
    cfg = getattr(loaded.recipe, block)
    files = cfg.input.files()
    deferred = [p for p in cfg.input.paths if is_deferred(p) or not expand_inputs([p], cfg.input.format)]
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


def _single(loaded: LoadedRecipe):
    return loaded.recipe.resources.model_copy(update={"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0})


@planner("filter")
def plan_filter(loaded: LoadedRecipe) -> list[JobSpec]:
    res = loaded.recipe.resources.model_copy(update={"tasks_per_node": 1, "gpus_per_node": 0})
    return [
        JobSpec("filter", "filter", _shards(loaded, "filter"), res),
        JobSpec("stats", "data_stats", 1, _single(loaded), depends_on=("filter",)),
    ]


@planner("dedup")
def plan_dedup(loaded: LoadedRecipe) -> list[JobSpec]:
    cfg = loaded.recipe.dedup
    res = loaded.recipe.resources.model_copy(update={"tasks_per_node": 1, "gpus_per_node": 0})
    shards = _shards(loaded, "dedup")
    return [
        JobSpec("signatures", "dedup_signatures", shards, res),
        JobSpec("buckets", "dedup_buckets", cfg.minhash.num_buckets * cfg.bucket_workers, res, depends_on=("signatures",)),
        JobSpec("clusters", "dedup_clusters", 1, _single(loaded), depends_on=("buckets",)),
        JobSpec("filter", "dedup_filter", shards, res, depends_on=("clusters",)),
        JobSpec("stats", "data_stats", 1, _single(loaded), depends_on=("filter",)),
    ]


@planner("tokenize")
def plan_tokenize(loaded: LoadedRecipe) -> list[JobSpec]:
    res = loaded.recipe.resources.model_copy(update={"tasks_per_node": 1, "gpus_per_node": 0})
    return [
        JobSpec("tokenizer", "tokenizer_train", 1, _single(loaded)),
        JobSpec("tokenize", "tokenize", _shards(loaded, "tokenize"), res, depends_on=("tokenizer",)),
        JobSpec("merge", "tokenize_merge", 1, _single(loaded), depends_on=("tokenize",)),
        JobSpec("stats", "data_stats", 1, _single(loaded), depends_on=("merge",)),
    ]
