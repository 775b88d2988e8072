"""A full state dict (TP=1/PP=1 names) -> this rank's model chunks, at any TP/PP/VPP layout.

The chunks' own `sharded_state_dict()` says which slice of which global tensor each local
parameter holds: the same description megatron's dist checkpoints are saved and resharded
with. So this is `dist_checkpointing.load` with an in-memory source instead of a directory:
the global tensor of a distributed checkpoint *is* the TP=1 tensor (linear_qkv's rows stay
grouped per query group, SwiGLU's fc1 is [gate; up] split by a factory), and layers are
stacked along a prepended axis whose offset is the global layer number.

`full` may be lazy (a Mapping that converts on access): only the tensors of this rank's
layers are read, one at a time.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# Tensors whose first dimension is the vocabulary, padded per TP size (gpt.padded_vocab_size).
_VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")


def shard_into(model_chunks: list, full: Mapping[str, torch.Tensor]) -> None:
    """Copy this rank's slices of `full` into the (unwrapped or DDP-wrapped) model chunks.
    Vocabulary rows missing from `full` (the padding megatron adds) are zero."""
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_outplace
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, apply_factory_merges
    from megatron.core.dist_checkpointing.state_dict_utils import load_preprocess

    from aistack.model.gpt import unwrap

    for chunk in unwrap(model_chunks):
        sharded, _, factories = load_preprocess(chunk.sharded_state_dict())
        loaded: dict[str, Any] = {}
        for local_name, entry in sharded.items():
            if isinstance(entry, ShardedObject):
                continue  # _extra_state: nothing in a full state dict (Transformer Engine's FP8 metadata)

            def fill(item, local_name=local_name):
                return _local_slice(item, local_name, full) if isinstance(item, ShardedTensor) else item

            loaded[local_name] = dict_list_map_outplace(fill, entry)  # a factory's entry is a list
        loaded = apply_factory_merges(loaded, {k: v for k, v in factories.items() if k in loaded})
        missing, unexpected = chunk.load_state_dict(loaded, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise KeyError(f"state dict does not fit the model: missing {missing}, unexpected {unexpected}")


def _local_slice(sh: Any, local_name: str, full: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The part of the global tensor that `sh` (a ShardedTensor of `local_name`) holds."""
    layer = _LAYER.match(local_name)
    slices = sh.global_slice()
    if layer and sh.prepend_axis_num == 1:  # local layer index -> the global one (PP, VPP)
        name = f"decoder.layers.{sh.global_offset[0]}.{layer.group(2)}"
        slices = slices[1:]
    elif sh.prepend_axis_num == 0:
        # A tied output layer on the last pipeline stage is stored as the embedding.
        name = local_name if local_name in full else sh.key
    else:
        raise ValueError(f"{local_name}: unexpected sharding {sh}")
    if name not in full:
        raise KeyError(f"{name} (for {local_name}) is not in the state dict")
    tensor = full[name]
    expected = tuple(sh.global_shape[sh.prepend_axis_num:])
    if tuple(tensor.shape) != expected:
        tensor = _fit_rows(name, tensor, expected)
    return tensor[slices].to(sh.dtype).contiguous()


def _fit_rows(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The two row counts a layout or recipe may change: the vocabulary padding (zero rows: a
    padded token is never an input, and its logit is 0 until training pushes it down) and
    learned positions beyond model.seq_length (unused: dropped)."""
    rows, same_width = tensor.shape[0], tuple(tensor.shape[1:]) == shape[1:]
    if same_width and name in _VOCAB_ROWS and rows < shape[0]:
        return torch.cat([tensor, tensor.new_zeros(shape[0] - rows, *shape[1:])])
    if same_width and name == "embedding.position_embeddings.weight" and rows > shape[0]:
        return tensor[: shape[0]]
    raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not fit the model's {shape}")
