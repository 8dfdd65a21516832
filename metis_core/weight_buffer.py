"""Named tensors laid out in one flat byte buffer that two processes share (the separate engine's
weight pushes, the trainer group's weights out): each push sends only the layout, not the bytes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

ALIGN = 64  # bytes; every tensor starts at a multiple of this in the buffer

Layout = list[tuple[str, torch.dtype, tuple[int, ...], int]]
"""(name, dtype, shape, byte offset) of each tensor in the buffer."""


def plan(tensors: Sequence[tuple[str, torch.Tensor]]) -> tuple[Layout, int]:
    """Where each tensor goes in the buffer, and the buffer's size in bytes."""
    layout: Layout = []
    offset = 0
    for name, tensor in tensors:
        layout.append((name, tensor.dtype, tuple(tensor.shape), offset))
        offset += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    return layout, offset


def views(buffer: torch.Tensor, layout: Layout) -> list[tuple[str, torch.Tensor]]:
    """The named tensors `layout` places in `buffer` (views: no copy)."""
    out = []
    for name, dtype, shape, offset in layout:
        size = torch.Size(shape).numel() * dtype.itemsize
        out.append((name, buffer[offset : offset + size].view(dtype).view(shape)))
    return out
