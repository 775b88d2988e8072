"""The optimizer's kernels: foreach stand-ins for megatron's local multi-tensor loops give
the same numbers without a host sync per parameter; fused AdamW stays fused across a load;
micro-batches are moved one ahead of the one computing."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from aistack.model import optim


def _tensors(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen).to(dtype) for shape in [(7, 5), (13,), (3, 4, 2)]]


def test_foreach_l2_norm_equals_megatrons_local_one():
    from megatron.core.utils import local_multi_tensor_l2_norm

    from aistack.model import cpu_compat

    grads = _tensors()
    ours, _ = optim.foreach_l2_norm(2048, None, [grads], False)
    with cpu_compat.device_scope():  # the local one puts its result on "cuda"
        ref, _ = local_multi_tensor_l2_norm(2048, None, [grads], False)
    assert ours.shape == (1,) and torch.allclose(ours, ref, rtol=1e-6)
    assert torch.allclose(ours, torch.cat([g.flatten() for g in grads]).norm().reshape(1), rtol=1e-6)


def test_foreach_scale_equals_megatrons_local_one_also_across_dtypes():
    from megatron.core.utils import local_multi_tensor_scale

    src = _tensors()
    for dtype, scale in [(torch.float32, 0.37), (torch.bfloat16, 1.0)]:  # clip grads; main params -> bf16 params
        ours, ref = [torch.zeros_like(t, dtype=dtype) for t in src], [torch.zeros_like(t, dtype=dtype) for t in src]
        optim.foreach_scale(2048, None, [src, ours], scale)
        local_multi_tensor_scale(2048, None, [src, ref], scale)
        assert all(torch.equal(a, b) for a, b in zip(ours, ref))


def test_megatron_uses_the_foreach_kernels_once_installed():
    from megatron.core.optimizer import clip_grads, optimizer as megatron_optimizer

    optim.install_foreach_kernels()
    optim.install_foreach_kernels()  # idempotent
    assert clip_grads.l2_norm_impl is optim.foreach_l2_norm
    assert clip_grads.multi_tensor_scale_impl is optim.foreach_scale
    assert megatron_optimizer.multi_tensor_scale_impl is optim.foreach_scale


def test_fused_adamw_stays_fused_after_loading_a_foreach_checkpoint():
    params = [torch.nn.Parameter(t) for t in _tensors()]
    saved = torch.optim.AdamW(params, lr=0.1)  # a run without fused kernels saved this
    for p in params:
        p.grad = torch.ones_like(p)
    saved.step()
    wrapper = SimpleNamespace(optimizer=torch.optim.AdamW(params, lr=0.1))
    optim._use_fused_adamw(wrapper)
    wrapper.optimizer.load_state_dict(saved.state_dict())
    assert wrapper.optimizer.param_groups[0]["fused"] is not True  # the checkpoint's flags came back with it
    optim.fix_steps_after_load(wrapper, 1)
    group = wrapper.optimizer.param_groups[0]
    assert group["fused"] is True and group["foreach"] is False
    assert all(s["step"].dtype == torch.float32 for s in wrapper.optimizer.state.values())
    wrapper.optimizer.step()  # the fused kernel runs on the loaded state
    assert float(next(iter(wrapper.optimizer.state.values()))["step"]) == 2


def test_micro_batches_are_moved_one_ahead():
    from aistack.model.train import to_device_ahead

    moved: list[int] = []

    def move(batch):
        moved.append(batch["i"])
        return batch

    seen = []
    for batch in to_device_ahead(({"i": i} for i in range(4)), move):
        seen.append((batch["i"], list(moved)))
    # when batch i is handed out, batch i + 1 is already on its way
    assert seen == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2, 3]), (3, [0, 1, 2, 3])]
