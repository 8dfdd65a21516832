"""Retrieved calibration memory: the past outcomes most like the candidate being judged.

The paper's memory shows the judge K recent outcomes, whatever they were about; a 135M judge
cannot map those to a new prompt. The retrieved memory instead shows, for each candidate, the
outcomes that say most about it, in this order of preference:

1. the candidate's own past outcomes (newest first): the best predictor of its variance;
2. outcomes of the same task and difficulty, then of the same task, then of the same domain;
3. within each of those, the most similar text (word-set Jaccard), then the newest.

Only outcomes the run trained on are candidates for retrieval (the outcome history holds nothing
else: held-out and audit rollouts never reach it), and callers pass only training prompts.
Examples are shown most relevant last, next to the candidate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from metis_core.judgment import CalibrationExample

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class PastOutcome:
    """One trained prompt at one step: what the history knows about it."""

    prompt_id: str
    prompt: str
    task: str | None
    difficulty: str | None
    domain: str | None
    step: int
    variance: float


@lru_cache(maxsize=8192)  # every candidate of a step is compared with the same past prompts
def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def retrieve(candidate: dict, past: Sequence[PastOutcome], k: int) -> list[CalibrationExample]:
    """The K past outcomes most informative about `candidate` (a pool row with prompt_id, prompt,
    task, difficulty, domain), ordered least to most relevant."""
    if k <= 0 or not past:
        return []
    text = words(candidate["prompt"])

    def relevance(o: PastOutcome) -> tuple:
        same_task = o.task is not None and o.task == candidate.get("task")
        return (
            o.prompt_id == candidate["prompt_id"],
            same_task and o.difficulty == candidate.get("difficulty"),
            same_task,
            o.domain == candidate.get("domain"),
            jaccard(words(o.prompt), text),
            o.step,
        )

    best = sorted(past, key=relevance, reverse=True)[:k]
    return [CalibrationExample(o.prompt, o.variance) for o in reversed(best)]
