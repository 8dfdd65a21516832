"""Run metrics (METIS.md section 8) computed from plain lists: pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks), as in Spearman's rho."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho; NaN when either side is constant or there are fewer than 2 points."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


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
