"""Generating and scoring completions for pool rows of any domain (rollout and evaluation share it;
`sample_and_score` is the one evaluation path of training and `metis eval`).

Each domain decodes with its own limits (a function body needs more tokens than an arithmetic
answer, and different stop strings), so rows are generated in one engine call per domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metis_core.config import RunConfig
from metis_core.domains import decoding_regex, reward_mode
from metis_core.ports import Completion, Engine
from metis_core.rewards import score_completions
from metis_core.run import derive_seed


def generate_for_rows(
    engine: Engine,
    cfg: RunConfig,
    rows: Sequence[dict[str, Any]],
    prompts: Sequence[Sequence[int]],
    *,
    n: int,
    temperature: float,
    top_p: float = 1.0,
    logprobs: bool = True,
    seed: int,
) -> list[list[Completion]]:
    """n completions per row (`prompts` are the rows' token ids), in row order, each decoded with
    its domain's limits; `seed` fixes the samples (each domain's call derives its own from it)."""
    by_domain: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_domain.setdefault(row.get("domain") or "math", []).append(i)
    out: list[list[Completion]] = [[] for _ in rows]
    for domain, indices in by_domain.items():
        limits = cfg.domain(domain)
        groups = engine.generate(
            [prompts[i] for i in indices],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=limits.max_tokens,
            stop=limits.stop,
            logprobs=logprobs,
            regex=[decoding_regex(cfg, rows[i]) for i in indices] if limits.constrained else None,
            seed=derive_seed(seed, domain),
        )
        for i, group in zip(indices, groups, strict=True):
            out[i] = group
    return out


def score_row(
    cfg: RunConfig, row: dict[str, Any], completions: Sequence[str]
) -> tuple[list[float], list[str | None]]:
    """Rewards in [0, 1] and failure reasons, from the row's scorer in its domain's reward mode."""
    return score_completions(row["reward"], completions, row, reward_mode(cfg, row))


def sample_and_score(
    engine: Engine,
    cfg: RunConfig,
    rows: Sequence[dict[str, Any]],
    prompts: Sequence[Sequence[int]],
    *,
    k: int,
    temperature: float,
    seed: int,
) -> list[dict[str, Any]]:
    """k completions per row, scored: one result per row (prompt_id, task, domain, difficulty,
    scores, completions, reasons), what `metis_core.metrics.accuracy_metrics` reads."""
    groups = generate_for_rows(
        engine, cfg, rows, prompts, n=k, temperature=temperature, logprobs=False, seed=seed
    )
    results = []
    for row, group in zip(rows, groups, strict=True):
        texts = [c.text for c in group]
        scores, reasons = score_row(cfg, row, texts)
        results.append(
            {
                "prompt_id": row["prompt_id"],
                "task": row["task"],
                "domain": row.get("domain") or "math",
                "difficulty": row.get("difficulty", "default"),
                "scores": scores,
                "completions": texts,
                "reasons": reasons,
            }
        )
    return results
