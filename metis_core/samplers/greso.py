"""GRESO: skip, before rollout, the prompts that were zero-variance the last times they were seen.

From "Act Only When It Pays: Efficient RL for LLM Reasoning via Selective Rollouts" (GRESO,
arXiv 2506.02177). Zero-variance groups give GRPO no gradient, and a prompt that was zero-variance
tends to stay so. Per prompt it counts z, its consecutive most recent zero-variance appearances,
and whether that streak is easy (all correct) or hard (all wrong). A candidate with z > 0 is kept
with probability p_e ** z (p_e of its kind) and skipped otherwise; Top-B takes kept candidates
first. After each iteration p_e of each kind moves by a fixed step so that the share of trained
groups that are zero-variance of that kind tracks its target: down when above, up when below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metis_core.samplers.base import Candidate, Outcome, Sampler, register_sampler

KINDS = ("easy", "hard")


@register_sampler
class GresoSampler(Sampler):
    name = "greso"
    needs_judgment = False
    scores_prompts = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        start = float(self.cfg.greso.initial_explore)
        self.p_explore: dict[str, float] = dict.fromkeys(KINDS, start)
        self.streaks: dict[str, dict[str, Any]] = {}
        """prompt_id -> {"z": consecutive zero-variance appearances, "easy": kind of the last}."""
        self._skipped = 0

    def score(self, candidates: Sequence[Candidate], rng: np.random.Generator) -> list[float]:
        """1.0 for candidates kept (never zero-variance, or passing the p_e ** z draw), else 0.0."""
        draws = rng.random(len(candidates))
        scores: list[float] = []
        for c, u in zip(candidates, draws, strict=True):
            streak = self.streaks.get(c.prompt_id)
            if streak is None or streak["z"] == 0:
                scores.append(1.0)
                continue
            kind = "easy" if streak["easy"] else "hard"
            scores.append(1.0 if u < self.p_explore[kind] ** streak["z"] else 0.0)
        self._skipped = sum(s == 0.0 for s in scores)
        return scores

    def update(self, outcomes: Sequence[Outcome]) -> None:
        counts = dict.fromkeys(KINDS, 0)
        for o in outcomes:
            if not o.zero_variance:
                self.streaks[o.prompt_id] = {"z": 0, "easy": False}
                continue
            easy = o.success >= 0.5
            counts["easy" if easy else "hard"] += 1
            z = self.streaks.get(o.prompt_id, {"z": 0})["z"]
            self.streaks[o.prompt_id] = {"z": z + 1, "easy": easy}
        if not outcomes:
            return
        targets = {"easy": self.cfg.greso.target_easy, "hard": self.cfg.greso.target_hard}
        step, floor = self.cfg.greso.explore_step, self.cfg.greso.min_explore
        for kind in KINDS:
            share = counts[kind] / len(outcomes)
            moved = self.p_explore[kind] + (-step if share > targets[kind] else step)
            self.p_explore[kind] = float(min(1.0, max(floor, moved)))

    def metrics(self) -> dict[str, float]:
        return {
            "p_explore_easy": self.p_explore["easy"],
            "p_explore_hard": self.p_explore["hard"],
            "skipped": float(self._skipped),
            "tracked_prompts": float(len(self.streaks)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "p_explore": dict(self.p_explore),
            "streaks": {pid: dict(s) for pid, s in self.streaks.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p_explore = {k: float(state["p_explore"][k]) for k in KINDS}
        self.streaks = {
            pid: {"z": int(s["z"]), "easy": bool(s["easy"])} for pid, s in state["streaks"].items()
        }
