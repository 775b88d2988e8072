"""What `make gpu-check` needs from the machine it runs on, and what it brings along.

The GPU machine has Python 3.12, PyTorch with CUDA and the packages in IMAGE, and no package
index. What aistack needs beyond them comes as wheels (WHEELS, `make gpu-wheels` downloads
them here at the versions installed in .venv, which the tests ran with) and is installed
there with `pip install --no-index --no-deps --target`. aistack itself is made importable
by a folder of links (`aistack_shim`): pyproject maps aistack.jobs to the top-level jobs/.

Only the standard library at module level: the preflight answers in a second.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import site
import sys
from pathlib import Path

NO_GPU_EXIT = 3  # the preflight's exit code: nothing was run

# Distributions the GPU image has (Python 3.12.3, torch 2.11 + CUDA 13); what they require
# is installed with them.
IMAGE = (
    "torch", "setuptools", "accelerate", "cloudpickle", "einops", "filelock", "fsspec", "huggingface-hub", "jinja2",
    "matplotlib", "numpy", "packaging", "pandas", "psutil", "pyarrow", "pyyaml", "regex", "requests", "rich",
    "safetensors", "sentencepiece", "tokenizers", "transformers", "triton", "typing-extensions", "tqdm", "pytest",
)
# Known absent there. The closure of IMAGE is computed from this machine's metadata, where
# newer versions may require more (typer -> pydantic): it stops at these.
NOT_IN_IMAGE = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "submitit", "megatron-core", "wandb",
                "datatrove", "lm-eval", "zarr")
# What the check path imports beyond the image, with their own requirements (--no-deps).
# typing-extensions is newer than the image's: pydantic needs >= 4.16.
WHEELS = ("megatron-core", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
          "submitit")
# The modules the check path imports, lazily imported ones included (the job modules run in
# the tasks that `aistack run --on local` starts).
CHECK_PATH_MODULES = (
    "aistack.launch", "aistack.cli", "aistack.recipe", "aistack.launch.launcher", "aistack.launch.executor",
    "aistack.launch.local", "aistack.runtime.task",
    "aistack.jobs.pretrain", "aistack.jobs.bench_run", "aistack.model.train", "aistack.model.checkpoint",
    "aistack.model.export_hf", "aistack.model.attention", "aistack.bench.run", "aistack.bench.decode",
    "aistack.eval.tinylang", "aistack.track.metrics",
    "aistack.hardware", "submitit", "pydantic", "yaml", "rich", "torch.distributed", "transformers",
    "megatron.core.models.gpt", "megatron.core.dist_checkpointing", "megatron.core.distributed",
    "megatron.core.optimizer", "megatron.core.pipeline_parallel", "megatron.core.datasets.gpt_dataset",
    "megatron.core.datasets.blended_megatron_dataset_builder", "megatron.core.datasets.indexed_dataset",
)
PY312 = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
         "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
         "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- preflight --------------------------------------------------------------------------


def gpu_problem() -> str | None:
    """Why this machine cannot run the GPU check, or None when it can."""
    try:
        import torch
    except ImportError as err:
        return f"{Path(sys.executable).name} cannot import torch ({err})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (no CUDA)"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: torch.cuda.is_available() is False "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}; check nvidia-smi)")
    return None


def no_gpu_message(problem: str) -> str:
    return "\n".join([
        "gpu-check needs one NVIDIA GPU visible to PyTorch with CUDA (H100 or H200; Python 3.12).",
        f"  here: {problem}.",
        "  On the GPU machine: run `make gpu-wheels` here first (what the image lacks: "
        + ", ".join(WHEELS) + "), bring gpu-wheels/ along, then `make gpu-check` there.",
        "  The same script on this CPU, tiny shapes, FP8 emulated: python benchmarks/gpu_check.py --cpu --tiny",
    ])


# --- wheels -----------------------------------------------------------------------------


def wheel_specs() -> list[str]:
    """name==version for each wheel: the versions installed here, which the tests ran with."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]


def _requirements(dist: importlib.metadata.Distribution) -> set[str]:
    """What a distribution requires on the GPU machine's Python 3.12 (extras left out)."""
    from packaging.requirements import Requirement

    out = set()
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(PY312):
            out.add(normalize(req.name))
    return out


