"""What an iteration reports: the run metrics of docs/metis.md and a sample table for MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metis_core.algorithms import is_zero_variance
from metis_core.metrics import judge_quality
from metis_core.run import Run, read_json


def iteration_metrics(run: Run, verified_file: Path, judgments_file: Path) -> dict[str, float]:
    """Rewards, wasted (zero-variance) groups, cumulative spend and judge quality of one step:
    overall, per domain (`train/code/reward_mean`, `judge/selected/code/spearman`,
    `cost/code/rollouts`, ...) and, for rewards, per task. Judge quality here is over the B
    selected prompts only (`judge/selected/...`); the audit (stages/audit.py) measures it on a
    random sample."""
    verified = read_json(verified_file)
    candidates = read_json(judgments_file)["candidates"]
    judged_any = any("text" in c for c in candidates)
    domain_of = {v["prompt_id"]: run.train_row(v["prompt_id"])["domain"] for v in verified}
    metrics = _outcome_metrics(verified, "train", "judge/selected", judged_any)
    metrics |= spend_metrics(run.totals, "cost")
    metrics |= spend_metrics(run.step_spend, "cost/step")
    if judged_any:
        # the parse-failure rate over every candidate judged, not only the selected ones
        metrics["judge/parse_failure_rate"] = sum(c["v_hat"] is None for c in candidates) / len(
            candidates
        )
    for domain in run.cfg.domains_in_use():
        subset = [v for v in verified if domain_of[v["prompt_id"]] == domain]
        if subset:
            metrics |= _outcome_metrics(
                subset, f"train/{domain}", f"judge/selected/{domain}", judged_any
            )
        for kind in ("rollouts", "generated_tokens"):
            metrics[f"cost/{domain}/{kind}"] = run.totals.get(f"{domain}/{kind}", 0)
    by_task: dict[str, list[float]] = {}
    for v in verified:
        by_task.setdefault(run.train_row(v["prompt_id"])["task"], []).extend(v["rewards"])
    for task, rs in by_task.items():
        metrics[f"train/{task}/reward_mean"] = sum(rs) / len(rs)
    return metrics


SPEND = (
    "rollouts",
    "generated_tokens",
    "discarded_rollouts",
    "discarded_tokens",
    "judgment_tokens",
    "value_passes",
    "value_tokens",
    "trainer_tokens",
    "train_seconds",
)
"""What every sampler is charged for (run.charge): trained rollouts and their completion tokens,
rollouts generated and dropped (DAPO), judgment tokens (METIS), value-model forward passes and
their prompt tokens (PCL), tokens through the trainer, and seconds in the training stages."""


def spend_metrics(spend: dict[str, float], prefix: str) -> dict[str, float]:
    """`<prefix>/<kind>` for every kind of spend, and `<prefix>/spent_tokens`: every token the
    curriculum made the engine generate (trained and discarded rollouts, judgments; audits and
    evaluations excluded), the x-axis of curriculum comparisons."""
    out = {f"{prefix}/{kind}": float(spend.get(kind, 0)) for kind in SPEND}
    out[f"{prefix}/spent_tokens"] = (
        out[f"{prefix}/generated_tokens"]
        + out[f"{prefix}/discarded_tokens"]
        + out[f"{prefix}/judgment_tokens"]
    )
    return out


def _outcome_metrics(
    verified: list[dict], train: str, judge: str, judged: bool
) -> dict[str, float]:
    rewards = [r for v in verified for r in v["rewards"]]
    metrics = {
        f"{train}/reward_mean": sum(rewards) / len(rewards),
        f"{train}/zero_variance_fraction": sum(
            is_zero_variance(v["realised_variance"]) for v in verified
        )
        / len(verified),
        f"{train}/realised_variance_mean": sum(v["realised_variance"] for v in verified)
        / len(verified),
    }
    scored = [v for v in verified if "judge_reward" in v]
    if judged and scored:
        quality = judge_quality(
            [v["v_hat"] or 0.0 for v in scored],
            [v["realised_variance"] for v in scored],
            [v["parsed"] for v in scored],
        )
        metrics |= {f"{judge}/{k.split('/', 1)[1]}": value for k, value in quality.items()}
    return metrics


def sample_table(
    run: Run, rollouts_file: Path, verified_file: Path, limit: int = 8
) -> list[dict[str, Any]]:
    """A few selected prompts with their judgment, realised variance and first completion."""
    groups = {g["prompt_id"]: g for g in read_json(rollouts_file)}
    rows = []
    for v in read_json(verified_file)[:limit]:
        p = run.train_row(v["prompt_id"])
        first = groups[v["prompt_id"]]["completions"][0]
        rows.append(
            {
                "prompt": p["prompt"],
                "answer": p["answer"],
                "task": p["task"],
                "domain": p["domain"],
                "v_hat": v["v_hat"],
                "realised_variance": v["realised_variance"],
                "completion": first["text"],
                "reward": v["rewards"][0],
            }
        )
    return rows


def final_figures(run: Run) -> dict[str, Any]:
    """The end-of-run figures (artifact path -> matplotlib Figure), from the outcome history."""
    from metis_core.plots import audit_curves, judge_calibration, training_curves

    figures: dict[str, Any] = {}
    judged = run.store.judged_selected(run.run_id)
    if judged:
        steps, v_hat, v = zip(*judged, strict=True)
        figures["plots/judge_calibration.png"] = judge_calibration(
            v_hat, v, steps, "selected prompts"
        )
    audits = sorted(
        (int(p.parent.name) if p.parent.name != "initial" else -1, read_json(p))
        for p in run.run_dir.glob("steps/*/audit.json")
    )
    audited = [(s, r) for s, a in audits for r in a["prompts"] if r["v_hat"] is not None]
    if audited:
        figures["plots/judge_calibration_audit.png"] = judge_calibration(
            [r["v_hat"] for _, r in audited],
            [r["realised_variance"] for _, r in audited],
            [s for s, _ in audited],
            "audit: random prompts",
        )
    if audits:
        figures["plots/judge_audit.png"] = audit_curves(
            [s for s, _ in audits],
            {
                name: [a["metrics"].get(f"audit/{name}", float("nan")) for _, a in audits]
                for name in ("spearman", "top_b_lift", "top_b_nonzero_share", "nonzero_share")
            },
        )
    history = run.store.step_metrics(run.run_id)
    if history:
        k = run.cfg.eval.samples
        names = [
            "train/reward_mean",
            "train/zero_variance_fraction",
            f"eval/avg_at_{k}",
            "judge/selected/spearman",
            "audit/spearman",
            "audit/top_b_lift",
        ]
        domains = run.cfg.domains_in_use()
        if len(domains) > 1:  # a mixed run: each domain's reward and held-out accuracy too
            names += [f"train/{d}/reward_mean" for d in domains]
            names += [f"eval/{d}/avg_at_{k}" for d in domains]
        names = [n for n in names if any(n in m for _, m in history)]
        figures["plots/training_curves.png"] = training_curves(
            [s for s, _ in history],
            {n: [m.get(n, float("nan")) for _, m in history] for n in names},
        )
    return figures
