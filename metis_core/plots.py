"""End-of-run pictures: how well the policy judged, and how training went."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def judge_calibration(
    v_hat: Sequence[float], v: Sequence[float], steps: Sequence[int], which: str
) -> Figure:
    """Predicted vs realised reward variance of each judged prompt, coloured by step; `which`
    says which prompts (the selected ones are a biased sample, the audit's a random one)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    points = ax.scatter(v_hat, v, c=steps, cmap="viridis", s=18, alpha=0.8)
    ax.plot(
        [0, 0.25], [0, 0.25], color="grey", linestyle="--", linewidth=1, label="perfect judgment"
    )
    ax.set(
        xlim=(-0.01, 0.26),
        ylim=(-0.01, 0.26),
        xlabel="predicted variance v_hat",
        ylabel="realised variance v",
        title=f"Self-judgment calibration ({which})",
    )
    fig.colorbar(points, ax=ax, label="step")
    ax.legend(loc="upper left")
    return fig


def training_curves(steps: Sequence[int], series: dict[str, Sequence[float]]) -> Figure:
    """One panel per metric over steps (NaN gaps where a metric was not measured)."""
    fig, axes = plt.subplots(
        len(series), 1, figsize=(7, 2.2 * len(series)), sharex=True, squeeze=False
    )
    for ax, (name, values) in zip(axes[:, 0], series.items(), strict=True):
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_ylabel(name.split("/")[-1])
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return fig


def audit_curves(steps: Sequence[int], series: dict[str, Sequence[float]]) -> Figure:
    """The judge audit over steps: rank correlation and top-B lift (chance = 1) on the left, the
    non-zero-variance share of the top-B against the whole audit set on the right."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(steps, series["spearman"], marker="o", label="Spearman rho (scores vs v)")
    left.plot(steps, series["top_b_lift"], marker="s", label="top-B lift (mean v top-B / all)")
    left.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    left.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    left.set(xlabel="step (-1: before training)", title="Judge audit: ranking")
    left.legend(fontsize=8)
    right.plot(steps, series["top_b_nonzero_share"], marker="o", label="judge's top-B")
    right.plot(steps, series["nonzero_share"], marker="s", label="whole audit set")
    right.set(
        xlabel="step (-1: before training)",
        ylim=(-0.02, 1.02),
        title="Share of prompts with non-zero reward variance",
    )
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def comparison_curves(curves: Sequence[Any], target: float) -> Figure:
    """Curricula side by side: held-out accuracy against cumulative generated tokens and against
    training seconds (one thin line per seed, a thick one for the mean over seeds at each
    evaluation), and the zero-variance share of each iteration (mean over seeds)."""
    import numpy as np

    fig, (by_tokens, by_time, zero_var) = plt.subplots(1, 3, figsize=(16, 4.4))
    samplers = list(dict.fromkeys(c.sampler for c in curves))
    colours = dict(zip(samplers, plt.cm.tab10.colors, strict=False))
    for sampler in samplers:
        runs = [c for c in curves if c.sampler == sampler]
        colour = colours[sampler]
        n = min(len(c.accuracy) for c in runs)
        for ax, x in ((by_tokens, "spent_tokens"), (by_time, "seconds")):
            for c in runs:
                ax.plot(getattr(c, x), c.accuracy, color=colour, alpha=0.3, linewidth=0.8)
            if n:  # the mean over seeds at each evaluation
                mean_x = np.mean([getattr(c, x)[:n] for c in runs], axis=0)
                mean_acc = np.mean([c.accuracy[:n] for c in runs], axis=0)
                ax.plot(
                    mean_x,
                    mean_acc,
                    color=colour,
                    linewidth=2.2,
                    marker="o",
                    markersize=3,
                    label=f"{sampler} ({len(runs)} seeds)",
                )
        steps = min(len(c.zero_variance) for c in runs)
        if steps:
            share = np.mean([c.zero_variance[:steps] for c in runs], axis=0)
            zero_var.plot(
                range(steps), share, color=colour, marker="o", markersize=3, label=sampler
            )
    for ax in (by_tokens, by_time):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
        ax.set_ylabel("held-out avg@k")
    by_tokens.set(
        xlabel="generated tokens (rollouts + discarded + judgments)",
        title="Accuracy against generated tokens",
    )
    by_time.set(xlabel="seconds in training stages", title="Accuracy against wall-clock")
    zero_var.set(
        xlabel="iteration",
        ylabel="share of trained groups",
        ylim=(-0.02, 1.02),
        title="Zero-variance share per iteration",
    )
    for ax in (by_tokens, by_time, zero_var):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
