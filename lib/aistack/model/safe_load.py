"""Checkpoints are data: reading one never runs code from it.

torch's distributed checkpoint reader unpickles `<checkpoint>/.metadata` with `pickle.load`
and its load planner reads every byte item (megatron's ShardedObjects) with
`torch.load(weights_only=False)`: a checkpoint folder from someone else (a NeMo
checkpoint, a teacher, a model to evaluate) could run whatever its pickles name.
`install()` replaces both readers for this process:

- `.metadata` goes through an unpickler that admits only what torch writes there (its
  checkpoint metadata and planner records, torch.Size, dtypes, layouts, and enum members
  by name: Python 3.11.2, the container images' Python, pickles `getattr(Enum, "NAME")`);
  anything else is refused, naming the file and the class;
- byte items are read with `torch.load(weights_only=True)` (tensors, numbers, strings and
  containers of them).

Writing is unchanged: checkpoints aistack writes read back through these readers.
"""

from __future__ import annotations

import enum
import io
import pickle
from typing import Any

import torch

# Modules whose own classes (dataclasses, enums) make up torch's checkpoint metadata.
_RECORD_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner")
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by its name (torch.strided, ...)
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pathlib", "PosixPath"),  # the checkpoint id torch records
    ("pathlib", "PurePosixPath"),
}


class UnsafeCheckpoint(pickle.UnpicklingError):
    """A checkpoint's metadata names something a checkpoint has no reason to name."""


class MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return self._enum_member
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module in _RECORD_MODULES:
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__ == module:
                return found
        raise UnsafeCheckpoint(f"{self.source}: refused to read {module}.{name}: a checkpoint's metadata holds torch's "
                               "checkpoint records only, and loading this one would run code it names")


    def _enum_member(self, owner: Any, name: str) -> Any:
        """getattr as an enum pickled by name uses it, and for nothing else: `owner` came
        through find_class, and only its members are handed out, never its methods."""
        if isinstance(owner, type) and issubclass(owner, enum.Enum) and name in owner.__members__:
            return owner[name]
        raise UnsafeCheckpoint(f"{self.source}: refused to read getattr({getattr(owner, '__name__', type(owner).__name__)}, "
                               f"{name!r}): a checkpoint's metadata takes nothing by name but enum members")


def read_metadata_file(stream, source: str):
    return MetadataUnpickler(stream, source).load()


def _read_metadata(self, *args: Any, **kwargs: Any):
    """FileSystemReader.read_metadata, through MetadataUnpickler."""
    from torch.distributed.checkpoint.metadata import StorageMeta

    path = self._get_metadata_path(kwargs.get("rank"))
    with self.fs.create_stream(path, "rb") as stream:
        metadata = read_metadata_file(stream, str(path))
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    metadata.storage_meta.load_id = self.load_id
    return metadata


def _load_bytes(self, read_item, value: io.BytesIO) -> None:
    """DefaultLoadPlanner.load_bytes with weights_only=True."""
    from torch.distributed.checkpoint._traverse import set_element  # as torch's own load_bytes

    try:
        loaded = torch.load(value, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = str(err).splitlines()
        why = next((line.strip() for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        raise UnsafeCheckpoint(f"checkpoint item {read_item.dest_index.fqn}: refused to read it as data, loading it would "
                               f"run code it names ({why})") from None
    if self.flatten_state_dict:
        set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
    else:
        self.state_dict[read_item.dest_index.fqn] = loaded


def install() -> None:
    """Every distributed checkpoint this process reads goes through the readers above."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    FileSystemReader.read_metadata = _read_metadata
    DefaultLoadPlanner.load_bytes = _load_bytes
