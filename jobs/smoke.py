"""One shard of the smoke recipe: real arithmetic, checkpoints, metrics, optional all_reduce."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from aistack.rundir import atomic_write_json, read_json
from aistack.runtime.task import TaskContext


def run(ctx: TaskContext) -> dict:
    # Plain values, not ctx.recipe: a shard of a large array should not import the schema.
    cfg = SimpleNamespace(**ctx.data["smoke"])
    ckpt_file = ctx.task_dir / "checkpoint.json"
    state = read_json(ckpt_file, default={"step": 0, "digest": f"task-{ctx.task_id}", "total": 0})
    ctx.resumed_at(state["step"])  # from scratch too: an earlier attempt may have logged steps
    if state["step"]:
        print(f"task {ctx.task_id}: resuming from step {state['step']}", flush=True)

    def save() -> None:
        if ctx.is_main:
            atomic_write_json(ckpt_file, dict(state))

    ctx.on_preempt(save)
    while state["step"] < cfg.steps:
        step = state["step"] + 1
        if ctx.task_id in cfg.fail_tasks and step >= cfg.fail_at_step:
            raise RuntimeError(f"injected failure in task {ctx.task_id} at step {step} (smoke.fail_tasks)")
        # A hash chain: the final digest depends on every step having run exactly once.
        digest = hashlib.sha256(f"{state['digest']}:{step}".encode()).hexdigest()
        total = state["total"] + (ctx.task_id + 1) * step
        time.sleep(cfg.step_seconds)
        ctx.log(step, {"total": total, "step_time": cfg.step_seconds})
        # The step counts as done only now: a save from the preemption signal, which
        # can arrive anywhere above, holds the last whole step.
        state.update(step=step, digest=digest, total=total)
        if step % cfg.checkpoint_every == 0:
            save()
    result = {"task": ctx.task_id, "steps": state["step"], "total": state["total"], "digest": state["digest"],
              "ran_in": _ran_in()}
    if cfg.all_reduce:
        result["all_reduce"] = _all_reduce_ranks()
        result["world_size"] = ctx.world_size
    print(f"task {ctx.task_id}: done, total={state['total']}", flush=True)
    return result


def _ran_in() -> dict:
    """Where the shard ran: the interpreter, the image's label when it ran in the image that
    `make container-bundle` builds (containers/oci/build.sh writes /etc/aistack-image), and
    its share of the CPUs (OpenMP threads: aistack.runtime.task.share_cpus)."""
    label = Path("/etc/aistack-image")
    return {"python": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3],
            "image": label.read_text().strip() if label.is_file() else None, "omp_threads": os.environ.get("OMP_NUM_THREADS")}


def _all_reduce_ranks() -> float:
    import torch
    import torch.distributed as dist

    from aistack.model.dist import destroy, init_distributed

    rank, _ = init_distributed()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    destroy()
    return float(value.item())
