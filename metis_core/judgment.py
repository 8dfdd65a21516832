"""Self-judgment: the prompt that asks the policy for v_hat, and the parser of its answer.

The judgment prompt = instruction + calibration memory (K recent training outcomes as
(problem, realised variance) examples) + the candidate problem. The policy answers with a short
text ending in `\\boxed{v_hat}`; `parse_judgment` extracts and clamps it to [0, 0.25].
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from metis_core.algorithms import MAX_VARIANCE

# What constrained decoding forces the judgment to be (vLLM structured outputs, regex): exactly
# 0.00-0.25. A looser 0.[0-2][0-9] let 0.26-0.29 clamp to 0.25 and piled probability on the ceiling.
JUDGMENT_PREFIX = "\\boxed{0."
JUDGMENT_REGEX = r"\\boxed\{0\.(?:[01][0-9]|2[0-5])\}"
JUDGMENT_DIGITS_REGEX = r"(?:[01][0-9]|2[0-5])\}"
"""The part of a constrained judgment that is decoded: the judgment prompt ends with
JUDGMENT_PREFIX, whose tokens the constraint would force one by one (probability 1: decode steps
that carry no gradient), so only the two digits and the closing brace are generated."""

INSTRUCTION = (
    "Before you solve a problem, predict how much your reward on it would vary if you answered it "
    "many times. Reward is 1 for a correct answer and 0 for a wrong one, with partial credit in "
    "between for code and function calls. The spread is the variance of your reward: 0.00 if you "
    "always get the same reward, up to 0.25 if you are right half the time. Reply with the "
    "spread only, as \\boxed{0.dd}."
)

_BOXED = re.compile(r"\\boxed\{\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\}")


@dataclass(frozen=True)
class CalibrationExample:
    """One in-context example: a recent training prompt and the variance its rollouts realised."""

    prompt: str
    variance: float


@dataclass(frozen=True)
class ParsedJudgment:
    v_hat: float | None
    """The prediction clamped to [0, 0.25], or None when nothing parsed."""

    @property
    def parsed(self) -> bool:
        return self.v_hat is not None


def parse_judgment(text: str) -> ParsedJudgment:
    """The last `\\boxed{number}` in `text`, clamped to [0, 0.25]; anything else is a failure."""
    matches = _BOXED.findall(text or "")
    if not matches:
        return ParsedJudgment(None)
    value = float(matches[-1])
    if not math.isfinite(value):
        return ParsedJudgment(None)
    return ParsedJudgment(min(max(value, 0.0), MAX_VARIANCE))


def format_variance(v: float) -> str:
    return f"\\boxed{{{min(max(v, 0.0), MAX_VARIANCE):.2f}}}"


def calibration_memory(recent: Sequence[CalibrationExample], k: int) -> list[CalibrationExample]:
    """Pick K examples from recent outcomes (newest first) that cover their range of variance.

    Sort the window by variance and take K evenly spaced ranks, so the model sees both ends of
    the scale rather than three zeros; among equal variances the newest wins (stable sort).
    """
    if k <= 0 or not recent:
        return []
    if len(recent) <= k:
        return list(recent)
    ranked = sorted(recent, key=lambda e: e.variance)
    if k == 1:
        return [ranked[len(ranked) // 2]]
    picks = [round(i * (len(ranked) - 1) / (k - 1)) for i in range(k)]
    return [ranked[i] for i in picks]


def judgment_messages(
    candidate: str,
    memory: Sequence[CalibrationExample],
    truncate: Callable[[str, int], str],
    example_max_tokens: int,
    candidate_max_tokens: int,
) -> list[dict[str, str]]:
    """Chat messages asking for v_hat of `candidate`. `truncate(text, n)` cuts to n tokens."""
    parts = [INSTRUCTION]
    for example in memory:
        parts.append(
            f"Problem: {truncate(example.prompt, example_max_tokens)}\nSpread: {format_variance(example.variance)}"
        )
    parts.append(f"Problem: {truncate(candidate, candidate_max_tokens)}\nSpread:")
    return [{"role": "user", "content": "\n\n".join(parts)}]


# The allowed answers 0.00-0.25 as (tenths digit, hundredths digits it allows), in JUDGMENT_REGEX's
# order; every answer starts with this prefix (JUDGMENT_PREFIX, defined above).
ALLOWED_DIGITS: dict[int, range] = {0: range(10), 1: range(10), 2: range(6)}


def _normalised(logprobs: dict[int, float], allowed: Iterable[int]) -> dict[int, float]:
    """Probabilities over the allowed digits (what the constraint's mask leaves), renormalised."""
    finite = {d: logprobs[d] for d in allowed if d in logprobs and math.isfinite(logprobs[d])}
    if not finite:
        raise ValueError(f"no log-prob for any allowed digit {list(allowed)}")
    top = max(finite.values())
    weights = {d: math.exp(lp - top) for d, lp in finite.items()}
    total = sum(weights.values())
    return {d: w / total for d, w in weights.items()}


def expected_judgment(tenths: dict[int, float], hundredths: dict[int, dict[int, float]]) -> float:
    """E[v_hat] under the judge's own distribution over the 26 allowed answers.

    `tenths`: log-prob of each tenths digit after `\\boxed{0.`; `hundredths[d]`: log-prob of each
    hundredths digit after `\\boxed{0.d`. Each is renormalised over the digits the constraint
    allows there (a missing digit counts as probability 0), as the masked sampler would see them.
    """
    expected = 0.0
    for d1, p1 in _normalised(tenths, ALLOWED_DIGITS).items():
        for d2, p2 in _normalised(hundredths[d1], ALLOWED_DIGITS[d1]).items():
            expected += p1 * p2 * (10 * d1 + d2) / 100
    return expected
