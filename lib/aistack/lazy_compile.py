"""megatron-core decorates its fusions with `torch.compile` while it is imported. The decoration
alone imports torch's dynamo and inductor: 2.8 of the 4.8 s that `import megatron.core` takes
on a 2-core CPU (measured), paid by every training, evaluation and tokenize task, although a
run without `train.fused` never calls those functions.

`install()` (the task runner and the CLI call it) defers each of those compilations to the
decorated function's first call: megatron imports with `torch.compile` swapped for
`deferred` and gets it back afterwards. What is compiled, and when it runs compiled, is
unchanged: torch.compile compiles on the first call too.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
from typing import Any, Callable

PACKAGE = "megatron.core"


def deferred(real: Callable) -> Callable:
    """`real` (torch.compile) as a decorator that compiles at the first call, not at decoration."""

    def compile_later(fn: Callable | None = None, *args: Any, **kwargs: Any) -> Callable:
        if fn is None:  # used as @torch.compile(mode=...)
            return lambda f: compile_later(f, *args, **kwargs)
        compiled: list[Callable] = []

        @functools.wraps(fn)
        def call(*a: Any, **kw: Any) -> Any:
            import torch

            if torch.compiler.is_compiling():  # inside a compiled region (train.compile): traced inline
                return fn(*a, **kw)
            if not compiled:
                compiled.append(real(fn, *args, **kwargs))
            return compiled[0](*a, **kw)

        return call

    return compile_later


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # resources, is_package, get_code: the package's own loader
        return getattr(self.loader, name)

    def create_module(self, spec):  # noqa: ANN001
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        import torch

        real = torch.compile
        torch.compile = deferred(real)
        try:
            self.loader.exec_module(module)
        finally:
            torch.compile = real


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001
        if name != PACKAGE:
            return None
        sys.meta_path.remove(self)  # once: the package's own imports go the usual way
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """From now on, the first import of megatron.core defers its compilations. No-op once it is imported."""
    if PACKAGE in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
