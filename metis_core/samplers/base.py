"""The interface every curriculum shares, its registry, and Top-B selection.

A sampler sees the same inputs whatever it is (candidates with the policy's judgments or prompt
features when it asks for them, outcomes after rollout) and returns the same thing: indices of the
candidates that get the rollout budget. It carries its own state, saved in checkpoints, and says
what it is doing through `metrics()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from metis_core.algorithms import is_zero_variance
from metis_core.curriculum_config import CurriculumConfig


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


@dataclass(frozen=True)
class Candidate:
    """What a sampler may know about a candidate prompt when it scores it."""

    prompt_id: str
    task: str = ""
    domain: str = ""
    v_hat: float | None = None
    """The policy's judgment of its reward variance (samplers with `needs_judgment`)."""
    features: np.ndarray | None = None
    """The policy's frozen features of the prompt (samplers with `needs_features`)."""


@dataclass(frozen=True)
class Outcome:
    """The verified rollouts of one prompt: what a sampler learns from after each iteration."""

    prompt_id: str
    rewards: list[float]
    features: np.ndarray | None = None
    """Present for samplers with `needs_features`: the features it was scored on."""

    @property
    def success(self) -> float:
        """Mean reward, which is the success rate for 0/1 rewards."""
        return float(np.mean(self.rewards))

    @property
    def zero_variance(self) -> bool:
        """All rewards equal: the same rule (`algorithms.is_zero_variance` of their population
        variance, in float64) as the metrics, the advantages and the history's variances."""
        return is_zero_variance(float(np.var(np.asarray(self.rewards, dtype=np.float64))))


class Sampler:
    """Base curriculum. Subclasses set `name`, implement `score` (higher gets rollouts first) and,
    when they learn, `update`, `metrics`, `state_dict` and `load_state_dict`.

    Randomness comes only from the generator passed in, seeded by (run seed, step, purpose): a
    replayed or resumed step draws the same numbers, so no RNG state needs saving.
    """

    name: ClassVar[str]
    needs_judgment: ClassVar[bool] = False
    """Ask the policy for v_hat of every candidate (the judge stage)."""
    needs_features: ClassVar[bool] = False
    """Ask the trainer for each candidate's prompt features (a forward pass, charged)."""
    refills: ClassVar[bool] = False
    """Roll out in rounds and drop zero-variance groups (DAPO's dynamic sampling)."""
    scores_prompts: ClassVar[bool] = True
    """Its scores rank prompts, so the selection floor applies; False for uniform and DAPO."""

    def __init__(self, cfg: CurriculumConfig) -> None:
        self.cfg = cfg

    def score(self, candidates: Sequence[Candidate], rng: np.random.Generator) -> list[float]:
        """A score per candidate; higher gets rollouts first."""
        raise NotImplementedError

    def select(
        self, candidates: Sequence[Candidate], budget: int, rng: np.random.Generator
    ) -> list[int]:
        """Indices of the candidates that get rollouts: Top-B of the scores, with the selection
        floor (curriculum.exploration) drawn uniformly from the rest."""
        floor = self.cfg.exploration if self.scores_prompts else 0.0
        return top_b(self.score(candidates, rng), budget, rng, floor)

    def update(self, outcomes: Sequence[Outcome]) -> None:
        """Learn from this iteration's verified rollouts (called once per iteration)."""

    def metrics(self) -> dict[str, float]:
        """What the sampler wants on the dashboard (logged as `sampler/<name>`)."""
        return {}

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


def make_sampler(cfg: CurriculumConfig) -> Sampler:
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {cfg.sampler!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[cfg.sampler](cfg)
