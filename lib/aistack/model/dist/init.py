"""Build torch.distributed from submitit's JobEnvironment: gloo on CPU, NCCL on GPU.

submitit's TorchDistributedEnvironment exports MASTER_ADDR (the job's first host),
MASTER_PORT (ours, derived from the job id: see master_port), RANK, WORLD_SIZE and
LOCAL_RANK; torch then rendezvouses over env://. A job of one process needs no agreed
port at all.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from aistack.runtime.rendezvous import master_port


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
            job = submitit.JobEnvironment()
            world = job.num_tasks
        except RuntimeError:  # not under submitit (a test, a benchmark)
            job, world = None, 1
        if world == 1:
            return _group_of_one(backend, timeout)
        os.environ.setdefault("MASTER_PORT", str(master_port(job.job_id)))
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def _group_of_one(backend: str, timeout: datetime.timedelta) -> tuple[int, int]:
    """One process has no peer to meet: its store listens on whatever port is free (two
    array tasks on one host must not race for a port derived from their ids)."""
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, timeout=timeout)
    if backend == "nccl":
        torch.cuda.set_device(0)
    dist.init_process_group(backend=backend, store=store, rank=0, world_size=1, timeout=timeout)
    return 0, 1


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
