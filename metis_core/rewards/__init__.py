"""Reward functions: `fn(completions, mode=..., **row_fields) -> list[float | None | Failure]`,
by name.

Each domain declares its reward functions in its spec (metis_core/domains/); they are registered
here when the domain is (importing `metis_core.domains` registers the built-in ones).
"""

from metis_core.rewards.registry import REWARDS, Failure, register_reward, score_completions

__all__ = ["REWARDS", "Failure", "register_reward", "score_completions"]
