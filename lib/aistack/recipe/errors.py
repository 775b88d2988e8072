"""One error type for everything wrong with a recipe, reported before anything runs."""

from __future__ import annotations

import re

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class RecipeError(Exception):
    """A problem in a recipe: names the file, the key path, the bad value and what was expected.

    `problems` holds one (key, value, expected) triple per problem, so a file with
    three mistakes is reported once, not fixed one run at a time.
    """

    def __init__(self, file: str, problems: list[tuple[str, object, str]]):
        self.file = file
        self.problems = problems
        super().__init__(self.render())

    @classmethod
    def single(cls, file: str, key: str, value: object, expected: str) -> "RecipeError":
        return cls(file, [(key, value, expected)])

    def render(self) -> str:
        parts = []
        for key, value, expected in self.problems:
            key = _CONTROL_RE.sub(lambda m: repr(m[0])[1:-1], key)  # shown escaped, never sent to a terminal
            if not key and value is _MISSING:
                parts.append(expected)
            elif not key:
                parts.append(f"the top level is {_short_repr(value)}: {expected}")
            else:
                parts.append(f"key '{key}' = {_short_repr(value)}: {expected}")
        return f"invalid recipe {self.file}: " + "; ".join(parts) + "."


_MISSING = object()


def _short_repr(value: object, limit: int = 240) -> str:
    """The value as the message quotes it: a path on a cluster's file system whole (they
    run long), a pasted blob cut short."""
    if value is _MISSING:
        return "(missing)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


MISSING = _MISSING


class SecretValue(ValueError):
    """A validator's refusal of a value holding credentials: the value is never shown."""


class _Redacted:
    def __repr__(self) -> str:
        return "(not shown: it holds credentials)"


REDACTED = _Redacted()
