"""Build torch.distributed from submitit's JobEnvironment: gloo on CPU, NCCL on GPU.

submitit's TorchDistributedEnvironment exports MASTER_ADDR (the job's first host),
MASTER_PORT (derived from the job id, so concurrent jobs do not collide), RANK,
WORLD_SIZE and LOCAL_RANK; torch then rendezvouses over env://.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(backend: str | None = None, timeout_s: int = 600) -> tuple[int, int]:
    """Initialise the default process group once; returns (rank, world_size)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if "RANK" not in os.environ:
        import submitit

        try:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        except RuntimeError:  # not under submitit (a test, a benchmark): a group of one, env untouched
            dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1, timeout=timeout)
            return 0, 1
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
