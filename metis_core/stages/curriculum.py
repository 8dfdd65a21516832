"""history, judge, select: which prompts get this iteration's rollout budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metis_core.config import RunConfig
from metis_core.judgment import (
    ALLOWED_DIGITS,
    JUDGMENT_DIGITS_REGEX,
    JUDGMENT_PREFIX,
    CalibrationExample,
    calibration_memory,
    expected_judgment,
    judgment_messages,
    parse_judgment,
)
from metis_core.memory import PastOutcome, retrieve
from metis_core.run import Run, read_json, write_json
from metis_core.samplers.base import Candidate, domain_quota, top_b


def history(run: Run, step: int, rows: list[dict]) -> dict[str, list[CalibrationExample]]:
    """The calibration memory of each row about to be judged, by prompt id.

    `judge.memory: recent` (the paper's): a candidate sees K examples from its own domain's recent
    history (the last `judge.memory_window` outcomes of it), spread over their range of variance,
    topped up from the recent history of all domains while its domain has fewer; so early in a
    mixed run the judge still sees K examples, and later it calibrates on outcomes of its own kind.
    `judge.memory: retrieved`: the K past outcomes most like the candidate (metis_core/memory.py).
    Before any history exists (step 0) every memory is empty; see `select`.
    """
    k, window = run.cfg.judge.k_examples, run.cfg.judge.memory_window
    if run.cfg.judge.memory == "retrieved":
        train_ids = {r["prompt_id"] for r in run.rows("train")}
        past = [
            PastOutcome(*o)
            for o in run.store.past_outcomes(run.run_id, step, run.cfg.judge.retrieval_window)
            if o[0] in train_ids
        ]
        return {row["prompt_id"]: retrieve(row, past, k) for row in rows}

    def examples(domain: str | None) -> list[CalibrationExample]:
        recent = run.store.recent_variances(run.run_id, step, window, domain)
        return [CalibrationExample(p, v) for p, v, _ in recent]

    shared = calibration_memory(examples(None), k)
    memories = {}
    for domain in sorted({row["domain"] for row in rows}):
        own = calibration_memory(examples(domain), k)
        memories[domain] = own + [e for e in shared if e not in own][: k - len(own)]
    return {row["prompt_id"]: memories[row["domain"]] for row in rows}


def judgment_regex(cfg: RunConfig) -> str | None:
    """What the decoded part of a judgment is constrained to (the digits and the closing brace;
    the prompt ends with JUDGMENT_PREFIX), or None when judgments are sampled freely."""
    return JUDGMENT_DIGITS_REGEX if cfg.judge.constrained else None


def draw_candidates(run: Run, step: int) -> list[dict]:
    """C_t: m * B prompts drawn uniformly from the training split (seeded by step); with
    `data.domain_weights`, each domain's share of them is fixed by its weight."""
    train = run.rows("train")
    size = min(run.cfg.curriculum.batch_prompts * run.cfg.curriculum.pool_multiplier, len(train))
    rng = run.rng(step, "candidates")
    weights = run.cfg.data.domain_weights
    if not weights:
        return [train[int(i)] for i in rng.choice(len(train), size=size, replace=False)]
    by_domain: dict[str, list[dict]] = {}
    for row in train:
        by_domain.setdefault(row["domain"], []).append(row)
    available = {d: len(rows) for d, rows in by_domain.items()}
    quota = domain_quota(size, {d: weights.get(d, 0.0) for d in available}, available)
    picks = []
    for domain in sorted(quota):
        rows = by_domain[domain]
        picks += [rows[int(i)] for i in rng.choice(len(rows), size=quota[domain], replace=False)]
    return picks


def judge_rows(
    run: Run, rows: list[dict], memory: dict[str, list[CalibrationExample]], *, seed: int
) -> list[dict]:
    """The policy's judgment of each pool row: v_hat (None when unparsable), the judgment text,
    and the judgment prompt / emitted token ids (with the engine's log-probs of them) that the
    judge loss trains on. One engine call for all rows. Constrained judgments have the forced
    `\\boxed{0.` at the end of their prompt, so 3-4 tokens are decoded instead of 10."""
    cfg = run.cfg.judge
    tok = run.engine.tokenizer
    # constrained: the forced `\boxed{0.` goes into the prompt, only the digits are generated
    prefix = JUDGMENT_PREFIX if cfg.constrained else ""
    prefix_ids = tok.encode(prefix, add_special_tokens=False) if prefix else []
    prompts = []
    for row in rows:
        messages = judgment_messages(
            row["prompt"],
            memory[row["prompt_id"]],
            run.truncate,
            cfg.example_max_tokens,
            cfg.candidate_max_tokens,
        )
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(tok.encode(text, add_special_tokens=False) + prefix_ids)
    outputs = run.engine.generate(
        prompts,
        n=1,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        regex=judgment_regex(run.cfg),
        seed=seed,
    )
    judged = [
        {
            "v_hat": parse_judgment(prefix + out.text).v_hat,
            "text": prefix + out.text,
            "prompt_token_ids": prompt,
            "judgment_token_ids": out.token_ids,
            "judgment_logprobs": out.logprobs,
        }
        for prompt, (out,) in zip(prompts, outputs, strict=True)
    ]
    if cfg.scoring == "expected":
        for row, expected in zip(judged, expected_judgments(run, prompts), strict=True):
            row["v_hat_expected"] = expected
            row["scoring_tokens"] = 1 + len(ALLOWED_DIGITS)  # one-token requests, charged
    return judged


def expected_judgments(run: Run, prompts: list[list[int]]) -> list[float]:
    """E[v_hat] of each judgment prompt (ending with JUDGMENT_PREFIX) under the judge's own
    distribution over the 26 allowed answers: the tenths digit after the prefix and the
    hundredths digit after each allowed tenths digit, read as next-token log-probs at the judge
    temperature (4 one-token requests per prompt, all served from the prefix cache that sampling
    the judgment just filled)."""
    tok = run.engine.tokenizer
    digits = [tok.encode(str(d), add_special_tokens=False) for d in range(10)]
    if any(len(ids) != 1 for ids in digits):
        raise ValueError("judge.scoring=expected needs a tokenizer with one token per digit")
    digit_of = {ids[0]: d for d, ids in enumerate(digits)}
    requests, allowed = [], []
    for prompt in prompts:
        requests.append(prompt)
        allowed.append([digits[d][0] for d in ALLOWED_DIGITS])
        for d1, seconds in ALLOWED_DIGITS.items():
            requests.append(prompt + digits[d1])
            allowed.append([digits[d][0] for d in seconds])
    logprobs = run.engine.next_token_logprobs(requests, allowed, run.cfg.judge.temperature)
    by_digit = [
        {digit_of[t]: lp for t, lp in lp_map.items() if t in digit_of} for lp_map in logprobs
    ]
    per_prompt = 1 + len(ALLOWED_DIGITS)
    return [
        expected_judgment(
            by_digit[i * per_prompt],
            {d1: by_digit[i * per_prompt + 1 + d1] for d1 in ALLOWED_DIGITS},
        )
        for i in range(len(prompts))
    ]


def judge(run: Run, step: int, memory: dict[str, list[CalibrationExample]]) -> Path:
    """The policy predicts v_hat for every candidate (for samplers that ask for judgments).

    Writes judgments.json: per candidate its id and, when judged, what `judge_rows` returns.
    """
    candidates = draw_candidates(run, step)
    rows = [{"prompt_id": c["prompt_id"]} for c in candidates]
    if run.sampler.needs_judgment:
        judged_rows = judge_rows(run, candidates, memory, seed=run.engine_seed(step, "judge"))
        for row, judged in zip(rows, judged_rows, strict=True):
            row.update(judged)
    memory_size = min(len(memory[c["prompt_id"]]) for c in candidates)
    return write_json(
        run.step_file(step, "judgments"), {"memory_size": memory_size, "candidates": rows}
    )


def sampler_candidates(run: Run, candidates: list[dict]) -> list[Candidate]:
    """What the sampler may know of each candidate: its task and domain, its judgment (`v_hat`,
    or `v_hat_expected` when judge.scoring is expected; an unparsable judgment scores
    judge.parse_failure_score) when it judges, and the policy's prompt features when it reads
    them (one forward pass per candidate, charged as value-model passes)."""
    rows = [run.train_row(c["prompt_id"]) for c in candidates]
    v_hat: list[float | None] = [None] * len(rows)
    if run.sampler.needs_judgment:
        fallback = run.cfg.judge.parse_failure_score
        v_hat = [c.get("v_hat_expected", c["v_hat"]) for c in candidates]
        v_hat = [fallback if v is None else v for v in v_hat]
    features: list[np.ndarray | None] = [None] * len(rows)
    if run.sampler.needs_features:
        features = list(prompt_features(run, rows))
    return [
        Candidate(r["prompt_id"], r["task"], r["domain"], v, f)
        for r, v, f in zip(rows, v_hat, features, strict=True)
    ]


def prompt_features(run: Run, rows: list[dict]) -> np.ndarray:
    """[N, H] the policy's frozen features of each row's task prompt (trainer forward, no grad)."""
    prompts = [run.task_prompt_ids(r) for r in rows]
    return np.asarray(run.trainer.prompt_features(prompts), dtype=np.float32)


def sampler_scores(run: Run, candidates: list[dict], step: int) -> list[float]:
    """The sampler's score of each candidate, higher first (the audit ranks by it)."""
    return run.sampler.score(sampler_candidates(run, candidates), run.rng(step, "score"))


def select(run: Run, step: int, judgments_file: Path) -> Path:
    """The sampler turns its scores into an allocation: Top-B of v_hat for METIS, with the
    selection floor drawn uniformly from the rest (samplers/base.py).

    Warm-up: while step < curriculum.warmup_steps, or while the calibration memory is still shorter
    than K, the allocation is uniform over the candidates: the judge is not calibrated yet, and
    uniform picks give the history unbiased outcomes to calibrate on. Its judgments are still
    scored and trained. A refilling sampler (DAPO) returns every candidate in the order the
    rollout stage should try them; the first B are its first round.
    """
    data = read_json(judgments_file)
    ids = [c["prompt_id"] for c in data["candidates"]]
    budget = run.cfg.curriculum.batch_prompts
    warmup = step < run.cfg.curriculum.warmup_steps or (
        run.sampler.needs_judgment and data["memory_size"] < run.cfg.judge.k_examples
    )
    rng = run.rng(step, "select")
    cost: dict[str, int] = {}
    features: dict[str, list[float]] = {}
    candidates = sampler_candidates(run, data["candidates"])
    if warmup and not run.sampler.refills:
        chosen = top_b([0.0] * len(ids), budget, rng)
    else:
        chosen = run.sampler.select(candidates, budget, rng)
    if run.sampler.needs_features:  # charged by `record`; the outcomes carry them to `update`
        cost["value_passes"] = len(candidates)
        cost["value_tokens"] = sum(len(run.task_prompt_ids(run.train_row(i))) for i in ids)
        features = {ids[i]: candidates[i].features.tolist() for i in chosen[:budget]}  # type: ignore[union-attr]
    return write_json(
        run.step_file(step, "selection"),
        {
            "prompt_ids": [ids[i] for i in chosen[:budget]],
            "reserve": [ids[i] for i in chosen[budget:]],
            "warmup": warmup,
            "cost": cost,
            "features": features,
        },
    )
