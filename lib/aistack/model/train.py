"""The pretraining loop, top to bottom.

    parallel state -> model chunks (DDP) -> optimizer + schedule -> data -> resume
    -> for each step: forward/backward over micro-batches (1F1B with PP), clip, step
    -> log, evaluate, checkpoint -> final checkpoint and validation loss.

Everything megatron does on "cuda" runs on the CPU inside cpu_compat.device_scope() when
there is no GPU; with one, the scope is a no-op.

Speed: train.fused (on by default with a GPU) takes torch.compile'd fusions in the layers and
fused AdamW; train.compile compiles each transformer layer (regional compilation: one graph
reused by every layer). On a GPU micro-batches are pinned and copied one ahead of the one
computing.

Preemption. Periodic checkpoints (checkpoint.every) are the resume point on every layout.
With a single process, SIGUSR1 (Slurm's warning before the time limit, `scancel
--signal=USR1`) also saves: the signal is blocked while a step runs and delivered only at
step boundaries, so the quick save always sees a consistent model/optimizer/step (every
other thread of the task has it blocked from its start: the task runner blocks it before
any thread exists). With
several ranks, submitit calls the save on rank 0 only, and a collective save cannot run
on one rank: there the job relies on the periodic checkpoints.
"""

from __future__ import annotations

import math
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from aistack import hardware
from aistack.model.dist.megatron import Layout, destroy_model_parallel, init_model_parallel, set_seeds
from aistack.model import checkpoint, cpu_compat, dataset, gpt, import_hf, nemo, optim
from aistack.model.flops import step_flops
from aistack.model.layout import check_layout, padded_vocab_size

def peak_tflops(precision: str) -> float | None:
    """The device's dense peak for this precision (aistack.hardware), or None (CPU, unknown
    GPU): MFU is then omitted."""
    gpu = hardware.current()
    return gpu.tflops.get(precision) if gpu else None


# --- the loop ---------------------------------------------------------------------------


class Objective:
    """What the loop trains on and for: the batches and the loss. The loop (model, optimizer,
    schedule, resume, checkpoints, metrics) is the same for pretraining, SFT and distillation;
    each of those is an Objective. This one is pretraining's: next-token cross-entropy over
    megatron GPTDatasets."""

    def vocab_size(self, recipe: Any) -> int:
        """The unpadded vocabulary the model is built for."""
        self.tokenizer = dataset.tokenizer_for(recipe.data, recipe.model)
        return recipe.model.vocab_size or self.tokenizer.vocab_size

    def setup(self, recipe: Any, layout: Layout, padded_vocab: int) -> None:
        """After the model is built, before data: e.g. load a frozen teacher."""

    def readers(self, recipe: Any, layout: Layout, ctx: Any) -> tuple[Any, Any]:
        """(train, valid) readers: `.num_microbatches` and `.microbatches(step)` -> batches."""
        m, t = recipe.model, recipe.train
        train_ds, valid_ds = dataset.build_datasets(
            recipe.data, m.seq_length, t.seed, num_train=t.steps * t.global_batch_size,
            num_valid=t.eval_steps * t.global_batch_size, tokenizer=self.tokenizer, cache_dir=Path(ctx.task_dir) / "data_cache",
        )
        return (dataset.BatchReader(train_ds, t.global_batch_size, t.micro_batch_size, layout.dp, layout.dp_rank),
                dataset.BatchReader(valid_ds, t.global_batch_size, t.micro_batch_size, layout.dp, layout.dp_rank))

    def forward_step(self, data_iterator: Iterator, model):
        """megatron's forward_step_func: (output, loss_func) for the next micro-batch."""
        return lm_forward_step(data_iterator, model)

    def summary(self) -> dict[str, Any]:
        """Extra fields for the task's result."""
        return {}

    # Loss parts the forward step reports beside "loss" in training (logged per step, e.g. ce, kl).
    metric_keys: tuple[str, ...] = ()


