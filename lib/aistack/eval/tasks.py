"""lm-eval tasks, offline: the project's local tasks, extra task folders, clear data errors.

Local tasks are lm-eval YAML configs with `dataset_path: json` and `data_files` next to
the YAML (recipes/eval/tasks/). lm-eval hands data_files to `datasets` as they are, i.e.
relative to the working directory of the job; `stage_task_dirs` copies the task folders
into the job's directory with those paths made absolute, so a task runs from any cwd.

Offline (the default): HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set before a dataset is
touched, so a task whose data is not cached fails at once, with an error naming the task
and the dataset, instead of waiting on a network a compute node does not have.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}


def project_tasks() -> Path:
    """The project's local task folder (recipes/eval/tasks, found by aistack.assets)."""
    from aistack.assets import shipped

    return shipped("eval", "tasks")


class MissingDataset(RuntimeError):
    """A task's dataset is neither local nor in the Hugging Face cache."""


class UnknownTask(ValueError):
    pass


def set_offline(offline: bool) -> None:
    """Set (or clear) the HF offline switches, also in libraries that read them at import."""
    value = "1" if offline else "0"
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = value
    import sys

    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hub

        hub.HF_HUB_OFFLINE = offline
    if "datasets" in sys.modules:
        import datasets.config as dsc

        dsc.HF_HUB_OFFLINE = dsc.HF_DATASETS_OFFLINE = offline


# --- staging local task folders ---------------------------------------------------------


class _Function(str):
    """A `!function module.name` value, kept as written."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))
_Dumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def _absolute_data_files(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        if "://" in value or os.path.isabs(value):
            return value
        return str((base / value).resolve())
    if isinstance(value, list):
        return [_absolute_data_files(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute_data_files(v, base) for k, v in value.items()}
    return value


def stage_task_dirs(sources: list[str | Path], out_dir: str | Path) -> Path:
    """Copy each task folder under out_dir/<i>/ with local data_files made absolute."""
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    for i, src in enumerate(sources):
        src = Path(src).absolute()
        if not src.is_dir():
            raise FileNotFoundError(f"lm-eval task folder {src} does not exist")
        dest = out / f"{i:02d}-{src.name}"
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.jsonl", "*.json", "*.parquet", "*.csv", "__pycache__"))
        for yaml_path in dest.rglob("*.yaml"):
            original = src / yaml_path.relative_to(dest)
            cfg = yaml.load(yaml_path.read_text(), Loader=_Loader)
            kwargs = cfg.get("dataset_kwargs") if isinstance(cfg, dict) else None
            if not (isinstance(kwargs, dict) and "data_files" in kwargs and cfg.get("dataset_path") in LOCAL_BUILDERS):
                continue
            kwargs["data_files"] = _absolute_data_files(kwargs["data_files"], original.parent)
            yaml_path.write_text(yaml.dump(cfg, Dumper=_Dumper, sort_keys=False))
    return out


def code_in(folder: str | Path) -> list[str]:
    """What in an lm-eval task folder would make lm-eval import Python: `.py` files, and
    YAML files with a `!function` tag (lm-eval imports the module it names)."""
    found: list[str] = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix == ".py":
            found.append(f"{path} (Python)")
        elif path.suffix in (".yaml", ".yml") and path.is_file():
            text = path.read_text(errors="replace")
            if "!function" in text:
                found.append(f"{path} (!function)")
    return found


def local_task_names(folders: list[str | Path]) -> set[str]:
    """Task, group and tag names defined by the YAML files under these folders (no lm-eval import)."""
    names: set[str] = set()
    for folder in folders:
        for path in Path(folder).rglob("*.yaml"):
            try:
                cfg = yaml.load(path.read_text(), Loader=_Loader)
            except yaml.YAMLError:
                continue
            if not isinstance(cfg, dict):
                continue
            for key in ("task", "group"):
                if isinstance(cfg.get(key), str):
                    names.add(cfg[key])
            tags = cfg.get("tag") or []
            names.update([tags] if isinstance(tags, str) else tags)
    return names


# --- loading tasks with clear errors ----------------------------------------------------


def task_manager(extra_folders: list[str | Path], work_dir: str | Path, needed: list[str],
                 code_allowed: list[str | Path] = ()):
    """An lm-eval TaskManager over the project's tasks and `extra_folders` (staged under work_dir).
    lm-eval's built-in tasks are indexed only when a needed task is not local (~10 s saved).
    A folder of `extra_folders` with code is refused unless it is in `code_allowed`: checked
    again here, on the node, for a folder changed since the plan."""
    from lm_eval.tasks import TaskManager

    allowed = {str(Path(p).absolute()) for p in code_allowed}
    for folder in extra_folders:
        code = code_in(folder) if str(Path(folder).absolute()) not in allowed else []
        if code:
            raise PermissionError(f"lm-eval task folder {folder} carries code that lm-eval would import: {', '.join(code[:3])}; "
                                  "task folders are data (evaluate.task_paths: {path: ..., allow_code: true} if you trust it)")

    folders = [project_tasks(), *extra_folders]
    staged = stage_task_dirs(folders, Path(work_dir) / "lm_eval_tasks")
    local = local_task_names(folders)
    return TaskManager(include_path=str(staged), include_defaults=not set(needed) <= local)


def load_task(name: str, manager) -> dict:
    """lm-eval's task dict for one task (or group), or an error naming the task and its dataset."""
    entry = manager.task_index.get(name) if hasattr(manager, "task_index") else None
    if entry is None and name not in manager.all_tasks:
        import difflib

        close = difflib.get_close_matches(name, manager.all_tasks, n=5)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise UnknownTask(f"lm-eval task '{name}' is not known to lm-eval nor defined under the task folders{hint}")
    from lm_eval.tasks import get_task_dict

    try:
        return get_task_dict([name], manager)
    except Exception as err:  # datasets raises ConnectionError/FileNotFoundError/DatasetNotFoundError/...
        dataset = _dataset_of(entry)
        if dataset is None or not _is_missing_data(err):
            raise
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        how = ("offline mode is on (evaluate.offline: true sets HF_DATASETS_OFFLINE=1): download it where there is "
               f"network (python -c \"import datasets; datasets.load_dataset({dataset[0]!r}, {dataset[1]!r})\") "
               "into the cache the nodes share, or set evaluate.offline=false") if offline else "it could not be downloaded"
        named = f"'{dataset[0]}'" + (f" (config '{dataset[1]}')" if dataset[1] else "")
        raise MissingDataset(f"lm-eval task '{name}': dataset {named} is not in the local Hugging Face cache and {how}. "
                             f"Cause: {type(err).__name__}: {str(err)[:300]}") from err


def _dataset_of(entry) -> tuple[str, str | None] | None:
    cfg = getattr(entry, "cfg", None) or {}
    if not cfg and getattr(entry, "yaml_path", None):
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(entry.yaml_path, resolve_func=False)
    path = cfg.get("dataset_path")
    return (str(path), cfg.get("dataset_name")) if path else None


def _is_missing_data(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    return bool(names & {"ConnectionError", "OfflineModeIsEnabled", "DatasetNotFoundError", "FileNotFoundError",
                         "LocalEntryNotFoundError", "HFValidationError", "DataFilesNotFoundError", "EmptyDatasetError"})


def _chain(err: BaseException | None):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__
