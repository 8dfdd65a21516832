"""The reward registry and the one place that decides what a failing scorer means."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float | None]]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return deco


def score_completions(
    reward: str, completions: Sequence[str], row: dict[str, Any], mode: str = "discrete"
) -> tuple[list[float], list[str | None]]:
    """Scores in [0, 1] and a failure reason per completion. `mode` is `discrete` or
    `continuous` (partial credit, for the scorers that have it).

    A scorer that raises gives every completion reward 0 and the exception as the reason: the run
    goes on. `None` (not applicable) also counts as 0, with a reason.
    """
    if reward not in REWARDS:
        raise KeyError(f"no reward function named {reward!r}; registered: {sorted(REWARDS)}")
    try:
        raw = REWARDS[reward](list(completions), **{**row, "mode": mode})
    except Exception as err:  # the product decides: reward 0, logged reason
        reason = f"{reward} raised {type(err).__name__}: {err}"
        log.warning("reward failed for prompt %s: %s", row.get("prompt_id"), reason)
        return [0.0] * len(completions), [reason] * len(completions)
    scores, reasons = [], []
    for value in raw:
        if value is None:
            scores.append(0.0)
            reasons.append(f"{reward}: not applicable")
        else:
            scores.append(min(max(float(value), 0.0), 1.0))
            reasons.append(None)
    return scores, reasons
