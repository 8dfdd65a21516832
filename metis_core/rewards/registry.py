"""The reward registry and the one place that decides what a failing scorer means."""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """What a scorer returns for a completion it could not score (reward 0, `reason` stored)."""

    reason: str


RewardFn = Callable[..., list[float | None | Failure]]
REWARDS: dict[str, RewardFn] = {}
TIMEOUTS: dict[str, float] = {}
DEFAULT_TIMEOUT_S = 600.0
"""Longest one call of a scorer (a group of completions) may take before its rewards are 0."""


def register_reward(
    name: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        TIMEOUTS[name] = timeout_s
        return fn

    return deco


def unregister_reward(name: str) -> None:
    """Forget a reward function (for tests that register their own)."""
    REWARDS.pop(name, None)
    TIMEOUTS.pop(name, None)


def _call_with_timeout(fn: RewardFn, timeout_s: float, *args: Any, **kwargs: Any) -> Any:
    """fn(...) in a daemon thread; TimeoutError past `timeout_s` (the thread is abandoned: a
    Python thread cannot be killed, so scorers that can hang on a completion bound it themselves,
    as the math scorers do, in a child process)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as err:  # handed to the caller
            error.append(err)

    thread = threading.Thread(target=run, name="metis-reward", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"timed out after {timeout_s:g} s")
    if error:
        raise error[0]
    return result[0]


def _checked(reward: str, value: Any) -> tuple[float, str | None]:
    """One scorer output as (reward in [0, 1], failure reason or None)."""
    if isinstance(value, Failure):
        return 0.0, f"{reward}: {value.reason}"
    if value is None:
        return 0.0, f"{reward}: not applicable"
    if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        return 0.0, f"{reward} returned {value!r:.80}, not a finite number"
    return min(max(float(value), 0.0), 1.0), None


def score_completions(
    reward: str, completions: Sequence[str], row: dict[str, Any], mode: str = "discrete"
) -> tuple[list[float], list[str | None]]:
    """Scores in [0, 1] and a failure reason per completion. `mode` is `discrete` or
    `continuous` (partial credit, for the scorers that have it).

    Never raises for a scorer's fault, and never returns NaN: a scorer that raises, hangs past its
    time limit or returns the wrong number of scores gives every completion reward 0 with the
    reason; a completion scored None (not applicable), a `Failure`, NaN, infinity or a non-number
    gets 0 with a reason. Only an unknown reward name raises (KeyError, naming the known ones).
    """
    if reward not in REWARDS:
        raise KeyError(f"no reward function named {reward!r}; registered: {sorted(REWARDS)}")
    n = len(completions)
    try:
        raw = _call_with_timeout(
            REWARDS[reward], TIMEOUTS[reward], list(completions), **{**row, "mode": mode}
        )
    except TimeoutError as err:
        reason = f"{reward}: {err}"
    except Exception as err:  # the product decides: reward 0, logged reason
        reason = f"{reward} raised {type(err).__name__}: {err}"
    else:
        if isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) == n:
            checked = [_checked(reward, value) for value in raw]
            failed = [
                why for (_, why), v in zip(checked, raw, strict=True) if why and v is not None
            ]
            if failed:
                log.warning(
                    "reward failed for %d of %d completions of prompt %s: %s",
                    len(failed),
                    n,
                    row.get("prompt_id"),
                    failed[0],
                )
            return [score for score, _ in checked], [why for _, why in checked]
        got = f"{len(raw)} scores" if isinstance(raw, Sequence) else f"{type(raw).__name__}"
        reason = f"{reward} returned {got} for {n} completions"
    log.warning("reward failed for prompt %s: %s", row.get("prompt_id"), reason)
    return [0.0] * n, [reason] * n
