"""Where the ranks of a multi-process job meet, and a rendezvous that needs no torch.

`master_port` is the port every rank of a job derives from its job id (torch.distributed
rendezvouses there: see aistack.model.dist.init). `gather` is the same meeting over plain
TCP, for the rehearsal's stand-in (aistack.jobs.rehearse): rank 0 listens on the port, the
other ranks connect to the master address every rank was given, each sends what it sees,
and every rank gets back the whole table. A rank that disagrees on the address, the port
or the world size does not meet the others: the gather times out naming who came.
"""

from __future__ import annotations

import json
import random
import socket
import time
from typing import Any


def master_port(job_id: str) -> int:
    """The rendezvous port of a multi-process job, the same on every rank: derived from the
    job id (concurrent jobs get different ones) and below the kernel's ephemeral range, where
    a client socket of any other process (sacct, a database, W&B) could already hold it."""
    low = _ephemeral_low()
    return random.Random(job_id).randint(10_000, max(low, 20_000) - 1)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


class RendezvousFailed(RuntimeError):
    pass


def gather(info: dict[str, Any], rank: int, world_size: int, addr: str, port: int, timeout_s: float = 120) -> list[dict]:
    """Every rank's `info`, in rank order, on every rank."""
    if world_size == 1:
        return [info]
    deadline = time.monotonic() + timeout_s
    if rank == 0:
        return _serve(info, world_size, port, deadline)
    return _join(info, rank, addr, port, deadline)


def _serve(info: dict[str, Any], world_size: int, port: int, deadline: float) -> list[dict]:
    table: dict[int, dict] = {0: info}
    peers: list[socket.socket] = []
    with socket.create_server(("", port), reuse_port=False, backlog=world_size) as server:
        try:
            while len(table) < world_size:
                server.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    peer, _ = server.accept()
                except TimeoutError:
                    raise RendezvousFailed(f"rendezvous on port {port}: {len(table)} of {world_size} ranks came "
                                           f"(ranks {sorted(table)}); the others did not reach this host") from None
                peer.settimeout(max(deadline - time.monotonic(), 0.01))
                entry = json.loads(_read_line(peer))
                if entry.get("rank") in table or not 0 < int(entry.get("rank", -1)) < world_size:
                    peer.close()
                    raise RendezvousFailed(f"rendezvous on port {port}: rank {entry.get('rank')} came twice or is "
                                           f"outside 0..{world_size - 1}")
                table[int(entry["rank"])] = entry
                peers.append(peer)
            everyone = [table[r] for r in range(world_size)]
            reply = (json.dumps(everyone) + "\n").encode()
            for peer in peers:
                peer.sendall(reply)
            return everyone
        finally:
            for peer in peers:
                peer.close()


def _join(info: dict[str, Any], rank: int, addr: str, port: int, deadline: float) -> list[dict]:
    last: Exception | None = None
    while time.monotonic() < deadline:  # rank 0 may not listen yet
        try:
            conn = socket.create_connection((addr, port), timeout=max(deadline - time.monotonic(), 0.01))
        except OSError as err:  # refused, unresolvable, unreachable
            last = err
            time.sleep(0.2)
            continue
        with conn:
            # Rank 0 decides: it answers with the table, or closes when its own wait ends.
            conn.settimeout(max(deadline - time.monotonic(), 0) + 10)
            try:
                conn.sendall((json.dumps({**info, "rank": rank}) + "\n").encode())
                reply = _read_line(conn)
            except OSError:
                reply = ""
        if not reply:
            raise RendezvousFailed(f"rank {rank}: rank 0 at {addr}:{port} gave up before every rank came")
        return json.loads(reply)
    raise RendezvousFailed(f"rank {rank} could not meet rank 0 at {addr}:{port}: {last}")


def _read_line(conn: socket.socket) -> str:
    chunks = []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks).decode()
