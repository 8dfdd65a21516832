"""Stochastic rounding to bfloat16 (metis_core/rounding.py): each result is one of the
value's two bf16 neighbours, the expected result is the value itself, and the draws are a
function of (seed, step) alone."""

import pytest
import torch

from metis_core import rounding
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


def test_each_weight_is_unbiased_across_steps():
    """The noise comes from a table read at a new offset each step: every single weight, not
    just the tensor on average, must round up with the frequency of its dropped fraction."""
    value = 0.05 + 2.4e-5  # an eighth of a bf16 step above the lower neighbour
    master = torch.full((2_000,), value)
    copy = torch.empty(master.shape, dtype=torch.bfloat16)
    low, high = neighbours(master[:1])
    up_fraction = (value - float(low[0])) / float(high[0] - low[0])
    ups = torch.zeros(master.shape)
    steps = 400
    for step in range(steps):
        round_copies([(copy, master)], step=step)
        ups += (copy.float() == high[0]).float()
    per_weight = ups / steps
    # a Bernoulli(0.125) mean over 400 steps has sd 0.017: 0.09 is over 5 sd for any weight
    assert float((per_weight - up_fraction).abs().max()) < 0.09
    assert float(per_weight.mean()) == pytest.approx(up_fraction, abs=0.005)


def test_chunked_rounding_equals_whole_tensor_rounding():
    master = torch.randn(10_007) * 0.05
    whole = torch.empty(master.shape, dtype=torch.bfloat16)
    chunked = torch.empty(master.shape, dtype=torch.bfloat16)
    rounding._round_into(whole, master, 123, torch.empty(master.numel(), dtype=torch.int32))
    rounding._round_into(chunked, master, 123, torch.empty(1_000, dtype=torch.int32))
    assert torch.equal(whole, chunked)
    low, high = neighbours(master)
    assert bool(((whole.float() == low) | (whole.float() == high)).all())


def test_the_noise_table_does_not_depend_on_how_it_grew():
    grown = rounding._NoiseTable()
    grown.at_least(10, torch.device("cpu"))
    grown_table = grown.at_least(2 * rounding._BLOCK + 5, torch.device("cpu"))
    direct = rounding._NoiseTable().at_least(3 * rounding._BLOCK, torch.device("cpu"))
    assert torch.equal(grown_table, direct)
    assert int(direct.min()) >= 0 and int(direct.max()) < 1 << 16
    # uniform over [0, 2^16): each quarter holds a quarter of the entries
    quarters = torch.bincount(direct >> 14, minlength=4).float() / direct.numel()
    assert torch.allclose(quarters, torch.full((4,), 0.25), atol=0.002)
