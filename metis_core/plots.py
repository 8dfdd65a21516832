"""End-of-run pictures: how well the policy judged, and how training went."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def judge_calibration(v_hat: Sequence[float], v: Sequence[float], steps: Sequence[int]) -> Figure:
    """Predicted vs realised reward variance of every selected prompt, coloured by step."""
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
        title="Self-judgment calibration (selected prompts)",
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
