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