def train(recipe: Any, ctx: Any, objective: Objective | None = None) -> dict[str, Any]:
    """Train the recipe's model in this task (one rank of a TP x PP x DP job). Returns a summary.
    `objective`: what to train on and for (default: pretraining)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # main thread: taken between steps only
    try:
        layout = init_model_parallel(recipe.parallel.tensor, recipe.parallel.pipeline, recipe.parallel.virtual_pipeline)
        check_layout(recipe, ctx.run.recipe_file, layout.world_size)  # the planner checked resources' world size
        with cpu_compat.device_scope():
            return _train(recipe, ctx, layout, objective or Objective())
    finally:
        destroy_model_parallel()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


def _train(recipe: Any, ctx: Any, layout: Layout, objective: Objective) -> dict[str, Any]:
    from megatron.core.utils import get_model_config

    m, t, ck = recipe.model, recipe.train, recipe.checkpoint
    precision = gpt.resolve_precision(t.precision)
    set_seeds(t.seed)

    unpadded_vocab = objective.vocab_size(recipe)
    from_hf = bool(ck.load) and import_hf.is_hf_folder(ck.load)
    if from_hf:  # checked before anything is built
        if ck.load_optimizer:
            raise ValueError(f"checkpoint.load {ck.load} is a Hugging Face folder: it has no optimizer state "
                             "to continue from (set checkpoint.load_optimizer=false)")
        import_hf.check_model(ck.load, m, unpadded_vocab)  # the model block must be config.json's network
    if ck.load and nemo.is_nemo_checkpoint(ck.load):
        if ck.load_optimizer:
            raise ValueError(f"checkpoint.load {ck.load} is a NeMo checkpoint: aistack starts from its weights, not "
                             "NeMo's optimizer state (set checkpoint.load_optimizer=false)")
        nemo.check_model(ck.load, m)  # the model block must be context/model.yaml's network
    vocab = padded_vocab_size(unpadded_vocab, m, layout.tp)
    fused = torch.cuda.is_available() if t.fused is None else t.fused
    chunks = gpt.build_model_chunks(m, recipe.parallel, vocab, precision, fused=fused)
    if t.compile:
        compile_layers(chunks)
    model = wrap_ddp(chunks, recipe.parallel, precision)
    optimizer = optim.build_optimizer(t, recipe.parallel, model, precision, fused=fused)
    scheduler = optim.build_scheduler(t, optimizer)
    config = get_model_config(model[0])
    _wire_schedule(config, model, optimizer)

    objective.setup(recipe, layout, vocab)
    train_reader, valid_reader = objective.readers(recipe, layout, ctx)
    step_fn = objective.forward_step

    # Resume from this task's latest checkpoint, else start from checkpoint.load (any layout).
    ckpt_dir = Path(ctx.task_dir) / "checkpoints"
    step = 0
    resume = checkpoint.latest(ckpt_dir)
    if resume is not None:
        step = checkpoint.load(resume, model, optimizer, scheduler)["step"]
        ctx.resumed_at(step)
        _print(layout, f"resuming from step {step} ({resume})")
    elif from_hf:  # a transformers folder: weights only, sharded for this rank's layout
        import_hf.load_hf(ck.load, model, m, unpadded_vocab)
        optimizer.reload_model_params()  # mixed precision keeps fp32 main copies: refresh them
        _print(layout, f"loaded Hugging Face weights from {ck.load}; starting at step 0")
    elif ck.load:
        source = checkpoint.latest(ck.load)
        if source is None:
            raise FileNotFoundError(f"checkpoint.load: no checkpoint at {ck.load}")
        if ck.load_optimizer:  # continue that run: weights, optimizer state and step
            step = checkpoint.load(source, model, optimizer, scheduler, restore_rng=False)["step"]
        else:  # weights only: a fresh optimizer from step 0
            checkpoint.load(source, model, restore_rng=False)
            optimizer.reload_model_params()  # mixed precision keeps fp32 main copies: refresh them
        _print(layout, f"loaded {source} (optimizer: {ck.load_optimizer}); starting at step {step}")
    if resume is None:
        # Starting over (an earlier attempt of this task, killed before its first checkpoint,
        # may have logged steps): drop its records, every step is logged again from here.
        ctx.resumed_at(step - 1)

    def save(at: int) -> None:
        checkpoint.save(ckpt_dir, at, model, optimizer, scheduler, extra={"tokens": at * t.global_batch_size * m.seq_length}, keep=ck.keep)

    state = {"step": step}
    if layout.world_size == 1:  # see the module docstring: a save on one rank of many cannot run
        ctx.on_preempt(lambda: (_print(layout, f"preempted: saving step {state['step']}"), save(state["step"])))

    evaluate = partial(_evaluate, model, config, valid_reader, t, m, step_fn)
    if step == 0:
        ctx.log(0, {"val_loss": evaluate()})
    # Model FLOPs of a step as `aistack plan` counts them (Megatron-LM's convention; with an
    # online teacher, its forward too): the logged TFLOP/s and MFU match the plan's.
    flops_step = step_flops(recipe, unpadded_vocab, layout.tp)["total"]
    peak = peak_tflops(precision)
    tokens_per_step = t.global_batch_size * m.seq_length
    last = {}
    while step < t.steps:
        start = time.perf_counter()
        loss, grad_norm, lr, parts = _train_step(model, optimizer, scheduler, config, train_reader, step, t, m, step_fn,
                                                 objective.metric_keys)
        step += 1
        state["step"] = step
        elapsed = time.perf_counter() - start
        tflops = flops_step / elapsed / layout.world_size / 1e12
        last = {"loss": loss, "lr": lr, "grad_norm": grad_norm, **parts}
        if step % t.log_every == 0 or step == t.steps:
            values = {**last, "tokens_per_s": tokens_per_step / elapsed, "tflops_per_device": tflops,
                      "step_time": elapsed, **_memory()}
            if peak:
                values["mfu"] = tflops / peak
            ctx.log(step, values)
        if step % t.eval_every == 0 or step == t.steps:
            last["val_loss"] = evaluate()
            ctx.log(step, {"val_loss": last["val_loss"]})
        if step % ck.every == 0 or step == t.steps:
            save(step)
        # The only point where a pending SIGUSR1 is delivered: between steps, after any save.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    if "val_loss" not in last:  # resumed at the end (e.g. loading a finished checkpoint)
        last["val_loss"] = evaluate()
        ctx.log(step, {"val_loss": last["val_loss"]})
    return {"steps": step, "tokens": step * tokens_per_step, **{k: float(v) for k, v in last.items()},
            "checkpoint": str(checkpoint.latest(ckpt_dir)) if checkpoint.latest(ckpt_dir) else None,
            "layout": {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp},
            "kernels": {"attention": m.attention_backend, "fused": fused, "compile": t.compile}, **objective.summary()}


def compile_layers(chunks: list) -> None:
    """torch.compile each transformer layer in place (parameter names, hence checkpoints, do
    not change). The layers share their code, so one compiled graph serves them all."""
    import torch._dynamo

    # megatron's linear layers break the graph (process-group lookups): their resumed frames
    # are recompiled per weight shape and grad mode, 8 entries for a GPT, which is dynamo's
    # default limit; past it they would silently run eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for chunk in chunks:
        for layer in chunk.decoder.layers:
            layer.compile()


def wrap_ddp(chunks: list, parallel_cfg: Any, precision: str) -> list:
    """Megatron DDP around each chunk: gradients land in contiguous fp32 buffers (main_grad),
    reduced over data-parallel ranks (reduce-scattered with the distributed optimizer)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=parallel_cfg.distributed_optimizer,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        if precision in ("bf16", "fp8"):
            chunk = Float16Module(chunk.config, chunk)
        wrapped.append(DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk,
                                               disable_bucketing=i > 0))
    for chunk in wrapped:
        chunk.broadcast_params()  # identical replicas across DP ranks
    return wrapped


