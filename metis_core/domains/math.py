"""The math domain: reasoning-gym's generators (arithmetic, gcd, ...) with their own scorers.

A `data.file` pool (any file with `prompt` and `answer` columns) is math too; its rows are scored
by math-verify (metis_core/data/pool.py reads it). The scorers are metis_core/rewards/arithmetic.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from pydantic import Field

from metis_core.config_checks import unknown_name
from metis_core.domains.spec import DomainConfig, DomainSpec, TaskSource, register_domain
from metis_core.rewards.arithmetic import math_verify_reward, reasoning_gym_reward, reward_for_task

if TYPE_CHECKING:
    from metis_core.config import TaskSpec


class MathDomain(DomainConfig):
    system_prompt: str = "Solve the problem. Reply with the final answer only."
    """System message of math prompts."""
    assistant_prefill: str = "The answer is "
    """Makes a short answer format easy to learn for a small model."""
    max_tokens: int = Field(24, gt=0)
    """Longest math completion, in tokens."""
    stop: list[str] = ["\n"]
    """The answer is one line."""


def _check_dataset(entry: TaskSpec) -> None:
    """The dataset exists, the knobs are its own, and its config accepts their values."""
    from reasoning_gym.factory import DATASETS

    if entry.name not in DATASETS:
        raise ValueError(unknown_name("reasoning-gym dataset", entry.name, DATASETS))
    config_cls = DATASETS[entry.name][1]
    knobs = {f.name for f in dataclasses.fields(config_cls)} - {"seed", "size"}
    if extra := set(entry.params) - knobs:
        raise ValueError(
            f"reasoning-gym dataset {entry.name!r} has no knob(s) {sorted(extra)}; "
            f"valid: {', '.join(sorted(knobs)) or 'none'}"
        )
    try:
        config = config_cls(size=entry.size, seed=0, **entry.params)
        if hasattr(config, "validate"):
            config.validate()
    except Exception as err:  # reasoning-gym validates with asserts and assorted errors
        raise ValueError(
            f"reasoning-gym dataset {entry.name!r} refuses params {entry.params}: "
            f"{err or type(err).__name__}"
        ) from None


def reasoning_gym_rows(entry: TaskSpec, seed: int) -> list[dict[str, str]]:
    """`entry.size` seeded problems of one reasoning-gym dataset."""
    import reasoning_gym

    generator = reasoning_gym.create_dataset(entry.name, size=entry.size, seed=seed, **entry.params)
    rows = []
    for problem in generator:
        meta = dict(problem.get("metadata", {}))
        meta.setdefault("source_dataset", entry.name)
        rows.append(
            {
                "prompt": problem["question"],
                "answer": str(problem["answer"]),
                "task": entry.name,
                "difficulty": "default",
                "metadata": json.dumps(meta, default=str),
                "domain": "math",
                "reward": reward_for_task(entry.name),
            }
        )
    return rows


SPEC = register_domain(
    DomainSpec(
        name="math",
        settings=MathDomain,
        description="Arithmetic and math word problems.",
        sources=(
            TaskSource(
                "reasoning_gym",
                reasoning_gym_rows,
                check=_check_dataset,
                generates=True,
                needs_name=True,
            ),
        ),
        rewards={"reasoning_gym": reasoning_gym_reward, "math_verify": math_verify_reward},
        discrete_only=True,
    )
)