def image_closure() -> set[str]:
    """IMAGE and everything its distributions require (by this machine's metadata), less NOT_IN_IMAGE."""
    seen: set[str] = set()
    todo = [normalize(n) for n in IMAGE]
    absent = {normalize(n) for n in NOT_IN_IMAGE}
    while todo:
        name = todo.pop()
        if name in seen or name in absent:
            continue
        seen.add(name)
        try:
            todo.extend(_requirements(importlib.metadata.distribution(name)) - seen)
        except importlib.metadata.PackageNotFoundError:
            pass  # required only on other platforms, or not installed here: nothing to follow
    return seen


def allowed_distributions(wheels: tuple[str, ...] = WHEELS) -> set[str]:
    return image_closure() | {normalize(w) for w in wheels}


def wheel_problems(wheels: tuple[str, ...] = WHEELS) -> list[str]:
    """A wheel installed with --no-deps must find each of its requirements in the image or the wheels."""
    allowed = allowed_distributions(wheels)
    problems = []
    for name in wheels:
        missing = _requirements(importlib.metadata.distribution(name)) - allowed
        problems += [f"wheel {name} requires {m}, which is neither in the GPU image nor in the wheel list" for m in sorted(missing)]
    return problems


# --- the image, simulated here ------------------------------------------------------------


class _HideModules:
    """Stands in for importlib's PathFinder: a top-level module that an installed distribution
    the GPU image lacks puts in site-packages is not found (so `try: import wandb` falls back,
    as it would there). Copies vendored inside another package (setuptools') stay visible."""

    def __init__(self, inner, hidden: dict[str, str]):
        self.inner, self.hidden = inner, hidden
        self.site_dirs = {Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]}

    def find_spec(self, name, path=None, target=None):
        spec = self.inner.find_spec(name, path, target)
        if spec is None or path is not None or name not in self.hidden:
            return spec
        where = spec.origin if spec.submodule_search_locations is None else next(iter(spec.submodule_search_locations), None)
        if not where or Path(where).resolve().parent not in self.site_dirs:
            return spec
        elsewhere = [p for p in sys.path if Path(p or ".").resolve() not in self.site_dirs]
        return self.inner.find_spec(name, elsewhere, target)

    def __getattr__(self, attr):  # find_distributions, invalidate_caches, ...
        return getattr(self.inner, attr)


def simulate_image(wheels: tuple[str, ...] = WHEELS) -> dict[str, str]:
    """Hide, in this process, every installed top-level module whose distribution is neither in
    the image nor in the wheels. Call before importing anything else. Returns {module: dist}."""
    allowed = allowed_distributions(wheels)
    hidden = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        if module != "aistack" and not any(normalize(d) in allowed for d in dists):
            hidden[module] = dists[0]
    sys.meta_path[:] = [_HideModules(f, hidden) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    return hidden


def import_problems(modules: tuple[str, ...] = CHECK_PATH_MODULES) -> list[str]:
    """The check path's modules that do not import here (an aistack module that no longer
    exists is skipped: the refactors of lib/ rename modules; the run itself will tell)."""
    problems = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            if name.startswith("aistack.") and err.name == name:
                continue
            problems.append(f"{name}: {type(err).__name__}: {err}")
    return problems


# --- aistack without an index ----------------------------------------------------------


def aistack_shim(repo: Path, dest: Path) -> Path:
    """dest/aistack: links to lib/aistack's entries plus jobs -> repo/jobs, the package layout
    pyproject declares. Put `dest` on PYTHONPATH. Made afresh each time (lib/ changes)."""
    package = dest / "aistack"
    if package.exists():
        for entry in package.iterdir():
            entry.unlink()
    package.mkdir(parents=True, exist_ok=True)
    for entry in (repo / "lib" / "aistack").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry.resolve())
    (package / "jobs").symlink_to((repo / "jobs").resolve())
    return dest


def ensure_aistack(repo: Path, dest: Path) -> str:
    """Make `import aistack` work here and in the tasks this process starts; says how."""
    if importlib.util.find_spec("aistack") is not None:
        return "installed"
    path = str(aistack_shim(repo, dest))
    sys.path.insert(0, path)
    os.environ["PYTHONPATH"] = path + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    importlib.invalidate_caches()
    return f"linked into {path}"
