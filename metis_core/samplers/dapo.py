"""DAPO's dynamic sampling: over-sample, drop the groups whose rewards do not vary, refill.

The sampler only orders the candidates (at random); the rollout stage does the rest
(metis_core/stages/outcomes.py::rollout): round after round it rolls out as many candidates, in
that order, as the batch still lacks, keeps the groups with varying rewards, and stops when the
batch is full, the candidates run out or `curriculum.dapo.max_rounds` are spent. Discarded
rollouts are charged like any others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metis_core.samplers.base import Candidate, Outcome, Sampler, register_sampler


@register_sampler
class DapoDynamicSampler(Sampler):
    name = "dapo_dynamic"
    refills = True
    scores_prompts = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last: dict[str, float] = {}

    def score(self, candidates: Sequence[Candidate], rng: np.random.Generator) -> list[float]:
        return [0.0] * len(candidates)

    def select(
        self, candidates: Sequence[Candidate], budget: int, rng: np.random.Generator
    ) -> list[int]:
        """Every candidate, in a random order: the first `budget` are the first round."""
        return [int(i) for i in rng.permutation(len(candidates))]

    def record_rounds(self, rounds: int, accepted: int, discarded: int, budget: int) -> None:
        """What the rollout stage's refill did this iteration."""
        self._last = {
            "rounds": float(rounds),
            "accepted_groups": float(accepted),
            "discarded_groups": float(discarded),
            "batch_filled": float(accepted >= budget),
        }

    def update(self, outcomes: Sequence[Outcome]) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
