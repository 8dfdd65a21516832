"""Stochastic rounding of fp32 weights to bfloat16.

Under trainer.precision=bf16 the forward and backward passes run on bf16 copies of the fp32
master weights. Rounded to nearest, a copy only moves once its master has moved half a bf16
step (2**-8 of the weight's magnitude, about 1e-4 for a weight of 0.05) while AdamW at lr 1e-5
moves a master about 1e-5 a step: the copies lag the masters by up to half a step, all in the
direction of the recent updates, and the trainer's policy drifts away from the one the engine
samples (which is sent the masters). Rounded stochastically, up or down with the probabilities
that make the expected copy equal the master, the lag is noise of mean zero instead of a bias
(Zamirai et al., "Revisiting BFloat16 Training", 2020).

The noise. Drawing 16 fresh random bits for each of 135M weights took 0.26 s a step on a 2-core
CPU (torch's CPU generator is serial), most of the rounding's 0.48 s. So the bits are drawn
once per process into a table (`_NoiseTable`), and each tensor reads a window of it at an
offset drawn from the step's generator: one small draw per tensor instead of one per weight.
Each weight's noise is then one of `WINDOW` table entries, chosen anew every step, so its
rounding is up with the frequency of its entries below the dropped fraction: the expected copy
differs from the master by about 0.5 / sqrt(WINDOW) = 2.4e-4 of a bf16 step (one standard
deviation; a fixed, tiny offset per weight with random sign, which never reaches the masters).
The table's entries depend on their index alone, so every rank, and a resumed run, reads the
same noise for the same (seed, step)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import torch

_LOW_BITS = 1 << 16  # the float32 mantissa bits that bfloat16 drops
WINDOW = 1 << 22
"""Offsets a tensor's noise may start at: how many table entries each weight's noise is drawn
from."""
_BLOCK = 1 << 20  # table entries drawn per generator: entry i depends on i alone
_TABLE_SEED = 0x5EED
_CPU_CHUNK = 1 << 18
"""Weights rounded per pass on the CPU: their int32 bits (1 MiB) stay in a core's L2 cache
through the add, the mask and the conversion (0.08 s for 135M weights, against 0.10 s in whole
tensors)."""


class _NoiseTable:
    """Per device: uniform integers in [0, 2**16), grown on demand, entry i a function of i."""

    def __init__(self) -> None:
        self._tables: dict[torch.device, torch.Tensor] = {}
        self._lock = threading.Lock()

    def at_least(self, size: int, device: torch.device) -> torch.Tensor:
        with self._lock:
            table = self._tables.get(device, torch.empty(0, dtype=torch.int32, device=device))
            if table.numel() < size:
                blocks = [table]
                for b in range(table.numel() // _BLOCK, -(-size // _BLOCK)):
                    generator = torch.Generator(device=device).manual_seed(_TABLE_SEED + b)
                    block = torch.empty(_BLOCK, dtype=torch.int32, device=device)
                    blocks.append(block.random_(0, _LOW_BITS, generator=generator))
                table = self._tables[device] = torch.cat(blocks)
            return table


_TABLE = _NoiseTable()


def _round_into(
    copy: torch.Tensor, master: torch.Tensor, offset: int, buffer: torch.Tensor
) -> None:
    """copy <- `master` rounded stochastically with the table's noise from `offset` on, chunk by
    chunk through `buffer` (int32, on master's device): no temporaries of the tensor's size."""
    if master.dtype != torch.float32:
        raise TypeError(f"stochastic rounding takes float32, got {master.dtype}")
    if copy.shape != master.shape or not copy.is_contiguous():
        raise ValueError("stochastic rounding writes a contiguous copy of the master's shape")
    n = master.numel()
    noise = _TABLE.at_least(offset + n, master.device)[offset : offset + n]
    bits, out = master.contiguous().view(-1).view(torch.int32), copy.view(-1)
    for start in range(0, n, buffer.numel()):
        stop = min(n, start + buffer.numel())
        chunk = buffer[: stop - start]
        # + noise uniform in [0, 2^16), below the kept bits, then truncate: away from zero with
        # the probability of the dropped fraction (sign-magnitude: either sign)
        torch.add(bits[start:stop], noise[start:stop], out=chunk)
        chunk.bitwise_and_(~(_LOW_BITS - 1))
        out[start:stop].copy_(chunk.view(torch.float32))  # exact: the low bits are zero


def _buffer(longest: int, device: torch.device) -> torch.Tensor:
    """The int32 chunk buffer: cache-sized on the CPU, a whole tensor on an accelerator (where
    each chunk would be three kernel launches)."""
    size = min(longest, _CPU_CHUNK) if device.type == "cpu" else longest
    return torch.empty(max(size, 1), dtype=torch.int32, device=device)


def _offset(generator: torch.Generator) -> int:
    return int(torch.randint(0, WINDOW, (1,), generator=generator, device=generator.device))


def stochastic_bf16(master: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`master` (float32) rounded to bfloat16, up or down with probability proportional to its
    distance from each neighbour: E[result] == master (up to the table's 2.4e-4 of a bf16 step).
    Finite inputs only (weights). `generator` (on master's device) picks the noise."""
    out = torch.empty(master.shape, dtype=torch.bfloat16, device=master.device)
    with torch.no_grad():
        _round_into(out, master, _offset(generator), _buffer(master.numel(), master.device))
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
    buffer = _buffer(max(c.numel() for c, _ in pairs), device)
    # every tensor's offset in one draw (the same values as one draw each): on a GPU, one
    # device-to-host copy instead of one per tensor
    offsets = torch.randint(0, WINDOW, (len(pairs),), generator=generator, device=device).tolist()
    with torch.no_grad():
        for (copy, master), offset in zip(pairs, offsets, strict=True):
            _round_into(copy, master.detach().to(device, torch.float32), offset, buffer)


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
    for name, weight in weights:
        master = weight.detach().float()
        if master.device not in generators:
            generators[master.device] = _noise(ENGINE_STREAM, step, master.device)
        yield name, stochastic_bf16(master, generators[master.device])
