"""MoPPS: a Beta posterior of each prompt's success rate, Thompson sampled to pick the batch.

From "Can Prompt Difficulty be Online Predicted for Accelerating RL Finetuning of Reasoning
Models?" (Model Predictive Prompt Selection, arXiv 2507.04632). Each prompt's success rate is a
Bernoulli parameter with a Beta(alpha, beta) posterior, starting from the prior (alpha_0, beta_0).
After each iteration an observed prompt with s successes in n rollouts (s may be fractional for
continuous rewards) gets alpha <- lambda * alpha + (1 - lambda) * alpha_0 + s and
beta <- lambda * beta + (1 - lambda) * beta_0 + (n - s): the posterior first decays toward the
prior because the policy moves. To select, it draws p ~ Beta(alpha, beta) per candidate and scores
-|p - target|, so prompts likely to be solved about half the time get rollouts, with no extra
forward pass of the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metis_core.samplers.base import Candidate, Outcome, Sampler, register_sampler


@register_sampler
class MoppsSampler(Sampler):
    name = "mopps"
    scores_prompts = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.posterior: dict[str, list[float]] = {}
        """prompt_id -> [alpha, beta]; prompts never observed have the prior."""
        self._gap: float | None = None

    @property
    def prior(self) -> tuple[float, float]:
        return float(self.cfg.mopps.prior_alpha), float(self.cfg.mopps.prior_beta)

    def _params(self, prompt_id: str) -> tuple[float, float]:
        a, b = self.posterior.get(prompt_id, self.prior)
        return a, b

    def score(self, candidates: Sequence[Candidate], rng: np.random.Generator) -> list[float]:
        """-|p - target| with p ~ Beta(alpha, beta), one draw per candidate."""
        if not candidates:
            return []
        params = np.array([self._params(c.prompt_id) for c in candidates], dtype=float)
        p = rng.beta(params[:, 0], params[:, 1])
        return [float(-abs(x - self.cfg.mopps.target)) for x in p]

    def update(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        target = self.cfg.mopps.target
        gaps = [
            abs(a / (a + b) - target) for a, b in map(self._params, (o.prompt_id for o in outcomes))
        ]
        self._gap = float(np.mean(gaps))
        a0, b0 = self.prior
        lam = float(self.cfg.mopps.decay)
        for o in outcomes:
            a, b = self._params(o.prompt_id)
            n = float(len(o.rewards))
            s = float(np.clip(np.sum(o.rewards), 0.0, n))  # rewards lie in [0, 1]
            self.posterior[o.prompt_id] = [
                lam * a + (1 - lam) * a0 + s,
                lam * b + (1 - lam) * b0 + (n - s),
            ]

    def metrics(self) -> dict[str, float]:
        a0, b0 = self.prior
        means = [a / (a + b) for a, b in self.posterior.values()] or [a0 / (a0 + b0)]
        out = {
            "tracked_prompts": float(len(self.posterior)),
            "posterior_mean": float(np.mean(means)),
        }
        if self._gap is not None:
            out["mean_abs_gap_to_target"] = self._gap
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"posterior": {pid: list(ab) for pid, ab in self.posterior.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.posterior = {
            pid: [float(ab[0]), float(ab[1])] for pid, ab in state["posterior"].items()
        }
