"""FP8 (float8_e4m3fn) weights and activations with per-tensor or per-row scales.

    q = saturate(x / s) in e4m3 (max 448),  s = amax / 448   (per tensor, or per row/token)

Two execution paths for a Linear layer:
- `scaled_mm`: real FP8 matmuls through torch._scaled_mm on GPUs with FP8 tensor cores
  (compute capability 8.9+). Weights are stored in FP8 with per-output-row scales (or one
  scale), activations are quantized per token (row-wise) or per tensor on the fly, and the
  product is accumulated in fp32 and written in BF16.
- `emulate`: the same quantization as quantize-dequantize in the compute dtype: the
  numbers (hence perplexity and accuracy) are those of FP8, the speed is not. Used on
  CPUs, older GPUs, and for layers _scaled_mm cannot take (dimensions not multiple of 16).
Transformer Engine, when importable on an FP8 GPU, is reported as available: its
te.Linear needs its own fp8_autocast recipe and is not swapped in here (see `backend_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
Scaling = Literal["tensor", "row"]


def scale_of(x: torch.Tensor, scaling: Scaling) -> torch.Tensor:
    """fp32 scale(s) mapping x's amax onto 448: a scalar, or one per row (last dim reduced)."""
    x = x.detach().float()
    amax = x.abs().amax() if scaling == "tensor" else x.abs().amax(dim=-1, keepdim=True)
    return (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)


def quantize(x: torch.Tensor, scaling: Scaling = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """(q in float8_e4m3fn, fp32 scale): x ~= q * scale. Arithmetic in fp32 (CPU fp8 ops are few)."""
    scale = scale_of(x, scaling)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


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
    """A Linear whose weight lives in FP8 (per-row or per-tensor scales); see the module doc."""

    def __init__(self, linear: nn.Linear, scaling: Scaling, activations: bool, backend: str):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scaling, self.activations = scaling, activations
        q, scale = quantize(linear.weight.data, scaling)
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale.reshape(-1, 1) if scaling == "row" else scale.reshape(()))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        self.compute_dtype = linear.weight.dtype
        fits = self.in_features % 16 == 0 and self.out_features % 16 == 0  # _scaled_mm's alignment
        self.backend = backend if backend == "emulate" or fits else "emulate"

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, scaling={self.scaling}, activations={self.activations}, backend={self.backend}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "scaled_mm":
            return self._scaled_mm(x)
        w = dequantize(self.weight_fp8, self.weight_scale, x.dtype)
        if self.activations:
            x = qdq(x, "row")  # per token
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if not self.activations:  # weight-only FP8 saves memory, but the GEMM itself runs in BF16
            w = dequantize(self.weight_fp8, self.weight_scale, x.dtype)
            return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        row = self.scaling == "row"
        xq, xs = quantize(x2, "row" if row else "tensor")
        # Row-wise: scale_a [M,1], scale_b [1,N]; per-tensor: two scalars. mat2 must be column-major.
        sb = self.weight_scale.reshape(1, -1) if row else self.weight_scale
        out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs.float(), scale_b=sb.float(),
                               bias=None if self.bias is None else self.bias.to(torch.bfloat16), out_dtype=torch.bfloat16)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)


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
    backend: str  # scaled_mm | emulate | mixed
    scaling: str
    activations: bool
    layers: dict[str, str] = field(default_factory=dict)  # module name -> how it runs
    skipped: list[str] = field(default_factory=list)
    weight_bytes_bf16: int = 0
    weight_bytes_fp8: int = 0

    @property
    def emulated(self) -> bool:
        return any(v != "scaled_mm" for v in self.layers.values())

    def as_dict(self) -> dict[str, Any]:
        kinds = sorted(set(self.layers.values()))
        return {"backend": kinds[0] if len(kinds) == 1 else "mixed", "emulated": self.emulated, "scaling": self.scaling,
                "activations": self.activations, "layers": len(self.layers), "skipped": self.skipped,
                "weight_bytes_bf16": self.weight_bytes_bf16, "weight_bytes_fp8": self.weight_bytes_fp8}


def quantize_model(model: nn.Module, scaling: Scaling = "row", activations: bool = True, backend: str = "auto",
                   skip: list[str] | tuple[str, ...] = ("lm_head",)) -> QuantReport:
    """Every nn.Linear (and GPT-2 Conv1D) of `model` -> FP8Linear (real or emulated), in place,
    except names ending in one of `skip` (the LM head by default: its error shows directly in
    the logits)."""
    device = next(model.parameters()).device
    mode = backend_for(backend, device)
    report = QuantReport(backend=mode, scaling=scaling, activations=activations)
    for name, module in list(model.named_modules()):
        module = as_linear(module)
        if not name or module is None:
            continue
        if any(name == s or name.endswith("." + s) for s in skip):
            report.skipped.append(name)
            continue
        report.weight_bytes_bf16 += module.weight.numel() * 2
        report.weight_bytes_fp8 += module.weight.numel() + (module.weight.shape[0] * 4 if scaling == "row" else 4)
        fp8 = FP8Linear(module, scaling, activations, mode)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fp8)
        report.layers[name] = fp8.backend
    if not report.layers:
        raise ValueError("quantize_model: the model has no Linear layer to quantize")
    return report