def _wire_schedule(config, model: list, optimizer) -> None:
    """What megatron's schedules call back into: grad sync off between micro-batches,
    final grad reductions (DP, tied embeddings across PP, sequence-parallel norms)."""
    from megatron.core.distributed import finalize_model_grads

    config.no_sync_func = [c.no_sync for c in model] if len(model) > 1 else model[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss


def lm_forward_step(data_iterator: Iterator, model):
    """Next-token cross-entropy, averaged over the micro-batch's loss_mask. A batch may carry
    an `attention_mask` ([b, 1, s, s], True = masked: packed sequences); else causal."""
    batch = next(data_iterator)
    mask = batch.get("attention_mask")
    output = model(batch["tokens"].to(_device()), batch["position_ids"].to(_device()),
                   attention_mask=None if mask is None else mask.to(_device()), labels=batch["labels"].to(_device()))
    loss_mask = batch["loss_mask"].to(_device()).float()

    def loss_func(per_token):  # called on the last stage only
        loss = (per_token.float() * loss_mask).sum() / loss_mask.sum().clamp(min=1)
        # The schedule divides the returned loss in place by the number of micro-batches:
        # report a clone.
        return loss, {"loss": loss.detach().clone()}

    return output, loss_func


def to_device_ahead(batches: Iterator[dict], move: Callable[[dict], dict]) -> Iterator[dict]:
    """The micro-batches through `move`, each moved while the one before it computes."""
    batches = iter(batches)
    ahead = next(batches, None)
    ahead = None if ahead is None else move(ahead)
    while ahead is not None:
        current, ahead = ahead, next(batches, None)
        ahead = None if ahead is None else move(ahead)
        yield current


def _to_gpu(batch: dict) -> dict:
    """Pinned, then copied without blocking the host: the copy overlaps the running step."""
    return {k: v.pin_memory().to(_device(), non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _run_schedule(model: list, reader: Any, step: int, t: Any, m: Any, forward_only: bool,
                  step_fn: Callable = lm_forward_step) -> list[dict]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    on_gpu = torch.cuda.is_available()
    iterators = [to_device_ahead(reader.microbatches(step), _to_gpu) if on_gpu else reader.microbatches(step) for _ in model]
    return get_forward_backward_func()(
        forward_step_func=step_fn,
        data_iterator=iterators if len(model) > 1 else iterators[0],
        model=model if len(model) > 1 else model[0],
        num_microbatches=reader.num_microbatches,
        seq_length=m.seq_length,
        micro_batch_size=t.micro_batch_size,
        decoder_seq_length=m.seq_length,
        forward_only=forward_only,
    )


def _train_step(model: list, optimizer, scheduler, config, reader, step: int, t: Any, m: Any,
                step_fn: Callable = lm_forward_step, keys: tuple[str, ...] = ()) -> tuple[float, float, float, dict]:
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses = _run_schedule(model, reader, step, t, m, forward_only=False, step_fn=step_fn)
    # The lr of step s (1-based) is the schedule at s: warmup reaches train.lr at warmup_steps.
    scheduler.num_steps = step
    scheduler.step(increment=1)
    ok, grad_norm, _ = optimizer.step()
    if not ok:
        raise FloatingPointError(f"optimizer step {step + 1} skipped (non-finite gradients)")
    lr = optimizer.param_groups[0]["lr"]
    parts = {k: _mean_over_world(losses, k) for k in keys}
    return _mean_over_world(losses), float(grad_norm or 0.0), lr, parts


@torch.no_grad()
def _evaluate(model: list, config, reader, t: Any, m: Any, step_fn: Callable = lm_forward_step) -> float:
    for chunk in model:
        chunk.eval()
    total, count = 0.0, 0
    for k in range(t.eval_steps):
        losses = _run_schedule(model, reader, k, t, m, forward_only=True, step_fn=step_fn)
        value = _mean_over_world(losses)
        total, count = total + value, count + 1
    for chunk in model:
        chunk.train()
    return total / count


def _mean_over_world(losses: list[dict], key: str = "loss") -> float:
    """Mean micro-batch loss over data-parallel replicas. Only last-stage ranks hold losses;
    one all-reduce over the world brings the value to every rank (rank 0 logs it)."""
    from megatron.core import parallel_state as ps

    holder = ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
    acc = torch.zeros(2, dtype=torch.float64, device=_device())
    if holder and losses:
        acc[0] = sum(float(x[key]) for x in losses)
        acc[1] = len(losses)
    dist.all_reduce(acc)
    return float(acc[0] / acc[1]) if acc[1] else math.nan


def _memory() -> dict[str, float]:
    if torch.cuda.is_available():
        return {"mem_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                "mem_reserved_gb": torch.cuda.max_memory_reserved() / 2**30}
    import psutil

    return {"mem_rss_gb": psutil.Process().memory_info().rss / 2**30}


def _print(layout: Layout, message: str) -> None:
    if layout.rank == 0:
        print(message, flush=True)
