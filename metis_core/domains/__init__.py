"""Task domains: where prompts come from and how completions are checked.

Every loader returns pool rows: dicts of strings with the keys
    prompt      the user message the policy sees
    answer      the reference the verifier needs (a number, or JSON: tests, ground-truth calls)
    task        a fine-grained label (reasoning-gym dataset, `code_procedural`, `bfcl_live_simple`, ...)
    difficulty  a label metrics can be split by
    metadata    JSON with whatever else the verifier or the prompt needs; the optional key
                `prefill` is text the assistant turn starts with (it overrides the domain's)
    domain      the registered domain the row belongs to (`math`, `code`, `function_calling`, ...)
    reward      the registered reward function that scores this row (its domain declares it)
`metis_core.data.pool` adds prompt_id and split. Reward functions are called as
`fn(completions, mode=..., **row)` with mode `discrete` (right/wrong) or `continuous` (partial
credit) and return one score in [0, 1] (or None: not applicable, or `Failure(reason)`: could not
score it) per completion; metis_core/rewards/registry.py turns every failure into reward 0.

A domain is one module declaring a `DomainSpec` (metis_core/domains/spec.py); importing this
package registers the built-in ones (every module in it: code, function_calling, math), and a
config's `data.domain_modules` imports others.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from typing import TYPE_CHECKING, Any

from metis_core.domains.spec import (
    Benchmark,
    DomainConfig,
    DomainSpec,
    TaskSource,
    benchmark,
    benchmark_help,
    domain_spec,
    domains,
    register_domain,
    registered,
    task_source,
    unregister_domain,
)

if TYPE_CHECKING:
    from metis_core.config import RunConfig


def _register_built_ins() -> None:
    """Import every module of this package: a domain module registers its spec on import, so a
    new domain is one new file here (others come from `data.domain_modules`)."""
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")


_register_built_ins()

__all__ = ["Benchmark", "DomainConfig", "DomainSpec", "TaskSource", "benchmark", "benchmark_help"]
__all__ += ["decoding_regex", "domain_spec", "domains", "register_domain", "registered"]
__all__ += ["reward_mode", "task_chat", "task_source", "unregister_domain"]


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
    name = row.get("domain") or "math"
    return "discrete" if domain_spec(name).discrete_only else cfg.domain(name).reward_mode


def decoding_regex(cfg: RunConfig, row: dict[str, Any]) -> str | None:
    """The regex a row's completions are constrained to, or None (see DomainConfig.constrained)."""
    name = row.get("domain") or "math"
    regex = domain_spec(name).answer_regex
    return regex(row) if regex is not None and cfg.domain(name).constrained else None
