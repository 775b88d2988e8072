"""torch.distributed start-up under Slurm: a one-process task needs no agreed port, and a
multi-process job's port stays below the kernel's ephemeral range."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from aistack.model.dist.init import destroy, init_distributed


@pytest.fixture
def slurm_array_task(monkeypatch):
    """The environment a one-process Slurm array task sees (submitit's JobEnvironment reads it)."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4200", "SLURM_ARRAY_TASK_ID": "3",
           "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield "4200_3"
    destroy()


def test_a_one_process_task_starts_even_when_the_port_its_id_maps_to_is_taken(slurm_array_task):
    from aistack.model.dist.init import master_port

    # the ports this task's id maps to, submitit's (used before) and aistack's own: held by
    # other processes (two array tasks on one host)
    derived = {random.Random(slurm_array_task).randint(20000, 60000), master_port(slurm_array_task)}
    held = []
    for port in derived:
        taken = socket.socket()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        held.append(taken)
    try:
        assert init_distributed() == (0, 1)
        value = torch.ones(3)
        dist.all_reduce(value)
        assert value.tolist() == [1.0, 1.0, 1.0]
    finally:
        for taken in held:
            taken.close()


def test_master_port_is_the_same_on_every_rank_and_below_the_ephemeral_range():
    from aistack.runtime.rendezvous import _ephemeral_low, master_port

    ports = {master_port(f"{job}_{task}") for job in range(1000, 1010) for task in range(20)}
    assert len(ports) > 150  # concurrent jobs get different ports
    assert all(10_000 <= p < max(_ephemeral_low(), 20_000) for p in ports)
    # every rank is its own process, with its own hash seed: the port must not depend on it
    code = "from aistack.model.dist.init import master_port; print(master_port('1234_5'))"
    seen = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True,
                           text=True, timeout=60, check=True).stdout.strip() for seed in ("1", "2")}
    assert seen == {str(master_port("1234_5"))}
