"""AdamW through megatron's optimizer (fp32 master weights for bf16, gradient clipping over
all model-parallel ranks, optionally the distributed optimizer), warmup + cosine schedule."""

from __future__ import annotations

from typing import Any

import torch


def build_optimizer(train_cfg: Any, parallel_cfg: Any, model_chunks: list, precision: str):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer="adam",  # torch AdamW (decoupled weight decay) without apex/TE, FusedAdam with them
        lr=train_cfg.lr,
        min_lr=train_cfg.min_lr,
        weight_decay=train_cfg.weight_decay,
        adam_beta1=train_cfg.adam_beta1,
        adam_beta2=train_cfg.adam_beta2,
        adam_eps=train_cfg.adam_eps,
        clip_grad=train_cfg.grad_clip,
        bf16=precision in ("bf16", "fp8"),
        params_dtype=torch.bfloat16 if precision in ("bf16", "fp8") else torch.float32,
        use_distributed_optimizer=parallel_cfg.distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(config, model_chunks)
    if parallel_cfg.distributed_optimizer:
        _own_step_per_param(optimizer)
        _tolerate_missing_step_on_load(optimizer)
    return optimizer


def _tolerate_missing_step_on_load(optimizer) -> None:
    """megatron 0.16.1's DistributedOptimizer loader copies every optimizer-state key from the
    checkpoint into each param's state, and torch AdamW's 'step' is not among them (KeyError).
    Keep the param's own 'step' there; fix_steps_after_load then sets it to the iteration."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in inner_optimizers(optimizer):
        if not isinstance(opt, DistributedOptimizer):
            continue
        original = opt._set_main_param_and_optimizer_states

        def set_states(model_param, tensors, opt=opt, original=original):
            if "step" not in tensors:
                group, order = opt.model_param_group_index_map[model_param]
                step = opt.optimizer.state[opt.optimizer.param_groups[group]["params"][order]].get("step")
                if step is not None:
                    tensors = {**tensors, "step": step}
            return original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states


def build_scheduler(train_cfg: Any, optimizer):
    """Linear warmup to train.lr, then cosine (or linear/constant) decay to train.min_lr at the last step."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=train_cfg.lr,
        min_lr=train_cfg.min_lr,
        lr_warmup_steps=train_cfg.warmup_steps,
        lr_decay_steps=max(train_cfg.steps, train_cfg.warmup_steps + 1),
        lr_decay_style=train_cfg.lr_schedule,
        start_wd=train_cfg.weight_decay,
        end_wd=train_cfg.weight_decay,
        wd_incr_steps=train_cfg.steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,  # the recipe's schedule wins over a loaded one
        override_opt_param_scheduler=True,
    )


def inner_optimizers(optimizer) -> list:
    """The megatron optimizers inside a ChainedOptimizer (or the one given)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _own_step_per_param(optimizer) -> None:
    """megatron 0.16.1's DistributedOptimizer hands torch's AdamW one shared 'step' tensor for
    all params when it (re)builds state; foreach AdamW then increments it once per param per
    step. Give each param its own copy (called after build and after every load)."""
    for opt in inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            continue
        seen: set[int] = set()
        for state in torch_opt.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    state["step"] = step.clone()
                seen.add(id(state["step"]))


def fix_steps_after_load(optimizer, iteration: int) -> None:
    """After loading a DistributedOptimizer: one 'step' tensor per param, set to the saved
    iteration (its loaders do not restore 'step'). The plain megatron optimizer restores it."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None or not isinstance(opt, DistributedOptimizer):
            continue
        for state in torch_opt.state.values():
            if state:
                state["step"] = torch.tensor(float(iteration))
