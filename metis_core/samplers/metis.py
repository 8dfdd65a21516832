"""METIS: the policy's own prediction of its reward variance is the score; Top-B gets rollouts."""

from __future__ import annotations

from collections.abc import Sequence

from metis_core.samplers.base import Sampler, register_sampler


@register_sampler
class MetisSampler(Sampler):
    name = "metis"
    needs_judgment = True

    def score(self, candidate_ids: Sequence[str], v_hat: Sequence[float] | None) -> list[float]:
        if v_hat is None or len(v_hat) != len(candidate_ids):
            raise ValueError("the metis sampler needs one judgment per candidate")
        return list(v_hat)
