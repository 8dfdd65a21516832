"""What the trainer's hardware does fast: whether bf16 matmuls are native here, and what to say
about trainer.precision on it.

bf16 pays only where the hardware multiplies bf16 natively: CUDA GPUs, and CPUs with AVX512-BF16
or AMX (oneDNN's bf16 kernels). On an AVX2-only CPU oneDNN converts bf16 to fp32 around fp32
kernels, and a bf16 update is slower than fp32's (docs/BENCHMARKS.md, "On an AVX2-only CPU").
"""

from __future__ import annotations

import torch

from metis_core.precision import native_bf16_matmul

__all__ = ["native_bf16_matmul", "precision_advice", "precision_hint"]


def precision_advice(precision: str, device: torch.device) -> str | None:
    """A warning for a bf16 trainer precision on hardware without bf16 matmuls, else None."""
    if precision == "fp32" or native_bf16_matmul(device):
        return None
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device.type
    return (
        f"trainer.precision={precision} on a {capability} CPU without AVX512-BF16 or AMX: its bf16 "
        "matmuls are emulated, so the update is slower than fp32's and no more accurate; "
        "set trainer.precision=fp32 (or auto, the default, which picks fp32 here)"
    )


def precision_hint(precision: str, device: torch.device) -> str | None:
    """A note for an fp32 trainer on hardware with bf16 matmuls (bf16 is faster there), else None."""
    if precision != "fp32" or not native_bf16_matmul(device):
        return None
    where = "GPU" if device.type == "cuda" else "CPU (AVX512-BF16 or AMX)"
    return (
        f"this {where} multiplies bf16 natively: trainer.precision=bf16 (fp32 master weights, "
        "stochastic rounding) with model.dtype=bfloat16 runs iterations faster than fp32 and "
        "learned as well in the benchmarks (docs/BENCHMARKS.md); trainer.precision=auto (the "
        "default) picks it wherever the rest of trainer's settings allow it"
    )
