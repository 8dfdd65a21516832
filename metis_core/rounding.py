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

from collections.abc import Iterable, Iterator

import torch

_LOW_BITS = 1 << 16  # the float32 mantissa bits that bfloat16 drops


def _scratch_size(numel: int) -> int:
    """int32 elements `_round_into` needs for a tensor of `numel`: the bits, then the noise."""
    return numel + (numel + 1) // 2


def _round_into(
    copy: torch.Tensor, master: torch.Tensor, generator: torch.Generator, scratch: torch.Tensor
) -> None:
    """copy <- `master` rounded stochastically, in place, through `scratch` (int32, at least
    `_scratch_size(master.numel())`): no temporaries, so no fresh pages for the allocator to
    fault in each step."""
    if master.dtype != torch.float32:
        raise TypeError(f"stochastic rounding takes float32, got {master.dtype}")
    n = master.numel()
    bits = scratch[:n].view(master.shape)
    # 16 random bits per weight, two weights to each 32-bit draw: the generator was most of the
    # rounding's time (0.39 of 0.5 s for 135M weights), and this halves it
    noise = scratch[n : _scratch_size(n)]
    noise.random_(-(2**31), 2**31, generator=generator)
    torch.add(
        master.contiguous().view(torch.int32), noise.view(torch.int16)[:n].view_as(bits), out=bits
    )
    # + 2^15: the noise added is uniform in [0, 2^16), below the kept bits; adding it and
    # truncating rounds away from zero with the probability of the dropped fraction
    # (sign-magnitude: either sign)
    bits.add_(_LOW_BITS // 2)
    bits.bitwise_and_(~(_LOW_BITS - 1))
    copy.copy_(bits.view(torch.float32).view_as(copy))  # exact: the low bits are zero


def stochastic_bf16(
    master: torch.Tensor, generator: torch.Generator, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """`master` (float32) rounded to bfloat16, up or down with probability proportional to its
    distance from each neighbour: E[result] == master. Finite inputs only (weights). `scratch`:
    int32 of at least `_scratch_size(master.numel())` on master's device, to reuse across calls;
    a fresh one when None."""
    if scratch is None:
        scratch = torch.empty(
            _scratch_size(master.numel()), dtype=torch.int32, device=master.device
        )
    out = torch.empty(master.shape, dtype=torch.bfloat16, device=master.device)
    _round_into(out, master, generator, scratch)
    return out


def _noise(seed: int, step: int, device: torch.device | None = None) -> torch.Generator:
    """The rounding noise of `step` in stream `seed`: a function of the two alone."""
    return torch.Generator(device=device or "cpu").manual_seed(seed * 1_000_003 + step)


def round_copies(pairs: list[tuple[torch.Tensor, torch.Tensor]], step: int, seed: int = 0) -> None:
    """Overwrite each bf16 copy with a stochastic rounding of its fp32 master. The noise depends
    only on (seed, step, order of the pairs), so data-parallel ranks make the same copies and a
    resumed run the same ones it would have made."""
    if not pairs:
        return
    device = pairs[0][0].device
    generator = _noise(seed, step, device)
    longest = max(c.numel() for c, _ in pairs)
    scratch = torch.empty(_scratch_size(longest), dtype=torch.int32, device=device)
    with torch.no_grad():
        for copy, master in pairs:
            _round_into(copy, master.detach().to(device, torch.float32), generator, scratch)


ENGINE_STREAM = 1
"""The seed of the engine's rounding noise (`engine_weights`); the trainer's copies use 0."""


def engine_weights(
    weights: Iterable[tuple[str, torch.Tensor]], engine_dtype: str, step: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights an engine of `engine_dtype` is sent after step `step`'s update. float32: the
    fp32 weights as they are. bfloat16: each rounded stochastically (E[sent] == weight). Rounded to
    nearest, as the engine would round them itself, an update at lr 1e-5 (a tenth of bf16's
    spacing) mostly vanished: the engine followed 0.12 nats/token behind the trainer after one
    update (docs/metis.md, "Engine/trainer precision"). The noise depends only on the step and the
    order of the weights, so a resumed run sends what the uninterrupted one sent."""
    if engine_dtype != "bfloat16":
        yield from weights
        return
    generators: dict[torch.device, torch.Generator] = {}  # a generator draws on its own device
    scratch = torch.empty(0, dtype=torch.int32)  # one for all weights, grown to the largest
    with torch.no_grad():
        for name, weight in weights:
            master = weight.detach().float()
            if master.device not in generators:
                generators[master.device] = _noise(ENGINE_STREAM, step, master.device)
            needed = _scratch_size(master.numel())
            if scratch.numel() < needed or scratch.device != master.device:
                scratch = torch.empty(needed, dtype=torch.int32, device=master.device)
            yield name, stochastic_bf16(master, generators[master.device], scratch)
