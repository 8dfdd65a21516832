"""Uniform: plain GRPO, every candidate equally likely (Top-B of equal scores = random B)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metis_core.samplers.base import Candidate, Sampler, register_sampler


@register_sampler
class UniformSampler(Sampler):
    name = "uniform"
    scores_prompts = False

    def score(self, candidates: Sequence[Candidate], rng: np.random.Generator) -> list[float]:
        return [0.0] * len(candidates)
