"""The interface every curriculum shares, its registry, and Top-B selection.

A sampler sees the same inputs whatever it is (candidate ids, the policy's judgments when it asks
for them, outcomes after rollout) and returns the same thing: indices of the candidates that get
the rollout budget. It carries its own state, saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np


def top_b(
    scores: Sequence[float], budget: int, rng: np.random.Generator, exploration: float = 0.0
) -> list[int]:
    """Indices of the `budget` highest scores, ties broken at random.

    With exploration share epsilon, floor(epsilon * budget) of the slots are drawn uniformly from
    the candidates outside the top, so the judge also sees outcomes of prompts it ranks low.
    """
    scores = np.asarray(scores, dtype=float)
    if budget > len(scores):
        raise ValueError(f"cannot select {budget} prompts from {len(scores)} candidates")
    n_explore = int(exploration * budget)
    n_top = budget - n_explore
    # lexsort sorts by the last key first: score descending, then a random tie-breaker.
    order = np.lexsort((rng.random(len(scores)), -scores))
    chosen = list(order[:n_top])
    if n_explore:
        chosen += list(rng.choice(order[n_top:], size=n_explore, replace=False))
    return [int(i) for i in chosen]


def domain_quota(size: int, weights: dict[str, float], available: dict[str, int]) -> dict[str, int]:
    """How many of `size` candidates each domain contributes, in proportion to its weight.

    Largest-remainder rounding. A domain with fewer prompts than its share gives all it has and
    the rest is shared among the others by weight; zero-weight domains give only when every
    weighted one is exhausted. Raises if the domains together hold fewer than `size` prompts.
    """
    if sum(available.values()) < size:
        raise ValueError(f"cannot draw {size} candidates from {sum(available.values())} prompts")
    quota = dict.fromkeys(available, 0)
    left = size
    while left > 0:
        room = [d for d in sorted(available) if quota[d] < available[d]]
        weighted = [d for d in room if weights.get(d, 0) > 0]
        share_of = {d: weights[d] for d in weighted} if weighted else dict.fromkeys(room, 1.0)
        total = sum(share_of.values())
        share = {d: left * w / total for d, w in share_of.items()}
        give = {d: min(int(share[d]), available[d] - quota[d]) for d in share}
        rest = left - sum(give.values())
        for d in sorted(share, key=lambda d: int(share[d]) - share[d]):  # largest remainder first
            if rest and quota[d] + give[d] < available[d]:
                give[d] += 1
                rest -= 1
        for d, g in give.items():
            quota[d] += g
        left -= sum(give.values())
    return {d: q for d, q in quota.items() if q}


class Sampler:
    """Base curriculum. Subclasses set `name`, and `needs_judgment` if they use the policy's v_hat."""

    name: ClassVar[str]
    needs_judgment: ClassVar[bool] = False

    def __init__(self, exploration: float = 0.0, **_: Any) -> None:
        self.exploration = exploration

    def score(self, candidate_ids: Sequence[str], v_hat: Sequence[float] | None) -> list[float]:
        """A score per candidate; higher gets rollouts first."""
        raise NotImplementedError

    def select(self, scores: Sequence[float], budget: int, rng: np.random.Generator) -> list[int]:
        return top_b(scores, budget, rng, self.exploration)

    def update(self, outcomes: dict[str, list[float]]) -> None:
        """Rewards of this step's rollouts, by prompt id."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


SAMPLERS: dict[str, type[Sampler]] = {}


def register_sampler(cls: type[Sampler]) -> type[Sampler]:
    if cls.name in SAMPLERS:
        raise ValueError(f"sampler {cls.name!r} is already registered")
    SAMPLERS[cls.name] = cls
    return cls


def make_sampler(name: str, **kwargs: Any) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](**kwargs)
