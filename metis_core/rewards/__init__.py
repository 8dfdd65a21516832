"""Reward functions: `fn(completions, mode=..., **row_fields) -> list[float | None | Failure]`,
by name.

Importing this package registers every scorer: math (here), code tests and BFCL calls (their
domain modules, metis_core/domains/).
"""

from metis_core.domains import code as _code  # noqa: F401, E402  (registers code_tests)
from metis_core.domains import function_calling as _fc  # noqa: F401, E402  (registers bfcl_ast)
from metis_core.rewards import arithmetic as _arithmetic  # noqa: F401  (registers)
from metis_core.rewards.registry import REWARDS, Failure, register_reward, score_completions

__all__ = ["REWARDS", "Failure", "register_reward", "score_completions"]
