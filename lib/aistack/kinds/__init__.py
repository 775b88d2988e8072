"""Recipe kinds: one module each, declaring its KindSpec. Found by listing this package,
so adding a kind is adding a module here (and its jobs in aistack.jobs), nothing else."""

from __future__ import annotations

import importlib
import pkgutil

from aistack.kinds.spec import JobSpec, KindSpec

__all__ = ["JobSpec", "KindSpec", "all_kinds", "spec_for"]

_KINDS: dict[str, KindSpec] = {}


def all_kinds() -> dict[str, KindSpec]:
    if not _KINDS:
        for module_info in pkgutil.iter_modules(__path__):
            if module_info.name == "spec":
                continue
            module = importlib.import_module(f"{__name__}.{module_info.name}")
            specs = getattr(module, "SPECS", ()) or ((module.SPEC,) if hasattr(module, "SPEC") else ())
            for spec in specs:
                _KINDS[spec.name] = spec
    return _KINDS


def spec_for(kind: str) -> KindSpec:
    return all_kinds()[kind]
