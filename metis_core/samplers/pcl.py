"""PCL: a value model predicts each prompt's success rate; the batch is those predicted nearest 0.5.

From "Prompt Curriculum Learning for Efficient LLM Post-Training" (PCL, arXiv 2510.01135). A
value model, trained alongside the policy on observed (prompt, mean reward) pairs, predicts the
expected reward of each candidate from the policy's own view of the prompt, and the candidates
predicted nearest the target (intermediate difficulty, the most informative for GRPO) get
rollouts. Here the value model is a ridge regression with an intercept on the policy's frozen
prompt features, refit in closed form after every iteration on the most recent `pcl.buffer`
observations; it predicts the target for every prompt until its first fit (random selection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metis_core.samplers.base import Candidate, Outcome, Sampler, register_sampler


def _features(x: np.ndarray | None, prompt_id: str, dim: int | None) -> np.ndarray:
    if x is None:
        raise ValueError(f"the pcl sampler needs prompt features; prompt {prompt_id!r} has none")
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or (dim is not None and x.shape[0] != dim):
        want = f"({dim},)" if dim is not None else "1-D"
        raise ValueError(f"pcl: prompt {prompt_id!r} has features of shape {x.shape}, want {want}")
    return x


@register_sampler
class PclSampler(Sampler):
    name = "pcl"
    needs_features = True
    scores_prompts = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffer_x: list[list[float]] = []
        self.buffer_y: list[float] = []
        self.weights: list[float] | None = None
        self.intercept: float | None = None
        self.fits = 0
        self._predicted: dict[str, float] = {}
        self._error: float | None = None

    @property
    def dim(self) -> int | None:
        if self.weights is not None:
            return len(self.weights)
        return len(self.buffer_x[0]) if self.buffer_x else None

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Predicted success rate of each candidate, clipped to [0, 1]."""
        x = [_features(c.features, c.prompt_id, self.dim) for c in candidates]
        if self.weights is None or self.intercept is None:
            return np.full(len(candidates), float(self.cfg.pcl.target))
        if not x:
            return np.zeros(0)
        pred = np.stack(x) @ np.asarray(self.weights) + self.intercept
        return np.clip(pred, 0.0, 1.0)

    def score(self, candidates: Sequence[Candidate], rng: np.random.Generator) -> list[float]:
        """-|predicted success - target|; ties (before the first fit) are broken at random."""
        pred = self.predict(candidates)
        self._predicted = {c.prompt_id: float(p) for c, p in zip(candidates, pred, strict=True)}
        return [float(-abs(p - self.cfg.pcl.target)) for p in pred]

    def update(self, outcomes: Sequence[Outcome]) -> None:
        xs = [_features(o.features, o.prompt_id, self.dim) for o in outcomes]
        errors = [
            abs(self._predicted[o.prompt_id] - o.success)
            for o in outcomes
            if o.prompt_id in self._predicted
        ]
        self._error = float(np.mean(errors)) if errors else None
        self._predicted = {}
        if not outcomes:
            return
        self.buffer_x += [x.tolist() for x in xs]
        self.buffer_y += [o.success for o in outcomes]
        keep = self.cfg.pcl.buffer
        self.buffer_x, self.buffer_y = self.buffer_x[-keep:], self.buffer_y[-keep:]
        x, y = np.asarray(self.buffer_x), np.asarray(self.buffer_y)
        x_mean, y_mean = x.mean(axis=0), float(y.mean())
        xc, yc = x - x_mean, y - y_mean
        gram = xc.T @ xc + self.cfg.pcl.ridge * np.eye(x.shape[1])
        w = np.linalg.solve(gram, xc.T @ yc)
        self.weights = [float(v) for v in w]
        self.intercept = float(y_mean - x_mean @ w)
        self.fits += 1

    def metrics(self) -> dict[str, float]:
        out = {"buffer_size": float(len(self.buffer_y)), "fits": float(self.fits)}
        if self._error is not None:
            out["prediction_error"] = self._error
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer_x": [list(x) for x in self.buffer_x],
            "buffer_y": list(self.buffer_y),
            "weights": None if self.weights is None else list(self.weights),
            "intercept": self.intercept,
            "fits": self.fits,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer_x = [[float(v) for v in x] for x in state["buffer_x"]]
        self.buffer_y = [float(v) for v in state["buffer_y"]]
        w = state["weights"]
        self.weights = None if w is None else [float(v) for v in w]
        b = state["intercept"]
        self.intercept = None if b is None else float(b)
        self.fits = int(state["fits"])
