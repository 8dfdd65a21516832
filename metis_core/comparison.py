"""Comparing curricula: per-run curves of held-out accuracy against spend, and the table that
says which sampler reaches a target accuracy with the least generated tokens.

Pure: it reads nothing. `flows/compare.py` feeds it each run's step metrics from DuckDB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metis_core.samplers import SAMPLERS


class ComparisonError(ValueError):
    """A comparison that cannot start; the message says what to change."""


def check_plan(samplers: list[str], seeds: list[int], target: float | None) -> None:
    """Fails before any model loads: unknown samplers, no seeds, no way to set the target."""
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise ComparisonError(f"unknown sampler(s) {unknown}; choose from {sorted(SAMPLERS)}")
    if not samplers or len(set(samplers)) != len(samplers):
        raise ComparisonError(f"give each sampler once, at least one: {samplers}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ComparisonError(f"give each seed once, at least one: {seeds}")
    if target is None and "uniform" not in samplers:
        raise ComparisonError(
            "the default target is uniform's best held-out accuracy: add uniform to the samplers "
            "or give --target"
        )


@dataclass(frozen=True)
class RunCurve:
    """One run's evaluations (step -1 is the initial policy, at zero spend) and per-step shares."""

    sampler: str
    seed: int
    steps: list[int]
    accuracy: list[float]
    """Held-out avg@k at each evaluated step."""
    spent_tokens: list[float]
    """Cumulative generated tokens (rollouts, discarded rollouts, judgments) at those steps."""
    rollouts: list[float]
    seconds: list[float]
    """Cumulative seconds in training stages (evaluations excluded) at those steps."""
    zero_variance: list[float]
    """Zero-variance share of the trained groups, one per training step."""

    @classmethod
    def from_steps(
        cls, sampler: str, seed: int, metrics: Sequence[tuple[int, dict[str, float]]], k: int
    ) -> RunCurve:
        """From a run's steps table: (step, metrics) in step order."""
        acc = f"eval/avg_at_{k}"
        evaluated = [(s, m) for s, m in metrics if acc in m]
        return cls(
            sampler,
            seed,
            [s for s, _ in evaluated],
            [m[acc] for _, m in evaluated],
            [m.get("cost/spent_tokens", 0.0) for _, m in evaluated],
            [m.get("cost/rollouts", 0.0) for _, m in evaluated],
            [m.get("cost/train_seconds", 0.0) for _, m in evaluated],
            [m["train/zero_variance_fraction"] for s, m in metrics if s >= 0],
        )

    def first_reaching(self, target: float) -> int | None:
        """Index of the first evaluation at or above `target`, or None."""
        return next((i for i, a in enumerate(self.accuracy) if a >= target - 1e-12), None)


def default_target(curves: Sequence[RunCurve], reference: str = "uniform") -> float:
    """The best held-out accuracy `reference` reaches, mean over its seeds."""
    best = [max(c.accuracy) for c in curves if c.sampler == reference and c.accuracy]
    if not best:
        raise ValueError(f"no finished {reference!r} run to set the target accuracy; give one")
    return float(np.mean(best))


def bootstrap_interval(
    values: Sequence[float], rng: np.random.Generator, rounds: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds (NaN for fewer than 2 values)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    means = rng.choice(x, size=(rounds, len(x)), replace=True).mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def run_summary(curve: RunCurve, target: float) -> dict[str, float]:
    """One run's numbers: spend to reach `target` (NaN if it never did), best and final accuracy
    within its budget, mean zero-variance share."""
    hit = curve.first_reaching(target)
    nan = math.nan
    return {
        "tokens_to_target": curve.spent_tokens[hit] if hit is not None else nan,
        "rollouts_to_target": curve.rollouts[hit] if hit is not None else nan,
        "seconds_to_target": curve.seconds[hit] if hit is not None else nan,
        "best_accuracy": max(curve.accuracy) if curve.accuracy else nan,
        "final_accuracy": curve.accuracy[-1] if curve.accuracy else nan,
        "zero_variance_share": float(np.mean(curve.zero_variance)) if curve.zero_variance else nan,
        "spent_tokens": curve.spent_tokens[-1] if curve.spent_tokens else nan,
    }


def compare_table(
    curves: Sequence[RunCurve], target: float, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per sampler: the mean over seeds of each `run_summary` number with a bootstrap interval
    (`<name>_lo`, `<name>_hi`), the seeds run and how many reached the target. Means of the
    *_to_target numbers are over the seeds that reached it."""
    rng = np.random.default_rng(seed)
    table: dict[str, dict[str, float]] = {}
    for sampler in dict.fromkeys(c.sampler for c in curves):
        runs = [run_summary(c, target) for c in curves if c.sampler == sampler]
        row: dict[str, float] = {
            "seeds": float(len(runs)),
            "reached": float(sum(not math.isnan(r["tokens_to_target"]) for r in runs)),
        }
        for name in runs[0]:
            values = [r[name] for r in runs]
            kept = [v for v in values if not math.isnan(v)]
            row[name] = float(np.mean(kept)) if kept else math.nan
            row[f"{name}_lo"], row[f"{name}_hi"] = bootstrap_interval(values, rng)
        table[sampler] = row
    return table


def table_markdown(table: dict[str, dict[str, float]], target: float) -> str:
    """The comparison table as markdown: mean [95% bootstrap interval] over seeds."""

    def cell(row: dict[str, float], name: str, fmt: str) -> str:
        mean, lo, hi = row[name], row[f"{name}_lo"], row[f"{name}_hi"]
        if math.isnan(mean):
            return "not reached"
        interval = "" if math.isnan(lo) else f" [{lo:{fmt}}, {hi:{fmt}}]"
        return f"{mean:{fmt}}{interval}"

    lines = [
        f"Target held-out accuracy: {target:.3f}. Mean over seeds [95% bootstrap interval]; "
        "*_to_target means are over the seeds that reached it.",
        "",
        "| sampler | reached | tokens to target | rollouts to target | seconds to target "
        "| best acc | final acc | zero-var share | tokens spent |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sampler, row in table.items():
        lines.append(
            f"| {sampler} | {int(row['reached'])}/{int(row['seeds'])} "
            f"| {cell(row, 'tokens_to_target', ',.0f')} | {cell(row, 'rollouts_to_target', ',.0f')} "
            f"| {cell(row, 'seconds_to_target', ',.0f')} | {cell(row, 'best_accuracy', '.3f')} "
            f"| {cell(row, 'final_accuracy', '.3f')} | {cell(row, 'zero_variance_share', '.2f')} "
            f"| {cell(row, 'spent_tokens', ',.0f')} |"
        )
    return "\n".join(lines) + "\n"
