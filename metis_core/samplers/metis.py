"""METIS: the policy's own prediction of its reward variance is the score; Top-B gets rollouts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metis_core.samplers.base import Candidate, Sampler, register_sampler


@register_sampler
class MetisSampler(Sampler):
    name = "metis"
    needs_judgment = True

    def score(self, candidates: Sequence[Candidate], rng: np.random.Generator) -> list[float]:
        if any(c.v_hat is None for c in candidates):
            raise ValueError("the metis sampler needs one judgment per candidate")
        return [float(c.v_hat) for c in candidates]  # type: ignore[arg-type]
