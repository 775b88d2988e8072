"""Run megatron-core 0.16.1 on a machine without a GPU.

megatron-core hard-codes CUDA: `device="cuda"` literals (schedules, p2p, causal masks,
DDP and optimizer buffers), torch.cuda.current_device(), Tensor.cuda(), torch.cuda
synchronize/set_device/manual_seed/streams, `param.type() == 'torch.cuda.FloatTensor'`
checks, and a CUDA RNG-states tracker. This module neutralises all of them, and only
when there is no GPU (`needed()`):

- `install()` (idempotent) swaps the torch.cuda calls megatron makes for CPU stand-ins
  and installs an RNG-states tracker built on the CPU generator;
- `device_scope()` is a TorchFunctionMode that rewrites a cuda device to cpu, makes
  Tensor.cuda() the identity and Tensor.type() answer the cuda name megatron checks for.
  Everything that calls into megatron (model build, DDP, optimizer, schedule, checkpoint)
  runs inside it. With a GPU both are no-ops.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

_INSTALLED = False


def needed() -> bool:
    return not torch.cuda.is_available()


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)  # current_device() index


class _CpuDevices(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def device_scope() -> Iterator[None]:
    """Inside: megatron's cuda tensors are cpu tensors. A no-op with a GPU."""
    if not needed():
        yield
        return
    install()
    with _CpuDevices():
        yield


class _NullStream:
    """torch.cuda.Stream's stand-in: a class (not a function), so `torch.cuda.Stream | None`
    annotations (transformers evaluates some) still work after install()."""

    def __init__(self, *_a, **_k) -> None:
        pass

    def wait_stream(self, *_a, **_k) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _noop(name: str):
    def noop(*_a, **_k) -> None:
        return None

    noop.__name__ = noop.__qualname__ = f"cpu_{name}"
    return noop


def _null_stream(name: str):
    def stream(*_a, **_k) -> _NullStream:
        return _NullStream()

    stream.__name__ = stream.__qualname__ = f"cpu_{name}"
    return stream


def install() -> None:
    """CPU stand-ins for the torch.cuda calls megatron makes; the CPU RNG tracker."""
    global _INSTALLED
    if _INSTALLED or not needed():
        return
    cuda = torch.cuda
    # One distinct function per name: torch.compile's rule table rejects one object under two names.
    cuda.current_device = lambda: 0  # an index the device mode maps to cpu
    for name in ("synchronize", "set_device", "manual_seed", "manual_seed_all", "empty_cache", "reset_peak_memory_stats"):
        setattr(cuda, name, _noop(name))
    for name in ("current_stream", "default_stream", "stream"):
        setattr(cuda, name, _null_stream(name))
    cuda.Stream = _NullStream
    _install_rng_tracker()
    _INSTALLED = True


def _install_rng_tracker() -> None:
    """megatron forks named RNG states (per TP rank) for init and dropout; keep them on the CPU generator."""
    from megatron.core.tensor_parallel import random as mp_random

    class CpuRNGStatesTracker(mp_random.CudaRNGStatesTracker):
        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


# --- megatron.core.inference on the CPU ----------------------------------------------


class HostEvent:
    """torch.cuda.Event's stand-in: the controller times each step with events."""

    def __init__(self, *_a, **_k) -> None:
        self.t = 0.0

    def record(self, *_a, **_k) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other: "HostEvent") -> float:
        return (other.t - self.t) * 1e3


@contextlib.contextmanager
def inference_scope() -> Iterator[None]:
    """megatron.core.inference on the CPU (a no-op with a GPU): host timing events, no
    is_cuda assertion on broadcast tensors; device_scope for the rest."""
    if not needed():
        yield
        return
    from megatron.core.inference import communication_utils as comm

    saved = (torch.cuda.Event, comm._is_cuda)
    torch.cuda.Event, comm._is_cuda = HostEvent, (lambda tensor: None)
    try:
        with device_scope():
            yield
    finally:
        torch.cuda.Event, comm._is_cuda = saved


@contextlib.contextmanager
def host_generator() -> Iterator[None]:
    """The controller makes its sampling generator on torch.cuda.current_device()."""
    if not needed():
        yield
        return
    saved = torch.cuda.current_device
    torch.cuda.current_device = lambda: "cpu"
    try:
        yield
    finally:
        torch.cuda.current_device = saved
