"""Reward functions: `fn(completions, **row_fields) -> list[float | None]`, registered by name."""

from metis_core.rewards import arithmetic as _arithmetic  # noqa: F401  (registers)
from metis_core.rewards.registry import REWARDS, register_reward, score_completions

__all__ = ["REWARDS", "register_reward", "score_completions"]
