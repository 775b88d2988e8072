"""The GPUs aistack knows: dense peak TFLOP/s per matmul precision, HBM size and bandwidth.

One table for every figure that needs a device: MFU in training (model.train), the plan's
memory and time estimates (model.estimate), the roofline of the inference benchmark
(bench.roofline); `lookup` is the one rule that finds a device name or a Slurm constraint
in it. Figures are NVIDIA's dense (no sparsity) datasheet numbers; fp32 runs as TF32 on
the tensor cores. No torch import at module level: `aistack plan` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    key: str  # what a torch device name or a Slurm constraint contains: "H100", "H100 PCIe"
    name: str
    tflops: dict[str, float]  # dense peak per matmul precision: bf16, fp8, fp32 (as TF32)
    memory_gib: float  # memory.total as nvidia-smi reports it
    hbm_bytes_per_s: float

    @property
    def bf16_flops(self) -> float:
        return self.tflops["bf16"] * 1e12

    @property
    def fp8_flops(self) -> float | None:
        return self.tflops["fp8"] * 1e12 if "fp8" in self.tflops else None


# Most specific first: "NVIDIA H100 PCIe" must not match the SXM part.
GPUS = (
    GPU("H100 PCIe", "H100 PCIe 80GB", {"bf16": 756.0, "fp8": 1513.0, "fp32": 378.0}, 81559 / 1024, 2.0e12),
    GPU("H100 NVL", "H100 NVL 94GB", {"bf16": 835.0, "fp8": 1671.0, "fp32": 418.0}, 95830 / 1024, 3.9e12),
    GPU("H100", "H100 SXM 80GB", {"bf16": 989.0, "fp8": 1979.0, "fp32": 494.0}, 81559 / 1024, 3.35e12),
    GPU("H200", "H200 SXM 141GB", {"bf16": 989.0, "fp8": 1979.0, "fp32": 494.0}, 143771 / 1024, 4.8e12),
    GPU("A100", "A100 SXM 80GB", {"bf16": 312.0, "fp32": 156.0}, 81920 / 1024, 2.039e12),
)
DEVICES = {gpu.key: gpu for gpu in GPUS}  # by key, in GPUS's order (lookup matches in that order)


def lookup(*texts: str | None) -> GPU | None:
    """The GPU that a device name ("NVIDIA H100 80GB HBM3") or a constraint ("gpu&h200") names."""
    for text in texts:
        for gpu in GPUS:
            if text and gpu.key.lower() in str(text).lower():
                return gpu
    return None


def current() -> GPU | None:
    """This process's CUDA device, or None (no GPU, or one not in the table)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return lookup(torch.cuda.get_device_name())


def device_name(device, threads_per_rank: int | None = None) -> str:
    """The GPU's name (a torch.device), or the CPU's with the threads each process used."""
    import platform

    import torch  # here: plans and estimates read this module without torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    if threads_per_rank is not None:
        return f"CPU ({cpu}, {threads_per_rank} thread(s) per rank)"
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"
