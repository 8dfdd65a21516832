"""A toy domain registered from the test suite (docs/domains.md, "Adding a domain"): reverse a
word. A config loads it with `data.domain_modules: [tests.toy_domain]`."""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from metis_core.domains import Benchmark, DomainConfig, DomainSpec, TaskSource, register_domain

if TYPE_CHECKING:
    from metis_core.config import TaskSpec


class ReverseSettings(DomainConfig):
    system_prompt: str = "Reverse the word. Reply with the reversed word only."
    """System message of reverse-word prompts."""
    max_tokens: int = Field(8, gt=0)
    """Longest answer, in tokens."""
    stop: list[str] = ["\n"]
    """The answer is one line."""
    reward_mode: Literal["discrete", "continuous"] = "continuous"
    """Continuous: the share of letters in the right place; discrete: all of them."""


def reverse_rows(size: int, seed: int, length: int = 4) -> list[dict[str, str]]:
    rng = random.Random(f"reverse:{seed}:{length}")
    words = ["".join(rng.choice("abcdefgh") for _ in range(length)) for _ in range(size)]
    return [
        {
            "prompt": f"Reverse: {w}",
            "answer": w[::-1],
            "task": "reverse_words",
            "difficulty": f"len{length}",
            "metadata": json.dumps({}),
            "domain": "reverse",
            "reward": "reversed_letters",
        }
        for w in words
    ]


def _check(entry: TaskSpec) -> None:
    if set(entry.params) - {"length"}:
        raise ValueError(f"source 'reverse_words' knows only `length`, got {sorted(entry.params)}")


def reversed_letters(completions: list[str], *, answer: str, mode: str, **_: Any) -> list[float]:
    def score(text: str) -> float:
        got = text.strip()
        if mode == "discrete":
            return float(got == answer)
        return sum(a == b for a, b in zip(got, answer, strict=False)) / len(answer)

    return [score(c) for c in completions]


SPEC = register_domain(
    DomainSpec(
        name="reverse",
        settings=ReverseSettings,
        description="Reverse a word (a toy domain the tests register).",
        sources=(
            TaskSource(
                "reverse_words",
                lambda entry, seed: reverse_rows(entry.size or 0, seed, **entry.params),
                check=_check,
                generates=True,
            ),
        ),
        rewards={"reversed_letters": reversed_letters},
        benchmarks=(
            Benchmark("reverse", lambda _, limit, seed: reverse_rows(limit or 16, seed), "reverse"),
        ),
        default_benchmarks=("reverse",),
    )
)
