"""Stochastic rounding of fp32 weights to bfloat16.

Under trainer.precision=bf16 the forward and backward passes run on bf16 copies of the fp32
master weights. Rounded to nearest, a copy only moves once its master has moved half a bf16
step (2**-8 of the weight's magnitude, about 1e-4 for a weight of 0.05) while AdamW at lr 1e-5
moves a master about 1e-5 a step: the copies lag the masters by up to half a step, all in the
direction of the recent updates, and the trainer's policy drifts away from the one the engine
samples (which is sent the masters). Rounded stochastically, up or down with the probabilities
that make the expected copy equal the master, the lag is noise of mean zero instead of a bias
(Zamirai et al., "Revisiting BFloat16 Training", 2020)."""

from __future__ import annotations

import torch

_LOW_BITS = 1 << 16  # the float32 mantissa bits that bfloat16 drops


def stochastic_bf16(master: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`master` (float32) rounded to bfloat16, up or down with probability proportional to its
    distance from each neighbour: E[result] == master. Finite inputs only (weights)."""
    if master.dtype != torch.float32:
        raise TypeError(f"stochastic_bf16 takes float32, got {master.dtype}")
    bits = master.contiguous().view(torch.int32)
    noise = torch.randint(
        0, _LOW_BITS, bits.shape, dtype=torch.int32, generator=generator, device=bits.device
    )
    # adding uniform noise below the kept bits and truncating rounds away from zero with the
    # probability of the dropped fraction (sign-magnitude: it works on either sign)
    rounded = (bits + noise) & ~(_LOW_BITS - 1)
    return rounded.view(torch.float32).to(torch.bfloat16)  # exact: the low bits are zero


def round_copies(pairs: list[tuple[torch.Tensor, torch.Tensor]], step: int, seed: int = 0) -> None:
    """Overwrite each bf16 copy with a stochastic rounding of its fp32 master. The noise depends
    only on (seed, step, order of the pairs), so data-parallel ranks make the same copies and a
    resumed run the same ones it would have made."""
    if not pairs:
        return
    device = pairs[0][0].device
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
    with torch.no_grad():
        for copy, master in pairs:
            master = master.detach().to(device, torch.float32)
            copy.copy_(stochastic_bf16(master, generator).view_as(copy))
