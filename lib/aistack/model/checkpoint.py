"""Distributed checkpoints (megatron-core dist_checkpointing, torch_dist format).

    <dir>/step_000100/     one checkpoint: every rank's shards + common state, any TP/PP layout
    <dir>/latest           "step_000100": written only after that checkpoint is complete

A checkpoint is written under a temporary name and renamed once every rank has finished,
then `latest` is replaced atomically; a crash mid-save leaves the previous one intact.
The last `keep` checkpoints are kept. Loading reshards: the shards are addressed by global
tensor coordinates, so a TP=2 x PP=2 checkpoint loads at TP=1 x PP=1 and vice versa.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from aistack.rundir import LATEST, atomic_write_text, latest_checkpoint, saved_steps, step_dir  # noqa: F401  (the layout's names here too)
from aistack.model import cpu_compat, nemo, safe_load
from aistack.model.gpt import unwrap

log = logging.getLogger("aistack")

# Checkpoints are data: whatever this process loads is read without running code (safe_load.py).
safe_load.install()

# The distributed optimizer state in a layout-independent form (gathered per parameter).
_SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root, or None. `root` may itself be a checkpoint."""
    root = Path(root)
    if (root / "metadata.json").exists() or nemo.is_nemo_checkpoint(root):  # a checkpoint directory given directly
        return root
    return latest_checkpoint(root)


def _sharded_state_dict(model_chunks: list, optimizer, scheduler, step: int, is_loading: bool,
                        with_optimizer: bool = True, prefix: str = "") -> dict[str, Any]:
    # One "model" key per chunk, as Megatron-LM names them, so its checkpoints and ours agree.
    state: dict[str, Any] = {}
    for i, chunk in enumerate(unwrap(model_chunks)):
        state["model" if len(model_chunks) == 1 else f"model{i}"] = chunk.sharded_state_dict(prefix=prefix)
    if with_optimizer and optimizer is not None:
        # The optimizer finds each param's sharding through the model entries (by identity).
        model_sd = dict(state)
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=_SHARDING)
        if scheduler is not None:
            state["opt_param_scheduler"] = scheduler.state_dict()
    state["iteration"] = step
    return state


