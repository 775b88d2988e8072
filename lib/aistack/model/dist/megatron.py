"""Megatron parallel state (TP x PP x DP) and seeds, from the Slurm/submitit task environment.

torch.distributed comes from `init_distributed` (submitit's env: rank, world size, a
rendezvous port derived from the job id); megatron's process groups are then carved out
of it. gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from aistack.model.dist.init import destroy, init_distributed


@dataclass(frozen=True)
class Layout:
    rank: int
    world_size: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    vpp: int | None = None

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0


def init_model_parallel(tensor: int = 1, pipeline: int = 1, virtual_pipeline: int | None = None) -> Layout:
    """Initialise torch.distributed (once) and megatron's TP/PP/DP groups for this task."""
    from megatron.core import parallel_state as ps

    from aistack.model import cpu_compat

    cpu_compat.install()  # no-op with a GPU
    rank, world = init_distributed()
    if world % (tensor * pipeline):
        raise ValueError(f"world size {world} is not divisible by tensor x pipeline = {tensor} x {pipeline}")
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tensor,
        pipeline_model_parallel_size=pipeline,
        virtual_pipeline_model_parallel_size=virtual_pipeline,
    )
    return current_layout()


def current_layout() -> Layout:
    from megatron.core import parallel_state as ps

    return Layout(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        vpp=ps.get_virtual_pipeline_model_parallel_world_size(),
    )


def set_seeds(seed: int) -> None:
    """Same seed on every rank for the default generators (identical data-parallel replicas);
    megatron's tracker derives the per-TP-rank states (init of sharded weights, dropout)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_model_parallel() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    destroy()
