"""Rewards for math answers: reasoning-gym's own scorers, math-verify for free-form files.

The embedded model ignores answer-format instructions, so the answer is read leniently: the first
line of the completion, and failing that the first number in it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from metis_core.rewards.registry import register_reward

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def candidate_answers(completion: str) -> list[str]:
    """Readings of a completion to try, most literal first."""
    first_line = completion.strip().split("\n", 1)[0].strip().rstrip(".")
    readings = [first_line] if first_line else []
    number = _NUMBER.search(completion)
    if number and number.group(0) != first_line:
        readings.append(number.group(0))
    return readings


@register_reward("reasoning_gym")
def reasoning_gym_reward(
    completions: list[str], *, answer: str, task: str, metadata: str = "{}", **_: Any
) -> list[float | None]:
    import reasoning_gym

    scorer = reasoning_gym.get_score_answer_fn(task)
    entry = {"answer": answer, "metadata": json.loads(metadata)}
    return [
        max((float(scorer(a, entry)) for a in candidate_answers(c)), default=0.0)
        for c in completions
    ]


@register_reward("math_verify")
def math_verify_reward(completions: list[str], *, answer: str, **_: Any) -> list[float | None]:
    from math_verify import parse, verify

    # Timeouts off: they use signals and raise outside the main thread (Prefect runs tasks in threads).
    gold = parse(answer, parsing_timeout=None)
    scores: list[float | None] = []
    for c in completions:
        ok = any(
            verify(gold, parse(a, parsing_timeout=None), timeout_seconds=None)
            for a in candidate_answers(c)
        )
        scores.append(1.0 if ok else 0.0)
    return scores


def reward_for_task(task: str) -> str:
    """reasoning-gym tasks use their own scorer; anything else is checked with math-verify."""
    import reasoning_gym

    return "reasoning_gym" if task in reasoning_gym.factory.DATASETS else "math_verify"
