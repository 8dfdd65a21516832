"""Rewards for math answers: reasoning-gym's own scorers, math-verify for free-form files.

The embedded model ignores answer-format instructions, so the answer is read leniently: the first
line of the completion, and failing that the first number in it.

Both scorers parse answers with sympy, which a completion like `\\boxed{9^{9^{9^{9}}}}` sends
into a computation that never ends; so each completion is scored in a child process
(metis_core/rewards/worker.py) that is killed past `SCORE_TIMEOUT_S`: that completion gets
reward 0 with the reason `timed out`, and the run goes on.
"""

from __future__ import annotations

import json
import re
from functools import cache, lru_cache
from typing import Any

from metis_core.rewards.registry import Failure
from metis_core.rewards.worker import ScoringFailed, ScoringTimeout, ScoringWorker

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
SCORE_TIMEOUT_S = 5.0
"""Longest time one completion may take to score (math-verify's own default limit)."""


def candidate_answers(completion: str) -> list[str]:
    """Readings of a completion to try, most literal first."""
    first_line = completion.strip().split("\n", 1)[0].strip().rstrip(".")
    readings = [first_line] if first_line else []
    number = _NUMBER.search(completion)
    if number and number.group(0) != first_line:
        readings.append(number.group(0))
    return readings


@cache
def _worker(reward: str) -> ScoringWorker:
    """One scoring process per math scorer, started on first use."""
    preload = {"reasoning_gym": "reasoning_gym", "math_verify": "math_verify"}[reward]
    return ScoringWorker(SCORE_TIMEOUT_S, preload=(preload, __name__))


def _bounded(reward: str, function: str, *args: Any) -> float | Failure:
    worker = _worker(reward)
    worker.timeout_s = SCORE_TIMEOUT_S
    try:
        return float(worker.call(f"{__name__}:{function}", *args))
    except ScoringTimeout as err:
        return Failure(f"{err} (a pathological answer?)")
    except ScoringFailed as err:
        return Failure(str(err))


# --- run inside the scoring process ---------------------------------------------------------


@lru_cache(maxsize=4096)
def _rg_entry(task: str, answer: str, metadata: str) -> tuple[Any, dict[str, Any]]:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task), {
        "answer": answer,
        "metadata": json.loads(metadata),
    }


def score_reasoning_gym(task: str, answer: str, metadata: str, completion: str) -> float:
    scorer, entry = _rg_entry(task, answer, metadata)
    return max((float(scorer(a, entry)) for a in candidate_answers(completion)), default=0.0)


@lru_cache(maxsize=4096)
def _gold(answer: str) -> Any:
    from math_verify import parse

    return parse(answer, parsing_timeout=None)  # the parent's time limit bounds it


def score_math_verify(answer: str, completion: str) -> float:
    from math_verify import parse, verify

    gold = _gold(answer)
    readings = candidate_answers(completion)
    ok = any(verify(gold, parse(a, parsing_timeout=None), timeout_seconds=None) for a in readings)
    return 1.0 if ok else 0.0


# --- the reward functions (metis_core/domains/math.py registers them) -----------------------


def reasoning_gym_reward(
    completions: list[str], *, answer: str, task: str, metadata: str = "{}", **_: Any
) -> list[float | None | Failure]:
    meta = metadata or "{}"
    return [
        _bounded("reasoning_gym", "score_reasoning_gym", task, answer, meta, c) for c in completions
    ]


def math_verify_reward(
    completions: list[str], *, answer: str, **_: Any
) -> list[float | None | Failure]:
    return [_bounded("math_verify", "score_math_verify", answer, c) for c in completions]


def reward_for_task(task: str) -> str:
    """reasoning-gym tasks use their own scorer; anything else is checked with math-verify."""
    import reasoning_gym

    return "reasoning_gym" if task in reasoning_gym.factory.DATASETS else "math_verify"
