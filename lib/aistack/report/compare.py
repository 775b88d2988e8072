"""Which model is better, and by more than noise: the direction of a metric, and the best
value of a column only when it leads every other by more than two standard errors."""

from __future__ import annotations

import math

STDERR = "_stderr"  # results.csv names a metric's standard error `<metric>_stderr`


def higher_is_better(metric: str) -> bool | None:
    name = metric.split("/")[0]
    if "perplexity" in name or name in ("bits_per_byte", "loss", "nll"):
        return False
    if name.startswith(("acc", "exact_match", "f1", "mcc", "bleu", "rouge")):
        return True
    return None


def clear_best(col: tuple[str, str], models: list[dict[tuple[str, str], float | None]]) -> float | None:
    """The best value of a column, if it is better than each other model's by more than two
    standard errors of the difference (where the models have them); None: no clear best."""
    direction = higher_is_better(col[1])
    scored = [(v[col], v.get((col[0], col[1] + STDERR)) or 0.0) for v in models if v.get(col) is not None]
    if direction is None or len(scored) < 2:
        return None
    scored.sort(key=lambda pair: pair[0], reverse=direction)
    (top, top_se), rest = scored[0], scored[1:]
    if all(abs(top - value) > 2 * math.hypot(top_se, se) for value, se in rest):
        return top
    return None
