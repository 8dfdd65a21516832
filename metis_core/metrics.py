"""Run metrics (docs/metis.md) computed from plain lists: pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy.stats import spearmanr

from metis_core.algorithms import is_zero_variance, pass_at_k


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho (scipy; ties share their mean rank); NaN when either side is constant or
    there are fewer than 2 points."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(spearmanr(x, y).statistic)


def judge_quality(
    v_hat: Sequence[float], v: Sequence[float], parsed: Sequence[bool]
) -> dict[str, float]:
    """Spearman, MAE, mean prediction vs mean realised variance over parsed judgments, and the
    parse-failure rate over all of them."""
    ok = [i for i, p in enumerate(parsed) if p]
    vh, vv = [v_hat[i] for i in ok], [v[i] for i in ok]
    return {
        "judge/spearman": spearman(vh, vv),
        "judge/mae": float(np.mean(np.abs(np.subtract(vh, vv)))) if ok else math.nan,
        "judge/mean_v_hat": float(np.mean(vh)) if ok else math.nan,
        "judge/mean_v": float(np.mean(vv)) if ok else math.nan,
        "judge/parse_failure_rate": 1.0 - len(ok) / len(parsed) if parsed else math.nan,
    }


def audit_metrics(
    scores: Sequence[float],
    v_hat: Sequence[float | None],
    v: Sequence[float],
    top: Sequence[int],
) -> dict[str, float]:
    """Judge quality over an audit set: candidates drawn at random, each scored by the sampler and
    rolled out, so no selection biases the sample. Keys without prefix:

    spearman: rho(scores, v) over the whole set (NaN when either side is constant);
    top_b_lift: mean v of the sampler's top picks (`top`, indices) / mean v of the set (NaN when
      the set's mean v is 0); 1 is chance;
    top_b_nonzero_share, nonzero_share: share of non-zero-variance prompts among the top picks and
      in the whole set;
    mae, bias: mean |v_hat - v| and mean (v_hat - v) over parsed judgments (NaN without any);
    parse_failure_rate: share of judgments that did not parse (NaN when nothing was judged);
    mean_v, mean_v_hat: the set's mean realised variance and mean prediction.
    """
    v_all = np.asarray(v, dtype=float)
    chosen = v_all[list(top)]
    mean_v = float(v_all.mean())
    parsed = [i for i, x in enumerate(v_hat) if x is not None]
    errors = np.asarray([v_hat[i] - v[i] for i in parsed], dtype=float)  # type: ignore[operator]
    nonzero = np.asarray([not is_zero_variance(x) for x in v_all])
    return {
        "spearman": spearman(scores, v),
        "top_b_lift": float(chosen.mean()) / mean_v if mean_v > 0 else math.nan,
        "top_b_nonzero_share": float(nonzero[list(top)].mean()),
        "nonzero_share": float(nonzero.mean()),
        "mae": float(np.abs(errors).mean()) if parsed else math.nan,
        "bias": float(errors.mean()) if parsed else math.nan,
        "parse_failure_rate": 1.0 - len(parsed) / len(v_hat) if v_hat else math.nan,
        "mean_v": mean_v,
        "mean_v_hat": float(np.mean([v_hat[i] for i in parsed])) if parsed else math.nan,
    }


def grouped_audit_metrics(
    scores: Sequence[float],
    v_hat: Sequence[float | None],
    v: Sequence[float],
    budget: int,
    groups: Sequence[str],
    top: Callable[[Sequence[float], int], list[int]],
) -> dict[str, dict[str, float]]:
    """audit_metrics within each group (domain or task), by group name. Within a group the top
    picks are its share of the budget, max(1, round(budget * size / total)), taken by
    `top(scores, k)` among the group's own candidates."""
    out = {}
    for name in sorted(set(groups)):
        idx = [i for i, g in enumerate(groups) if g == name]
        k = max(1, round(budget * len(idx) / len(groups)))
        sub_scores = [scores[i] for i in idx]
        out[name] = audit_metrics(
            sub_scores, [v_hat[i] for i in idx], [v[i] for i in idx], top(sub_scores, k)
        )
    return out


def spread_over_domains(rows: list[dict], limit: int) -> list[dict]:
    """Up to `limit` rows, taken round-robin across domains so each gets its share."""
    by_domain: dict[str, list[dict]] = {}
    for row in rows:
        by_domain.setdefault(row.get("domain") or "math", []).append(row)
    queues = [iter(by_domain[d]) for d in sorted(by_domain)]
    picked: list[dict] = []
    while queues and len(picked) < limit:
        for q in list(queues):
            row = next(q, None)
            if row is None:
                queues.remove(q)
            elif len(picked) < limit:
                picked.append(row)
    return picked


def accuracy_metrics(results: list[dict], k: int, prefix: str) -> dict[str, float]:
    """avg@k, pass@1 and pass@k over `results` (each with `scores`, `domain`, `task`), overall,
    per domain and per task. A sample counts as correct for pass@ when its reward is 1."""

    def block(name: str, subset: list[dict]) -> dict[str, float]:
        correct = [sum(s >= 1.0 for s in r["scores"]) for r in subset]
        return {
            f"{name}/avg_at_{k}": _mean(sum(r["scores"]) / len(r["scores"]) for r in subset),
            f"{name}/pass_at_1": _mean(pass_at_k(k, c, 1) for c in correct),
            f"{name}/pass_at_{k}": _mean(pass_at_k(k, c, k) for c in correct),
        }

    metrics = block(prefix, results)
    for key in ("domain", "task"):
        for value in sorted({r[key] for r in results}):
            metrics |= block(f"{prefix}/{value}", [r for r in results if r[key] == value])
    return metrics


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan
