"""Stochastic rounding to bfloat16 (metis_core/rounding.py): each result is one of the
value's two bf16 neighbours, the expected result is the value itself, and the draws are a
function of (seed, step) alone."""

import pytest
import torch

from metis_core.rounding import engine_weights, round_copies, stochastic_bf16
from tests.devices import DEVICE_IDS, DEVICES


def neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values either side of x: truncated toward zero, and one bf16 step further out."""
    low = x.view(torch.int32) & ~0xFFFF
    return low.view(torch.float32), (low + 0x10000).view(torch.float32)


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
def test_each_result_is_a_neighbour_and_the_mean_is_the_value(device):
    generator = torch.Generator(device).manual_seed(0)
    # a weight of 0.05 plus an lr-sized update: an eighth of a bf16 step above the lower neighbour
    for value in (0.05 + 2.4e-5, -0.05 - 2.4e-5, 3.1e-3, -0.7):
        x = torch.full((100_000,), value, device=device)
        rounded = stochastic_bf16(x, generator)
        assert rounded.dtype == torch.bfloat16
        low, high = neighbours(x)
        r = rounded.float()
        assert bool(((r == low) | (r == high)).all())
        assert float(r.mean()) == pytest.approx(value, abs=abs(float(high[0] - low[0])) * 0.01)
    # rounding to nearest would give the lower neighbour every time for the first value
    near = torch.tensor([0.05 + 2.4e-5]).bfloat16().float()
    assert float(near[0]) != pytest.approx(0.05 + 2.4e-5, abs=1e-6)


def test_values_bf16_holds_stay_as_they_are():
    x = torch.tensor([0.0, 1.0, -2.0, 0.05]).bfloat16().float()
    assert torch.equal(stochastic_bf16(x, torch.Generator().manual_seed(1)).float(), x)


def test_only_float32_is_rounded():
    with pytest.raises(TypeError, match="float32"):
        stochastic_bf16(torch.zeros(3, dtype=torch.float64), torch.Generator())


def test_the_copies_depend_on_seed_and_step_only():
    masters = [torch.randn(64, 32) * 0.05, torch.randn(7) * 0.05]

    def copies(step: int) -> list[torch.Tensor]:
        out = [torch.empty(m.shape, dtype=torch.bfloat16) for m in masters]
        round_copies(list(zip(out, masters, strict=True)), step=step)
        return out

    first, again, later = copies(3), copies(3), copies(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # every rank alike
    assert not all(torch.equal(a, b) for a, b in zip(first, later, strict=True))


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
def test_a_bf16_engine_is_sent_weights_that_equal_the_masters_in_expectation(device):
    masters = [
        ("a", torch.full((50_000,), 0.05 + 2.4e-5, device=device)),
        ("b", torch.full((3, 7), -0.7, device=device)),
    ]
    # float32 engines get the masters themselves
    assert all(
        sent is w
        for (_, sent), (_, w) in zip(engine_weights(masters, "float32", 3), masters, strict=True)
    )
    sent = dict(engine_weights(masters, "bfloat16", 3))
    assert list(sent) == ["a", "b"] and all(t.dtype == torch.bfloat16 for t in sent.values())
    low, high = neighbours(masters[0][1])
    a = sent["a"].float()
    assert bool(((a == low) | (a == high)).all())
    # an lr-sized update an eighth of a bf16 step: rounded to nearest it would vanish
    assert float(a.mean()) == pytest.approx(0.05 + 2.4e-5, abs=float(high[0] - low[0]) * 0.01)
    again = dict(engine_weights(masters, "bfloat16", 3))
    assert all(torch.equal(again[k], sent[k]) for k in sent)  # a resumed run sends the same
    other = dict(engine_weights(masters, "bfloat16", 4))
    assert not torch.equal(other["a"], sent["a"])  # new noise every step
