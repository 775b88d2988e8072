"""Where the files shipped with the recipes are (blocklists, bad-words lists, local lm-eval tasks).

One place resolves them: `$AISTACK_RECIPES` when set, else the `recipes/` folder of the source
tree aistack runs from, else `<prefix>/share/aistack/recipes` (an installed copy). Nothing else
in the package builds a path to `recipes/` from its own location.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "AISTACK_RECIPES"


def recipes_dir() -> Path:
    """The recipes folder the shipped assets are read from."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser().absolute()
    for candidate in (Path(__file__).resolve().parents[2] / "recipes", Path(sys.prefix) / "share" / "aistack" / "recipes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the project's recipes folder is not found: set {ENV} to it")


def shipped(*parts: str) -> Path:
    """A file or folder under the recipes folder, e.g. shipped("data", "blocklists", "default.txt")."""
    return recipes_dir().joinpath(*parts)
