"""audit: how well the sampler's scores rank prompts, measured on prompts it did not choose.

The per-step judge metrics cover the B selected prompts only, all near the top of the judge's
scale, so they cannot say whether the judge ranks well. The audit draws a fresh random sample of
training prompts, scores them exactly as the sampler would score candidates at the next step
(same calibration memory, same judgment prompt and decoding), rolls each out n times at the
current policy, and compares scores with realised variances: Spearman rho, the top-B lift, the
non-zero-variance share of the top-B against the whole sample, calibration error. Its rollouts are
charged to evaluation (`cost/audit_rollouts`) and never reach the outcome history or the update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metis_core.algorithms import realised_variance
from metis_core.metrics import audit_metrics, grouped_audit_metrics
from metis_core.run import Run, write_json
from metis_core.samplers.base import top_b
from metis_core.stages.curriculum import history, judge_rows, sampler_scores
from metis_core.stages.generation import generate_for_rows, score_row


def draw_audit_set(run: Run, step: int) -> list[dict]:
    """eval.audit_prompts training prompts drawn uniformly, seeded by (seed, step + 1)."""
    train = run.rows("train")
    size = min(run.cfg.eval.audit_prompts, len(train))
    rng = run.rng(step + 1, "audit")  # step -1 audits the initial policy
    return [train[int(i)] for i in rng.choice(len(train), size=size, replace=False)]


def audit(run: Run, step: int) -> dict[str, float]:
    """Audit metrics after step `step` (-1: the initial policy), as `audit/...` (overall),
    `audit/<domain>/...` and `audit/<task>/...`."""
    rows = draw_audit_set(run, step)
    if not rows:
        return {}
    judged = [{"v_hat": None} for _ in rows]
    if run.sampler.needs_judgment:
        # the memory the sampler will judge the next step's candidates with
        judged = judge_rows(
            run, rows, history(run, step + 1, rows), seed=run.engine_seed(step + 1, "audit-judge")
        )
    candidates = [{"prompt_id": r["prompt_id"]} | j for r, j in zip(rows, judged, strict=True)]
    scores = sampler_scores(run, candidates, step + 1)
    cfg = run.cfg.rollout
    groups = generate_for_rows(
        run.engine,
        run.cfg,
        rows,
        [run.task_prompt_ids(r) for r in rows],
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        logprobs=False,
        seed=run.engine_seed(step + 1, "audit-rollout"),
    )
    rewards = [
        score_row(run.cfg, r, [c.text for c in g])[0] for r, g in zip(rows, groups, strict=True)
    ]
    variance = realised_variance(torch.tensor(rewards, dtype=torch.float64)).tolist()
    v_hat = [j["v_hat"] for j in judged] if run.sampler.needs_judgment else [None] * len(rows)
    budget = min(run.cfg.curriculum.batch_prompts, len(rows))
    rng = run.rng(step + 1, "audit-select")

    def top(s: Sequence[float], k: int) -> list[int]:
        return top_b(s, k, rng)

    overall = audit_metrics(scores, v_hat, variance, top(scores, budget))
    metrics = {f"audit/{name}": value for name, value in overall.items()}
    for key in ("domain", "task"):
        groups = [r[key] for r in rows]
        for group, values in grouped_audit_metrics(
            scores, v_hat, variance, budget, groups, top
        ).items():
            metrics |= {f"audit/{group}/{name}": value for name, value in values.items()}
    run.totals["audit_rollouts"] = run.totals.get("audit_rollouts", 0) + len(rows) * cfg.n
    metrics["cost/audit_rollouts"] = run.totals["audit_rollouts"]
    write_json(
        run.step_file(step, "audit"),
        {
            "metrics": metrics,
            "prompts": [
                {
                    "prompt_id": r["prompt_id"],
                    "task": r["task"],
                    "domain": r["domain"],
                    "score": s,
                    "v_hat": vh,
                    "realised_variance": v,
                    "rewards": rw,
                }
                for r, s, vh, v, rw in zip(rows, scores, v_hat, variance, rewards, strict=True)
            ],
        },
    )
    return metrics
