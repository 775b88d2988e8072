"""FP8 (float8_e4m3fn) weights and activations with per-tensor or per-row scales.

    q = saturate(x / s) in e4m3 (max 448),  s = amax / 448   (per tensor, or per row/token)

Weights are stored once in FP8; a layer runs in one of two modes, switchable per call
(`set_mode`), so one quantized copy serves every batch size of a sweep:
- `weight_only`: F.linear(x, w_fp8.to(bf16)) * row_scale. Decode at small batch reads
  every weight once per token: FP8 halves those bytes. Under torch.compile with inductor's
  coordinate_descent_tuning an M=1 matmul becomes a multiply-reduce, so the cast fuses into
  the GEMV and the weight is read as FP8 (torchao's route: 1.41x BF16 on an H100, Llama-3.1-8B,
  batch 1). At M > 1 the cast is a kernel of its own that writes a BF16 copy of the weight:
  slower than BF16. The same arithmetic on every device (no emulation).
- `w8a8`: activations quantized per token (or per tensor) on the fly, and either
  `scaled_mm`, a real FP8 GEMM through torch._scaled_mm on GPUs with FP8 tensor cores
  (compute capability 8.9+), accumulated in fp32 and written in BF16; or `emulate`, the same
  quantization as quantize-dequantize in the compute dtype: the numbers (hence perplexity
  and accuracy) are those of FP8, the speed is not. Emulation runs on CPUs, older GPUs, and
  for layers _scaled_mm cannot take (dimensions not multiple of 16).
`mode_for_batch` picks the mode of a batch size for `bench.fp8.mode: auto`.
Transformer Engine, when importable on an FP8 GPU, is reported as available: its
te.Linear needs its own fp8_autocast recipe and is not swapped in here (see `backend_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.distributed as dist
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
TINY = torch.finfo(torch.float32).tiny
Scaling = Literal["tensor", "row"]
Mode = Literal["weight_only", "w8a8"]
MODES = ("weight_only", "w8a8")


def mode_for_batch(requested: str, batch: int, weight_only_max_batch: int) -> str:
    """The FP8 mode a point of `batch` sequences runs: `requested` unless it is 'auto', which
    takes weight-only up to `weight_only_max_batch` (one decode step's matmuls have M = batch)
    and W8A8 above."""
    if requested in MODES:
        return requested
    if requested != "auto":
        raise ValueError(f"bench.fp8.mode={requested!r}: one of auto, {', '.join(MODES)}")
    return "weight_only" if batch <= weight_only_max_batch else "w8a8"


def scale_of(x: torch.Tensor, scaling: Scaling) -> torch.Tensor:
    """fp32 scale(s) mapping x's amax onto 448: a scalar, or one per row (last dim reduced)."""
    x = x.detach().float()
    amax = x.abs().amax() if scaling == "tensor" else x.abs().amax(dim=-1, keepdim=True)
    return (amax / FP8_MAX).clamp(min=TINY)


def quantize(x: torch.Tensor, scaling: Scaling = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """(q in float8_e4m3fn, fp32 scale): x ~= q * scale. Arithmetic in fp32 (CPU fp8 ops are few)."""
    scale = scale_of(x, scaling)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def quantize_activations(x: torch.Tensor, rowwise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize` of a 2-D activation per token (or per tensor) in as few kernels as eager
    allows: the amax in one reduction (the inf-norm, in fp32), its scale in place, then divide,
    clamp in place and cast; under torch.compile they fuse into one kernel. The same numbers
    as `quantize` (fp32 arithmetic: x / scale promotes to fp32 against an fp32 [M, 1] scale)."""
    amax = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True, dtype=torch.float32) if rowwise else \
        torch.linalg.vector_norm(x, float("inf"), dtype=torch.float32).reshape(1, 1)  # [1, 1]: fp32 division too
    scale = amax.div_(FP8_MAX).clamp_(min=TINY)
    q = x.div(scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale if rowwise else scale.reshape(())


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


def qdq(x: torch.Tensor, scaling: Scaling = "row") -> torch.Tensor:
    """Quantize-dequantize: x as FP8 sees it, in x's dtype."""
    q, scale = quantize(x, scaling)
    return dequantize(q, scale, x.dtype)


def scaled_mm_available(device: torch.device | str | None = None) -> bool:
    if not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def te_available() -> bool:
    from aistack.model.gpt import te_available as te

    return torch.cuda.is_available() and te()


def backend_for(requested: str, device: torch.device) -> str:
    """What FP8 runs as here: 'scaled_mm' (real) or 'emulate'; an explicit request that
    cannot run is an error rather than a silent fallback."""
    if requested == "emulate":
        return "emulate"
    real = device.type == "cuda" and scaled_mm_available(device)
    if requested in ("scaled_mm", "te") and not real:
        raise RuntimeError(f"bench.fp8.backend={requested} needs a GPU with FP8 tensor cores (sm_89+); "
                           f"this is {_describe(device)}. Use backend: auto or emulate.")
    if requested == "te" and not te_available():
        raise RuntimeError("bench.fp8.backend=te: transformer_engine is not importable here")
    # TE's Linear needs fp8_autocast around the whole model; _scaled_mm is the same FP8 GEMM
    # (cuBLASLt) without it, so 'te' runs the layers through _scaled_mm too.
    return "scaled_mm" if real else "emulate"


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (sm_{''.join(map(str, torch.cuda.get_device_capability(device)))})"
    return "a CPU"


class FP8Linear(nn.Module):
    """A Linear whose weight lives in FP8 (per-row or per-tensor scales), run weight-only or
    W8A8 (`mode`, switchable between calls); see the module doc."""

    def __init__(self, linear: nn.Linear, scaling: Scaling, mode: Mode, backend: str):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scaling = scaling
        q, scale = quantize(linear.weight.data, scaling)
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale.reshape(-1, 1) if scaling == "row" else scale.reshape(()))
        self.compute_dtype = linear.weight.dtype
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        fits = self.in_features % 16 == 0 and self.out_features % 16 == 0  # _scaled_mm's alignment
        self.backend = backend if backend == "emulate" or fits else "emulate"
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"FP8Linear mode {value!r}: one of {', '.join(MODES)}")
        self._mode = value

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, scaling={self.scaling}, mode={self.mode}, backend={self.backend}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode == "weight_only":
            return self._weight_only(x)
        if self.backend == "scaled_mm":
            return self._scaled_mm(x)
        w = dequantize(self.weight_fp8, self.weight_scale, x.dtype)
        x = qdq(x, "row")  # per token
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _weight_only(self, x: torch.Tensor) -> torch.Tensor:
        # The cast of e4m3 to BF16 is exact; the scales multiply the output columns. The bias is
        # added after them rather than in the matmul, so the matmul stays an mm (not addmm),
        # which inductor turns into a fused multiply-reduce at M = 1.
        scale = self.weight_scale.reshape(-1) if self.scaling == "row" else self.weight_scale
        out = F.linear(x, self.weight_fp8.to(x.dtype)) * scale.to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def _scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        row = self.scaling == "row"
        xq, xs = quantize_activations(x.reshape(-1, self.in_features), rowwise=row)
        # Row-wise: scale_a [M,1], scale_b [1,N]; per-tensor: two scalars. mat2 must be column-major.
        sb = self.weight_scale.reshape(1, -1) if row else self.weight_scale
        out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs, scale_b=sb,
                               bias=None if self.bias is None else self.bias.to(torch.bfloat16), out_dtype=torch.bfloat16)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)


def set_mode(model: nn.Module, mode: str) -> int:
    """Every FP8Linear of `model` runs `mode` from now on; how many there are."""
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    for layer in layers:
        layer.mode = mode
    return len(layers)


def as_linear(module: nn.Module) -> nn.Linear | None:
    """An nn.Linear as is; transformers' Conv1D (GPT-2 stores weights as (in, out)) as the
    same Linear; None for anything else. The weight is made contiguous in (out, in) order:
    _scaled_mm needs its transpose column-major."""
    if isinstance(module, nn.Linear):
        return module
    if type(module).__name__ != "Conv1D":
        return None
    weight = module.weight.detach()
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.t().contiguous(), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
    return linear


@dataclass
class QuantReport:
    backend: str  # scaled_mm | emulate | mixed: how W8A8 runs (weight-only is the same everywhere)
    scaling: str
    layers: dict[str, str] = field(default_factory=dict)  # module name -> how its W8A8 runs
    skipped: list[str] = field(default_factory=list)
    weight_bytes_bf16: int = 0
    weight_bytes_fp8: int = 0

    @property
    def emulated(self) -> bool:
        return any(v != "scaled_mm" for v in self.layers.values())

    def as_dict(self) -> dict[str, Any]:
        kinds = sorted(set(self.layers.values()))
        return {"backend": kinds[0] if len(kinds) == 1 else "mixed", "emulated": self.emulated, "scaling": self.scaling,
                "layers": len(self.layers), "skipped": self.skipped,
                "weight_bytes_bf16": self.weight_bytes_bf16, "weight_bytes_fp8": self.weight_bytes_fp8}


def quantize_model(model: nn.Module, scaling: Scaling = "row", mode: Mode = "w8a8", backend: str = "auto",
                   skip: list[str] | tuple[str, ...] = ("lm_head",)) -> QuantReport:
    """Every nn.Linear (and GPT-2 Conv1D) of `model` -> FP8Linear running `mode` (switch with
    `set_mode`), in place, except names ending in one of `skip` (the LM head by default: its
    error shows directly in the logits)."""
    device = next(model.parameters()).device
    how = backend_for(backend, device)
    report = QuantReport(backend=how, scaling=scaling)
    for name, module in list(model.named_modules()):
        module = as_linear(module)
        if not name or module is None:
            continue
        if any(name == s or name.endswith("." + s) for s in skip):
            report.skipped.append(name)
            continue
        report.weight_bytes_bf16 += module.weight.numel() * 2
        report.weight_bytes_fp8 += module.weight.numel() + (module.weight.shape[0] * 4 if scaling == "row" else 4)
        fp8 = FP8Linear(module, scaling, mode, how)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fp8)
        report.layers[name] = fp8.backend
    if not report.layers:
        raise ValueError("quantize_model: the model has no Linear layer to quantize")
    return report


# --- emulated FP8 on megatron's tensor-parallel Linear layers (the sharded benchmark) ---


def _tp_max_(tensor: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    if ps.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=ps.get_tensor_model_parallel_group())
    return tensor


def _qdq_at(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """fp8.qdq with a given amax (fp8.scale_of's formula): the same numbers as one device."""
    scale = (amax.float() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return dequantize(q, scale, x.dtype)


def emulate_fp8(model, scaling: str, activations: bool, skip: list[str]) -> dict[str, Any]:
    """Quantize-dequantize this stage's Linear layers in place (weights), and their inputs
    per token on every forward (activations). Row-parallel amaxes are TP-group maxima."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    skip_names = set(skip) | ({"output_layer"} if "lm_head" in skip else set())
    layers, skipped, bf16_bytes, fp8_bytes = 0, [], 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            continue
        if any(name == s or name.endswith("." + s) for s in skip_names):
            skipped.append(name)
            continue
        row_parallel = isinstance(module, RowParallelLinear)
        w = module.weight.data
        if scaling == "row":
            amax = w.detach().float().abs().amax(dim=-1, keepdim=True)
            amax = _tp_max_(amax) if row_parallel else amax
        else:
            amax = _tp_max_(w.detach().float().abs().amax().reshape(1))
        module.weight.data.copy_(_qdq_at(w, amax))
        bf16_bytes += w.numel() * 2
        fp8_bytes += w.numel() + (w.shape[0] * 4 if scaling == "row" else 4)
        if activations:
            module.register_forward_pre_hook(_activation_qdq(row_parallel))
        layers += 1
    return {"backend": "emulate", "emulated": True, "scaling": scaling, "activations": activations, "layers": layers,
            "skipped": sorted(set(n.rsplit(".", 1)[-1] for n in skipped)), "weight_bytes_bf16": bf16_bytes,
            "weight_bytes_fp8": fp8_bytes}


def _activation_qdq(row_parallel: bool):
    def hook(_module, args):
        x = args[0]
        amax = x.detach().float().abs().amax(dim=-1, keepdim=True)  # per token
        if row_parallel:  # each TP rank holds a slice of every token
            amax = _tp_max_(amax.contiguous())
        return (_qdq_at(x, amax), *args[1:])

    return hook
