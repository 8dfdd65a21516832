"""The trainer warns about bf16 on hardware that emulates it, and only there; and notes that bf16
is available where fp32 runs on hardware with bf16 matmuls."""

import pytest
import torch

from metis_core.trainer import hardware


@pytest.mark.parametrize("native", [True, False])
def test_bf16_advice_follows_the_cpu(monkeypatch, native):
    monkeypatch.setattr(hardware.torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(hardware.torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    assert hardware.native_bf16_matmul(cpu) is native
    assert hardware.precision_advice("fp32", cpu) is None
    for precision in ("bf16", "autocast-bf16"):
        advice = hardware.precision_advice(precision, cpu)
        if native:
            assert advice is None
        else:
            assert f"trainer.precision={precision}" in advice and "fp32" in advice


def test_amx_alone_counts_as_native(monkeypatch):
    monkeypatch.setattr(hardware.torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(hardware.torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert hardware.precision_advice("bf16", torch.device("cpu")) is None


@pytest.mark.parametrize("native", [True, False])
def test_fp32_on_bf16_hardware_gets_a_hint(monkeypatch, native):
    monkeypatch.setattr(hardware.torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(hardware.torch.cpu, "_is_amx_tile_supported", lambda: native)
    cpu = torch.device("cpu")
    hint = hardware.precision_hint("fp32", cpu)
    assert (hint is not None and "trainer.precision=bf16" in hint) is native
    assert hardware.precision_hint("bf16", cpu) is None
