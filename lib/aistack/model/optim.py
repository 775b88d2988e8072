"""AdamW through megatron's optimizer (fp32 master weights for bf16, gradient clipping over
all model-parallel ranks, optionally the distributed optimizer), warmup + cosine schedule.

Without apex or TE megatron falls back to torch's AdamW (foreach, not fused) and to
per-tensor Python loops for the gradient norm (one host sync per parameter) and for the
scale/copy kernels. `install_foreach_kernels` swaps those loops for torch's foreach kernels
(no host sync until the one norm the step logs); `fused=True` runs torch's fused AdamW.
"""

from __future__ import annotations

from typing import Any

import torch


def build_optimizer(train_cfg: Any, parallel_cfg: Any, model_chunks: list, precision: str, fused: bool = False):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    install_foreach_kernels()
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
    if fused:
        _use_fused_adamw(optimizer)
    if parallel_cfg.distributed_optimizer:
        _own_step_per_param(optimizer)
        _tolerate_missing_step_on_load(optimizer)
    return optimizer


def _use_fused_adamw(optimizer) -> None:
    """torch's fused AdamW (one kernel over all params) in place of the foreach one megatron
    builds without apex/TE. The flags are read at every step; state made from here on keeps
    its 'step' on the param's device, as the fused kernel needs."""
    for opt in inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if isinstance(torch_opt, torch.optim.Adam | torch.optim.AdamW):
            for group in torch_opt.param_groups:
                group.update(fused=True, foreach=False)
            torch_opt.defaults.update(fused=True, foreach=False)


def install_foreach_kernels() -> None:
    """megatron's local multi-tensor fallbacks -> torch foreach kernels (idempotent). The
    local l2 norm builds a host tensor from one GPU scalar per parameter; this one stays on
    the device. Both compute the same fp32 norms and products."""
    from megatron.core.optimizer import clip_grads, optimizer as megatron_optimizer
    from megatron.core.utils import local_multi_tensor_l2_norm, local_multi_tensor_scale

    if clip_grads.l2_norm_impl is local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
    for module in (clip_grads, megatron_optimizer):
        if module.multi_tensor_scale_impl is local_multi_tensor_scale:
            module.multi_tensor_scale_impl = foreach_scale


def foreach_l2_norm(_chunk_size, _noop_flag, tensor_lists, _per_tensor, *_args):
    """amp_C.multi_tensor_l2norm's contract: ([1] fp32 tensor of the total norm, None)."""
    norms = [n.float() for n in torch._foreach_norm(tensor_lists[0])]
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1), None


def foreach_scale(_chunk_size, _noop_flag, tensor_lists, scale):
    """amp_C.multi_tensor_scale's contract: dst = src * scale, list by list."""
    src, dst = tensor_lists
    if not src:
        return
    torch._foreach_copy_(dst, torch._foreach_mul(src, scale) if scale != 1.0 else src)


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
    """After loading: the kernel choice of this run (a checkpoint's param groups carry the
    flags of the run that saved it), one 'step' tensor per param where the kernel wants it
    (fused: on the param's device). A DistributedOptimizer's loaders do not restore 'step':
    set it to the saved iteration; the plain megatron optimizer restores it."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            continue
        fused = bool(torch_opt.defaults.get("fused"))
        for group in torch_opt.param_groups:
            group.update(fused=torch_opt.defaults.get("fused"), foreach=torch_opt.defaults.get("foreach"))
        for param, state in torch_opt.state.items():
            if not state:
                continue
            if isinstance(opt, DistributedOptimizer):
                state["step"] = torch.tensor(float(iteration))
            if fused and isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)
