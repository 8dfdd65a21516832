"""What `trainer.precision: auto` and `model.dtype: auto` (the defaults) become on this machine.

bf16 pays only where the hardware multiplies bf16 natively: CUDA GPUs with bf16, and CPUs with
AVX512-BF16 or AMX (oneDNN's bf16 kernels). There, a bf16 update with fp32 master weights and
stochastic rounding learned as fp32 did over the 16-step default (3 seeds each, a tie) at 0.69 of
fp32's time per iteration (docs/BENCHMARKS.md). On an AVX2-only CPU oneDNN converts bf16 to fp32
around fp32 kernels, and a bf16 update is slower than fp32's: `auto` is fp32 there.

The choice is made when a config is validated, and a run's folder stores the resolved config:
a run resumed on other hardware keeps the precision it started with.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def native_bf16_matmul(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True  # no reason to doubt it, no way to ask
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@cache
def trainer_has_native_bf16() -> bool:
    """Whether the device the trainer will run on (DeepSpeed's: a CUDA GPU when one is visible,
    else the CPU) multiplies bf16 natively."""
    import torch

    return native_bf16_matmul(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def auto_precision(zero_stage: int, ranks: int, bf16_rounding: str, native_bf16: bool) -> str:
    """trainer.precision for `auto`: bf16 where the hardware has bf16 matmuls and the rest of the
    trainer's settings allow bf16 with the masters whole (ZeRO-3 shards the copies stochastic
    rounding remakes; several ranks at ZeRO-1 shard the masters), else fp32."""
    bf16_allowed = not (bf16_rounding == "stochastic" and zero_stage == 3) and not (
        ranks > 1 and zero_stage == 1
    )
    return "bf16" if native_bf16 and bf16_allowed else "fp32"


def auto_engine_dtype(precision: str) -> str:
    """model.dtype for `auto`: the trainer's weights' dtype. A bf16 engine beside a bf16 trainer
    is sent the trainer's stochastically rounded copies and samples the policy the trainer's
    forward computes; an fp32 engine beside an fp32 trainer samples it exactly."""
    return "bfloat16" if precision == "bf16" else "float32"
