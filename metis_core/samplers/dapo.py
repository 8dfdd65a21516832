"""DAPO's dynamic sampling: over-sample, drop the groups whose rewards do not vary, refill.

The sampler only orders the candidates (at random); the rollout stage does the rest
(metis_core/stages/outcomes.py::rollout): round after round it rolls out as many candidates, in
that order, as the batch still lacks, keeps the groups with varying rewards, and stops when the
batch is full, the candidates run out or `curriculum.dapo.max_rounds` are spent. Discarded
rollouts are charged like any others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metis_core.samplers.base import Candidate, Outcome, Sampler, register_sampler


@dataclass
class Refill:
    """What dynamic sampling kept and dropped over its rounds."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    discarded: list[dict[str, Any]] = field(default_factory=list)
    rounds: int = 0
    last_round: list[dict[str, Any]] = field(default_factory=list)

    @property
    def batch(self) -> list[dict[str, Any]]:
        """The groups to train on: the accepted ones, or, when none varied, the last round (its
        advantages are zero, so the step still runs and changes nothing through the task loss)."""
        return self.accepted or self.last_round

    @property
    def dropped(self) -> list[dict[str, Any]]:
        """Discarded groups that are not trained on."""
        return [g for g in self.discarded if not any(g is b for b in self.batch)]


def refill(
    queue: Sequence[str],
    budget: int,
    max_rounds: int,
    roll: Callable[[list[str]], list[dict[str, Any]]],
) -> Refill:
    """Roll out prompts from `queue` in order, each round as many as the batch still lacks, and
    keep the groups whose `rewards` vary; stop when `budget` groups are kept, the queue is empty,
    or `max_rounds` rounds are spent. `roll(prompt_ids)` returns one scored group per prompt."""
    out = Refill()
    queue = list(queue)
    while len(out.accepted) < budget and queue and out.rounds < max_rounds:
        lacking = budget - len(out.accepted)
        take, queue = queue[:lacking], queue[lacking:]
        out.rounds += 1
        out.last_round = roll(take)
        for group in out.last_round:
            varies = not Outcome(group["prompt_id"], group["rewards"]).zero_variance
            (out.accepted if varies else out.discarded).append(group)
    return out


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
