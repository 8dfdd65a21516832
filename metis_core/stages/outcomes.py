"""rollout, verify, record: spend the budget, score it, and write it to the outcome history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metis_core.algorithms import group_advantages, judge_reward, realised_variance
from metis_core.run import Run, derive_seed, read_json, write_json
from metis_core.samplers import Outcome
from metis_core.samplers.dapo import refill
from metis_core.stages.generation import generate_for_rows, score_row


def rollout(run: Run, step: int, selection_file: Path) -> Path:
    """n completions per selected prompt from the current policy, with token ids and log-probs.

    A refilling sampler (DAPO's dynamic sampling) rolls out in rounds instead: each round takes as
    many prompts, from the selection and then its reserve in order, as the batch still lacks, and
    keeps the groups whose rewards vary (scored here, once; `verify` reuses the scores). The
    discarded groups go to `discarded.json` and are charged by `record`. A batch still short
    after `curriculum.dapo.max_rounds` rounds is trained as it is; when no group varied at all,
    the last round stands (its advantages are zero), so the iteration still completes.
    """
    selection = read_json(selection_file)
    seed = run.engine_seed(step, "rollout")
    if not run.sampler.refills:
        rollouts = _roll_out(run, selection["prompt_ids"], seed)
        return write_json(run.step_file(step, "rollouts"), rollouts)
    budget = run.cfg.curriculum.batch_prompts
    rounds = 0

    def roll_and_score(prompt_ids: list[str]) -> list[dict]:
        nonlocal rounds
        groups = _roll_out(run, prompt_ids, derive_seed(seed, rounds))
        rounds += 1
        for g in groups:
            texts = [c["text"] for c in g["completions"]]
            g["rewards"], g["reasons"] = score_row(run.cfg, run.train_row(g["prompt_id"]), texts)
        return groups

    queue = selection["prompt_ids"] + selection["reserve"]
    done = refill(queue, budget, run.cfg.curriculum.dapo.max_rounds, roll_and_score)
    write_json(
        run.step_file(step, "discarded"),
        {
            "rounds": done.rounds,
            "accepted": len(done.accepted),
            "groups": [
                {
                    "prompt_id": g["prompt_id"],
                    "rewards": g["rewards"],
                    "completion_tokens": sum(len(c["token_ids"]) for c in g["completions"]),
                }
                for g in done.dropped
            ],
        },
    )
    return write_json(run.step_file(step, "rollouts"), done.batch)


def _roll_out(run: Run, prompt_ids: list[str], seed: int) -> list[dict]:
    cfg = run.cfg.rollout
    selected = [run.train_row(pid) for pid in prompt_ids]
    prompts = [run.task_prompt_ids(row) for row in selected]
    groups = generate_for_rows(
        run.engine,
        run.cfg,
        selected,
        prompts,
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=seed,
    )
    return [
        {
            "prompt_id": row["prompt_id"],
            "prompt_token_ids": prompt,
            "completions": [
                {"token_ids": c.token_ids, "text": c.text, "logprobs": c.logprobs} for c in group
            ],
        }
        for row, prompt, group in zip(selected, prompts, groups, strict=True)
    ]


def verify(run: Run, step: int, rollouts_file: Path, judgments_file: Path) -> Path:
    """Rewards per completion, realised variance and advantages per prompt, judgment rewards."""
    groups = read_json(rollouts_file)
    judged = {c["prompt_id"]: c for c in read_json(judgments_file)["candidates"]}
    rewards, reasons = [], []
    for g in groups:
        if "rewards" in g:  # scored by a refilling rollout stage
            scores, why = g["rewards"], g["reasons"]
        else:
            row = run.train_row(g["prompt_id"])
            scores, why = score_row(run.cfg, row, [c["text"] for c in g["completions"]])
        rewards.append(scores)
        reasons.append(why)
    r = torch.tensor(rewards, dtype=torch.float32)
    variance = realised_variance(r)
    advantages = group_advantages(r)
    judgments = [judged.get(g["prompt_id"], {}) for g in groups]
    v_hats = [j.get("v_hat") for j in judgments]
    parsed = torch.tensor([v is not None for v in v_hats])
    r_judge = judge_reward(torch.tensor([v or 0.0 for v in v_hats]), variance, parsed)
    result = []
    for i, (g, j) in enumerate(zip(groups, judgments, strict=True)):
        entry = {
            "prompt_id": g["prompt_id"],
            "rewards": rewards[i],
            "reasons": reasons[i],
            "advantages": advantages[i].tolist(),
            "realised_variance": float(variance[i]),
            "v_hat": v_hats[i],
            "parsed": v_hats[i] is not None,
        }
        if "judgment_token_ids" in j:  # the sampler judged: this prompt's judgment gets a reward
            entry["judge_reward"] = float(r_judge[i])
        result.append(entry)
    return write_json(run.step_file(step, "verified"), result)


def record(
    run: Run, step: int, rollouts_file: Path, verified_file: Path, judgments_file: Path
) -> dict[str, float]:
    """Outcome rows (one per completion) and judgment rows into DuckDB, replacing the step's
    rows as a whole (a replay leaves no stale ones); the step's spend into the run's totals. Also feeds the
    sampler its outcomes, and returns its metrics (`sampler/<name>/...`)."""
    groups = {g["prompt_id"]: g for g in read_json(rollouts_file)}
    verified = read_json(verified_file)
    run.store.add_prompts(
        [
            {
                k: run.train_row(v["prompt_id"])[k]
                for k in ("prompt_id", "prompt", "answer", "task", "difficulty", "domain")
            }
            for v in verified
        ]
    )
    outcome_rows = []
    for v in verified:
        for s, (c, reward, reason) in enumerate(
            zip(groups[v["prompt_id"]]["completions"], v["rewards"], v["reasons"], strict=True)
        ):
            outcome_rows.append(
                {
                    "run_id": run.run_id,
                    "step": step,
                    "prompt_id": v["prompt_id"],
                    "sample": s,
                    "reward": reward,
                    "completion": c["text"],
                    "completion_tokens": len(c["token_ids"]),
                    "reason": reason,
                }
            )
    selected = {v["prompt_id"]: v for v in verified}
    judgment_rows = []
    for c in read_json(judgments_file)["candidates"]:
        if "text" not in c:
            continue
        v = selected.get(c["prompt_id"])
        judgment_rows.append(
            {
                "run_id": run.run_id,
                "step": step,
                "prompt_id": c["prompt_id"],
                "v_hat": c["v_hat"],
                "parsed": c["v_hat"] is not None,
                "text": c["text"],
                "tokens": len(c["judgment_token_ids"]),
                "selected": v is not None,
                "realised_variance": v["realised_variance"] if v else None,
                "judge_reward": v.get("judge_reward") if v else None,
            }
        )
    selection = read_json(run.step_file(step, "selection"))
    features = selection.get("features", {})
    run.sampler.update(
        [
            Outcome(
                v["prompt_id"],
                v["rewards"],
                np.asarray(features[v["prompt_id"]]) if v["prompt_id"] in features else None,
            )
            for v in verified
        ]
    )
    # What this step spent, counted where it is recorded: a checkpoint taken later in the
    # iteration carries it, so a resumed run neither loses nor double-counts a step.
    run.charge("rollouts", len(outcome_rows))
    run.charge("generated_tokens", sum(r["completion_tokens"] for r in outcome_rows))
    scoring = sum(c.get("scoring_tokens", 0) for c in read_json(judgments_file)["candidates"])
    run.charge("judgment_tokens", sum(r["tokens"] for r in judgment_rows) + scoring)
    for kind, amount in selection.get("cost", {}).items():  # value-model passes
        run.charge(kind, amount)
    discarded_file = run.step_file(step, "discarded")
    if discarded_file.is_file():  # a refilling sampler's dropped groups
        discarded = read_json(discarded_file)
        run.charge("discarded_rollouts", sum(len(g["rewards"]) for g in discarded["groups"]))
        run.charge("discarded_tokens", sum(g["completion_tokens"] for g in discarded["groups"]))
        run.sampler.record_rounds(  # type: ignore[attr-defined]
            discarded["rounds"],
            discarded["accepted"],
            len(discarded["groups"]),
            run.cfg.curriculum.batch_prompts,
        )
    for r in outcome_rows:  # the same spend, per domain
        domain = run.train_row(r["prompt_id"])["domain"]
        run.charge(f"{domain}/rollouts", 1)
        run.charge(f"{domain}/generated_tokens", r["completion_tokens"])
    run.store.replace_step(run.run_id, step, outcome_rows, judgment_rows)
    name = run.sampler.name
    return {f"sampler/{name}/{k}": v for k, v in run.sampler.metrics().items()}
