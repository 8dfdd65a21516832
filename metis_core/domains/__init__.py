"""Task domains: where prompts come from and how completions are checked.

Every loader returns pool rows: dicts of strings with the keys
    prompt      the user message the policy sees
    answer      the reference the verifier needs (a number, or JSON: tests, ground-truth calls)
    task        a fine-grained label (reasoning-gym dataset, `code_procedural`, `bfcl_live_simple`, ...)
    difficulty  a label metrics can be split by
    metadata    JSON with whatever else the verifier or the prompt needs; the optional key
                `prefill` is text the assistant turn starts with (it overrides the domain's)
    domain      `math`, `code` or `function_calling`
    reward      the registered reward function that scores this row (metis_core/rewards)
`metis_core.data.pool` adds prompt_id and split. Reward functions are called as
`fn(completions, mode=..., **row)` with mode `discrete` (right/wrong) or `continuous` (partial
credit) and return one score in [0, 1] (or None: not applicable, or `Failure(reason)`: could not
score it) per completion; metis_core/rewards/registry.py turns every failure into reward 0.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metis_core.config import RunConfig

DOMAINS = ("math", "code", "function_calling")


def task_chat(cfg: RunConfig, row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """The chat messages of a row's task prompt and the text the assistant turn starts with.

    `cfg` is the RunConfig; the system prompt and prefill come from the row's domain settings, a
    row's own `metadata.prefill` (a code header) wins over the domain's prefill.
    """
    domain = cfg.domain(row.get("domain") or "math")
    meta = json.loads(row.get("metadata") or "{}")
    messages = [
        {"role": "system", "content": domain.system_prompt},
        {"role": "user", "content": row["prompt"]},
    ]
    return messages, meta.get("prefill", domain.assistant_prefill)


def reward_mode(cfg: RunConfig, row: dict[str, Any]) -> str:
    """`discrete` or `continuous` for this row (math answers are right or wrong)."""
    domain = row.get("domain") or "math"
    return "discrete" if domain == "math" else cfg.domain(domain).reward_mode


def decoding_regex(cfg: RunConfig, row: dict[str, Any]) -> str | None:
    """The regex a row's completions are constrained to, or None (see DomainConfig.constrained)."""
    domain = row.get("domain") or "math"
    if domain != "function_calling" or not cfg.domain(domain).constrained:
        return None
    from metis_core.domains.function_calling import call_regex

    return call_regex(json.loads(row["metadata"])["functions"])
