"""Uniform: plain GRPO, every candidate equally likely (Top-B of equal scores = random B)."""

from __future__ import annotations

from collections.abc import Sequence

from metis_core.samplers.base import Sampler, register_sampler


@register_sampler
class UniformSampler(Sampler):
    name = "uniform"

    def score(self, candidate_ids: Sequence[str], v_hat: Sequence[float] | None) -> list[float]:
        return [0.0] * len(candidate_ids)
