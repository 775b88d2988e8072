"""Two libraries pay at import for what aistack's tasks never use; `install()` (the task runner
and the CLI call it) removes that cost from every task that imports them. Measured on a
2-core CPU:

- megatron-core decorates its fusions with `torch.compile` while it is imported; the decoration
  alone imports torch's dynamo and inductor: 2.8 of the 4.8 s of `import megatron.core`,
  though a run without `train.fused` never calls those functions. It imports with
  `torch.compile` swapped for `deferred(torch.compile)`, which compiles each function at its
  first call (torch.compile compiles at the first call too: what runs compiled is unchanged).
- megatron-core also imports wandb (1.0 s) for its own optional logging (its timers' and
  dynamic inference engine's writers), which aistack never asks for: it tracks with its own
  W&B run, on rank 0 only. Every rank paid for it. Imported while wandb is not yet loaded,
  megatron sees no wandb (its writers are off, as they are unless configured); aistack's own
  tracking imports wandb as usual when a run has it on.
- spaCy (datatrove's English word tokenizer: the quality filters, MinHash) imports thinc,
  which imports torch only to see whether it is there: 2.2 of spaCy's 3.6 s in a data task
  that never touches torch. Imported while torch is not yet loaded, spaCy does not see it
  (thinc then uses numpy, as a blank tokenizer does anyway); torch imports as usual after.
"""

from __future__ import annotations

import contextlib
import functools
import sys

TYPE_CHECKING = False  # every task imports this module: typing and importlib.abc are imports it can do without
if TYPE_CHECKING:
    import importlib.abc
    from typing import Any, Callable, Iterator


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


@contextlib.contextmanager
def _compile_deferred() -> Iterator[None]:
    import torch

    real = torch.compile
    torch.compile = deferred(real)
    try:
        yield
    finally:
        torch.compile = real


@contextlib.contextmanager
def _hidden(name: str) -> Iterator[None]:
    """`import name` raises ImportError inside, unless `name` is loaded already (nothing to save)."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules[name]


@contextlib.contextmanager
def _megatron_guard() -> Iterator[None]:
    with _compile_deferred(), _hidden("wandb"):
        yield


AROUND_IMPORT: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "megatron.core": _megatron_guard,
    "spacy": lambda: _hidden("torch"),
}


class _Loader:  # an importlib.abc.Loader (duck-typed)
    def __init__(self, loader: importlib.abc.Loader, finder: _Finder):
        self.loader, self.finder = loader, finder

    def __getattr__(self, name: str) -> Any:  # resources, is_package, get_code: the package's own loader
        return getattr(self.loader, name)

    def create_module(self, spec):  # noqa: ANN001
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.finder)  # once: imported now
        with AROUND_IMPORT[self.finder.name]():
            self.loader.exec_module(module)


class _Finder:  # an importlib.abc.MetaPathFinder (duck-typed)
    """Finds `name` as the other finders do and wraps its loader. Stays until the package is
    imported: a spec lookup alone (`importlib.util.find_spec`, as datatrove checks its
    optional dependencies) imports nothing."""

    def __init__(self, name: str):
        self.name = name
        self.looking = False

    def find_spec(self, name, path, target=None):  # noqa: ANN001
        if name != self.name or self.looking:
            return None
        import importlib.util

        self.looking = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.looking = False
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _Loader):
            spec.loader = _Loader(spec.loader, self)
        return spec


def install() -> None:
    """From now on, the first import of each package above goes through its guard. Idempotent."""
    watched = {f.name for f in sys.meta_path if isinstance(f, _Finder)}
    for name in AROUND_IMPORT:
        if name not in sys.modules and name not in watched:
            sys.meta_path.insert(0, _Finder(name))
