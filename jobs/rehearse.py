"""The stand-in every task of a rehearsal runs (aistack.launch.rehearsal): what the real
task would see, checked in seconds, with nothing but the standard library on the node.

- ranks: every rank of the job meets rank 0 at the master address and port the real
  task's torch.distributed would use (one rank per node is rehearsed): they agree on the
  job, the world size and the address, and sit on as many nodes as planned;
- GPUs: the devices Slurm gave each rank, as many as the job asks per node;
- input: the shard of the stage's planned input files (inputs.json) this task would read,
  each still as planned (or the upstream stage's folder, written before it runs);
- checkpoint: the checkpoint the real task would resume from, or start from.

A disagreement fails the task, naming it; everything else is its result (DONE).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aistack.rundir import REHEARSAL_FILE, RunDir, latest_checkpoint, read_input_manifest, read_json
from aistack.runtime.rendezvous import gather, master_port
from aistack.runtime.task import TaskContext, task_env


class RehearsalMismatch(RuntimeError):
    """What the real task would see disagrees with what it was planned to see."""


def run(ctx: TaskContext) -> dict[str, Any]:
    info = read_json(ctx.run.path / REHEARSAL_FILE)
    if info is None:
        raise RehearsalMismatch(f"{ctx.run.path / REHEARSAL_FILE} is missing: this run directory is not a rehearsal")
    planned = info["jobs"][ctx.job]
    problems: list[str] = []
    ranks = _ranks(ctx, planned, problems)
    result = {
        "rehearses": f"{info['of']} job {ctx.job} ({planned['entry']}) task {ctx.task_id} of {planned['tasks']}",
        "ranks": ranks,
        "input": _input_shard(ctx, problems),
        "checkpoint": _checkpoint(ctx, RunDir(Path(info["of"])).task_dir(ctx.job, ctx.task_id)),
    }
    if problems:
        raise RehearsalMismatch("; ".join(problems))
    return result


def _ranks(ctx: TaskContext, planned: dict, problems: list[str]) -> dict[str, Any]:
    rank, world, local, job_id = task_env()
    gpus = _gpus()
    if world > 1:
        addr = _master_addr()
        port = int(os.environ.get("MASTER_PORT") or master_port(job_id))
    else:
        addr, port = "127.0.0.1", 0
    mine = {"rank": rank, "job": job_id, "world": world, "node": os.environ.get("SLURMD_NODENAME", os.uname().nodename),
            "local_rank": local, "master": f"{addr}:{port}", "gpus": gpus}
    table = gather(mine, rank, world, addr, port)
    nodes = sorted({row["node"] for row in table})
    for key in ("job", "world", "master"):
        if len({row[key] for row in table}) > 1:
            problems.append(f"the ranks disagree on the {key}: " + ", ".join(f"rank {r['rank']} {r[key]}" for r in table))
    slurm_nodes = os.environ.get("SLURM_JOB_NUM_NODES")
    if slurm_nodes is not None and int(slurm_nodes) != planned["nodes"]:
        problems.append(f"Slurm gave the job {slurm_nodes} nodes, {planned['nodes']} were planned")
    if world > 1 and len(nodes) != planned["nodes"]:
        problems.append(f"{world} rehearsed ranks sit on {len(nodes)} nodes ({', '.join(nodes[:8])}), "
                        f"{planned['nodes']} were planned")
    if "SLURM_JOB_ID" in os.environ:
        for row in table:
            if planned["gpus_per_node"] and len(row["gpus"]) != planned["gpus_per_node"]:
                problems.append(f"rank {row['rank']} on {row['node']} sees GPUs {row['gpus'] or 'none'}, "
                                f"{planned['gpus_per_node']} per node were planned")
    return {"planned_world_size": planned["nodes"] * planned["tasks_per_node"], "rehearsed": len(table), "nodes": nodes,
            "master": table[0]["master"], "gpus": {row["node"]: row["gpus"] for row in table}}


def _gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [d for d in visible.split(",") if d] if visible else []


def _master_addr() -> str:
    """The job's first host, as the real task's torch rendezvous takes it (submitit's
    TorchDistributedEnvironment), unless the profile's environment sets MASTER_ADDR."""
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    import submitit

    return submitit.JobEnvironment().hostnames[0]


def _input_shard(ctx: TaskContext, problems: list[str]) -> dict[str, Any] | None:
    """The files of the manifest this task reads (files[task::tasks], as datatrove shards)."""
    manifest = read_input_manifest(ctx.run)
    if manifest is None:
        return None
    files = sorted(manifest["files"], key=lambda entry: entry["path"])
    shard = files[ctx.task_id::ctx.num_tasks]
    changed = [entry["path"] for entry in shard if "size" in entry and _changed(entry)]
    if changed:
        problems.append(f"input files changed or gone since planning: {', '.join(changed[:5])}")
    return {"files": len(shard), "bytes": sum(entry.get("size", 0) for entry in shard),
            "first": [entry["path"] for entry in shard[:3]], "from_upstream": manifest["deferred"]}


def _changed(entry: dict) -> bool:
    try:
        stat = os.stat(entry["path"])
    except OSError:
        return True
    return (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"])


def _checkpoint(ctx: TaskContext, real_task_dir: Path) -> dict[str, Any]:
    """What the real task would load: its own latest checkpoint, else the recipe's."""
    own = real_task_dir / "checkpoints"
    latest = latest_checkpoint(own) if own.is_dir() else None
    given = {key: value for key, value in (("checkpoint.load", (ctx.data.get("checkpoint") or {}).get("load")),
                                           ("teacher.checkpoint", (ctx.data.get("teacher") or {}).get("checkpoint")))
             if value}
    return {"resumes_from": str(latest) if latest else None,
            "starts_from": {key: {"path": value, "exists": Path(value).exists()} for key, value in given.items()}}
