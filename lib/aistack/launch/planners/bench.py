"""bench: one job that loops over the sweep points (BF16 and FP8 x batch x prompt x output length).

Why one job and not an array of one task per point: a point takes seconds, while loading
(and exporting, and quantizing) the model and warming the GPU (CUDA context, cuBLAS
heuristics, allocator) take longer than that; and BF16 vs FP8 are only comparable on the
same GPU, which one job guarantees and an array spread over nodes does not.
"""

from __future__ import annotations

from aistack.launch.plan import JobSpec, planner
from aistack.recipe import LoadedRecipe


@planner("bench")
def plan_bench(loaded: LoadedRecipe) -> list[JobSpec]:
    res = loaded.recipe.resources.model_copy(update={"nodes": 1, "tasks_per_node": 1})
    return [JobSpec("bench", "bench_run", 1, res)]
