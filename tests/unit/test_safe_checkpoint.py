"""Checkpoints are data: a checkpoint folder whose pickles name code is refused, naming the
file and what it names, and the code never runs; checkpoints torch and megatron write load."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

from aistack.model import checkpoint, safe_load  # importing checkpoint installs the safe readers


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_metadata_and_byte_items_read_back(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "extra": {"step": 3, "names": ["a", "b"]}}
    dcp.save(state, checkpoint_id=str(tmp_path), no_dist=True)
    loaded = {"w": torch.zeros(2, 3), "extra": {"step": 0, "names": []}}
    dcp.load(loaded, checkpoint_id=str(tmp_path), no_dist=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["extra"] == state["extra"]


def test_metadata_that_names_code_is_refused_and_the_code_never_runs(tmp_path):
    dcp.save({"w": torch.ones(2)}, checkpoint_id=str(tmp_path), no_dist=True)
    marker = tmp_path / "ran"
    (tmp_path / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    # torch wraps the reader's error in its own, with the message kept
    with pytest.raises(CheckpointException, match=r"\.metadata: refused to read (posix|os)\.system"):
        dcp.load({"w": torch.zeros(2)}, checkpoint_id=str(tmp_path), no_dist=True)
    assert not marker.exists()


def test_a_byte_item_that_names_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    dcp.save({"w": torch.ones(2), "extra": RunsCode(marker)}, checkpoint_id=str(tmp_path / "ck"), no_dist=True)
    assert not marker.exists(), "saving pickles, it runs nothing"
    with pytest.raises(CheckpointException, match=r"checkpoint item extra: refused .*GLOBAL (posix|os)\.system"):
        dcp.load({"w": torch.zeros(2), "extra": None}, checkpoint_id=str(tmp_path / "ck"), no_dist=True)
    assert not marker.exists()


def test_rng_states_are_read_as_data(tmp_path):
    good = tmp_path / "rank00000.pt"
    torch.save({"cpu": torch.get_rng_state(), "cuda": None, "tracker": {"model-parallel-rng": torch.get_rng_state()}}, good)
    assert torch.equal(checkpoint.read_rng_file(good)["cpu"], torch.get_rng_state())
    bad = tmp_path / "rank00001.pt"
    marker = tmp_path / "ran"
    torch.save({"cpu": RunsCode(marker)}, bad)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.read_rng_file(bad)
    assert not marker.exists()


class _ByName:
    """What Python 3.11.2 (the container images') writes for an enum member: getattr(cls, name)."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


def test_enum_members_pickled_by_name_read_back_and_getattr_hands_out_nothing_else():
    import io

    from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING

    blob = pickle.dumps([_ByName(_MEM_FORMAT_ENCODING, "TORCH_CONTIGUOUS_FORMAT")])
    assert b"getattr" in blob
    assert safe_load.read_metadata_file(io.BytesIO(blob), "m") == [_MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT]
    for owner, name in ((_MEM_FORMAT_ENCODING, "__class__"), (torch.Size, "__new__")):
        with pytest.raises(safe_load.UnsafeCheckpoint, match=r"m: refused to read getattr\("):
            safe_load.read_metadata_file(io.BytesIO(pickle.dumps(_ByName(owner, name))), "m")
