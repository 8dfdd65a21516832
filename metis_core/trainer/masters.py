"""The fp32 master weights behind a bf16 policy: finding them in DeepSpeed's optimiser, and
running a no-grad pass on them (the sync check compares the engine with what it was sent)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def master_weight(optimizer: Any, param: torch.Tensor) -> torch.Tensor:
    """The fp32 weight the optimiser steps for `param`: the parameter itself in fp32, DeepSpeed's
    fp32 master copy under precision=bf16 (full, not a ZeRO shard). `optimizer`: the DeepSpeed
    engine's."""
    if param.dtype == torch.float32:
        return param.detach()
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(param)  # ZeRO 1-3 and DeepSpeed's BF16 optimiser
    if full is not None:
        return full
    # ZeRO-0 bf16 (DeepSpeed's unfused optimiser): fp16_groups mirror fp32_groups
    for low, high in zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True):
        for lp, hp in zip(low, high, strict=True):
            if lp is param:
                return hp.detach()
    raise LookupError("no fp32 master weight for a bf16 parameter")


@contextmanager
def float32_tensors(
    module: torch.nn.Module, float32: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Inside: the module's bf16 parameters hold `float32(param)` (for precision=bf16, the fp32
    master weights) and its bf16 buffers float32 copies; the same Parameter objects, so the
    optimiser's references to the bf16 storage stay valid; restored on exit. No-grad passes only."""
    params = [(t, t.data) for t in module.parameters() if t.dtype == torch.bfloat16]
    buffers = [(t, t.data) for t in module.buffers() if t.dtype == torch.bfloat16]
    for t, _ in params:
        t.data = float32(t)
    for t, data in buffers:
        t.data = data.float()
    try:
        yield
    finally:
        for t, data in params + buffers:
            t.data = data