def save(root: str | Path, step: int, model_chunks: list, optimizer, scheduler, extra: dict | None = None,
         keep: int | None = None) -> Path:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    rank = dist.get_rank()
    if (final / "metadata.json").exists():
        # This step is saved already (a quick-save on the signal right after the periodic
        # save): the state is the same. Never delete the only complete checkpoint to redo it.
        if rank == 0:
            atomic_write_text(root / LATEST, final.name + "\n")
        dist.barrier()
        return final
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    with cpu_compat.device_scope(), torch.no_grad():
        state = _sharded_state_dict(model_chunks, optimizer, scheduler, step, is_loading=False)
        dist_checkpointing.save(state, str(tmp), content_metadata=_SHARDING)
    # Per-rank RNG state: restored only on a resume with the same layout (dropout streams).
    rng = tmp / "rng"
    if rank == 0:
        rng.mkdir(exist_ok=True)
    dist.barrier()
    torch.save({"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "tracker": _tracker_states()}, rng / f"rank{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        (tmp / "aistack.json").write_text(json.dumps({"step": step, "world_size": dist.get_world_size(), **(extra or {})}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(root / LATEST, final.name + "\n")
        if keep:
            for old in saved_steps(root)[:-keep]:
                shutil.rmtree(step_dir(root, old), ignore_errors=True)
    dist.barrier()
    return final


def load(path: str | Path, model_chunks: list, optimizer=None, scheduler=None, restore_rng: bool = True) -> dict[str, Any]:
    """Collective. Loads model (and optimizer/scheduler when given) from a checkpoint of any
    TP/PP layout; returns {"step": ..., **extra saved}. A NeMo 2 checkpoint gives its weights."""
    from megatron.core import dist_checkpointing

    path, prefix = Path(path), ""
    if nemo.is_nemo_checkpoint(path):
        if optimizer is not None:
            raise ValueError(f"{path} is a NeMo checkpoint: aistack reads its weights, not NeMo's optimizer state "
                             "(set checkpoint.load_optimizer=false)")
        path, prefix = path / nemo.WEIGHTS, nemo.PREFIX
    with cpu_compat.device_scope(), torch.no_grad():
        if optimizer is not None:
            _init_optimizer_state(optimizer)
        state = _sharded_state_dict(model_chunks, optimizer, scheduler, 0, is_loading=True,
                                    with_optimizer=optimizer is not None, prefix=prefix)
        state.pop("opt_param_scheduler", None)
        if prefix:  # Transformer Engine's FP8 metadata (_extra_state) of another program: not needed, not read
            state = nemo.without_extra_state(state)
        loaded = dist_checkpointing.load(state, str(path))
        for i, chunk in enumerate(unwrap(model_chunks)):
            weights = {k[len(prefix):]: v for k, v in loaded["model" if len(model_chunks) == 1 else f"model{i}"].items()}
            missing, unexpected = chunk.load_state_dict(weights, strict=False)
            missing = [k for k in missing if not (prefix and k.endswith("_extra_state"))]
            if missing or unexpected:
                raise KeyError(f"{path}: the checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
        if optimizer is not None:
            optimizer.load_state_dict(loaded["optimizer"])
    meta = json.loads((path / "aistack.json").read_text()) if (path / "aistack.json").exists() else {}
    step = int(meta.get("step", loaded.get("iteration", 0)))
    if optimizer is not None:
        from aistack.model.optim import fix_steps_after_load

        fix_steps_after_load(optimizer, step)
    if optimizer is not None and scheduler is not None:
        scheduler.step(increment=0)  # the schedule is a function of the step: recompute the lr
    rng_file = path / "rng" / f"rank{dist.get_rank():05d}.pt"
    if restore_rng and meta.get("world_size") == dist.get_world_size() and rng_file.exists():
        rng = read_rng_file(rng_file)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        _set_tracker_states(rng["tracker"])
    return {**meta, "step": step}


def _init_optimizer_state(optimizer) -> None:
    """A fresh torch AdamW has no state until its first step; give it zeros (and a 'step')
    so the loading state dict has the checkpoint's structure."""
    from aistack.model.optim import inner_optimizers

    for opt in inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        init = getattr(opt, "init_state_fn", None)
        if torch_opt is None or init is None:
            continue
        init(torch_opt, getattr(opt, "config", None))
        for state in torch_opt.state.values():
            state.setdefault("step", torch.tensor(0.0))


def read_rng_file(path: Path) -> dict[str, Any]:
    """A rank's RNG states: tensors in dicts, read as data (a pickle naming code is refused)."""
    return torch.load(path, weights_only=True)


def _tracker_states() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    return {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()}


def _set_tracker_states(states: dict) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    get_cuda_rng_tracker().set_states({k: v.clone() for k, v in states.items()})


def load_model(path: str | Path, model_cfg: Any, vocab_size: int, tensor: int = 1, precision: str = "fp32",
               use_te: bool | None = None):
    """One GPTModel stage (TP=`tensor`, PP=1) with the weights of the checkpoint at `path`,
    whatever layout saved it. `vocab_size` is the unpadded one. Megatron's parallel state
    must be initialised with this TP size and PP=1."""
    from aistack.model.config import ParallelConfig
    from aistack.model import gpt
    from aistack.model.layout import padded_vocab_size

    model = gpt.build_gpt(model_cfg, ParallelConfig(tensor=tensor), True, True,
                          padded_vocab_size(vocab_size, model_cfg, tensor), precision, use_te=use_te)
    load(path, [model], restore_rng=False)
    return model


def load_model_alone(path: str | Path, model_cfg: Any, vocab_size: int):
    """load_model in a process of its own: TP=1, PP=1, fp32, megatron's local layers. Megatron
    needs its parallel state even for one process: a gloo (or NCCL) group of one is
    initialised if none exists (under submitit: the task's own rendezvous)."""
    from aistack.model.dist.megatron import init_model_parallel, set_seeds

    init_model_parallel(1, 1)
    set_seeds(1234)
    with cpu_compat.device_scope():
        return load_model(path, model_cfg, vocab_size, use_te=False)


def load_run_model(run_dir: str | Path, job: str = "train", task: int = 0):
    """The latest checkpoint of a run's training task as one GPTModel in this process (TP=1/PP=1,
    fp32), whatever layout saved it: megatron's dist_checkpointing reshards on load."""
    import yaml

    from aistack.model.config import ModelConfig
    from aistack.model.dataset import Tokenizer
    from aistack.model.estimate import recipe_tokenizer

    run_dir = Path(run_dir)
    data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    model_cfg = ModelConfig.model_validate(data["model"])
    source = latest(run_dir / "jobs" / job / "tasks" / f"{task:05d}" / "checkpoints")
    if source is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint of job {job} task {task} to export")
    vocab = model_cfg.vocab_size or Tokenizer.from_file(recipe_tokenizer(data)).vocab_size
    return load_model_alone(source, model_cfg, vocab)


def load_full_state_dict(run_dir: str | Path, job: str = "train", task: int = 0) -> dict[str, Any]:
    """load_run_model's weights as one full state dict (TP=1/PP=1 names)."""
    model = load_run_model(run_dir, job, task)
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
