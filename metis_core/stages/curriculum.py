"""history, judge, select: which prompts get this iteration's rollout budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from metis_core.ports import Completion
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


DIGITS = 10
"""Decimal digits, one token each: a judgment's answer is read digit by digit."""


@dataclass(frozen=True)
class ExpectedScore:
    """One candidate's expected-value score, and what it cost."""

    value: float
    """E[v_hat] under the judge's distribution over the 26 allowed answers."""
    requests: int
    """The one-token engine requests it took beyond sampling the judgment."""


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
    expected = cfg.scoring == "expected"
    outputs = run.engine.generate(
        prompts,
        n=1,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        top_logprobs=DIGITS if expected else 0,  # every digit the constraint allows at a step
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
    if expected:
        sampled = [out for (out,) in outputs]
        for row, score in zip(judged, expected_judgments(run, prompts, sampled), strict=True):
            row["v_hat_expected"] = score.value
            row["scoring_tokens"] = score.requests  # one-token requests, charged
    return judged


def expected_judgments(
    run: Run, prompts: list[list[int]], sampled: Sequence[Completion] | None = None
) -> list[ExpectedScore]:
    """E[v_hat] of each judgment prompt (ending with JUDGMENT_PREFIX) under the judge's own
    distribution over the 26 allowed answers, read as next-token log-probs at the judge
    temperature: the tenths digit after the prefix, and the hundredths digit after each allowed
    tenths digit.

    A judgment sampled from that prompt with its top log-probs (`sampled`, one per prompt) already
    holds two of the four distributions: its first step's is the tenths digit's, its second step's
    the hundredths digit's after the tenths digit it drew. The rest are one-token requests (served
    from the prefix cache that sampling filled): 2 per prompt with `sampled`, 4 without.
    """
    tok = run.engine.tokenizer
    digits = [tok.encode(str(d), add_special_tokens=False) for d in range(DIGITS)]
    if any(len(ids) != 1 for ids in digits):
        raise ValueError("judge.scoring=expected needs a tokenizer with one token per digit")
    digit_of = {ids[0]: d for d, ids in enumerate(digits)}

    def by_digit(lp_map: dict[int, float]) -> dict[int, float]:
        return {digit_of[t]: lp for t, lp in lp_map.items() if t in digit_of}

    # the digits allowed next, by what the score needs: the tenths digit's distribution (key
    # None, right after the prompt) and the hundredths digit's after each tenths digit d1 (key d1)
    next_of: dict[int | None, Sequence[int]] = {None: list(ALLOWED_DIGITS), **ALLOWED_DIGITS}
    known: list[dict[int | None, dict[int, float]]] = []
    asked: list[int] = []
    requests, allowed, slots = [], [], []
    for i, prompt in enumerate(prompts):
        seen: dict[int | None, dict[int, float]] = {}
        out = sampled[i] if sampled is not None else None
        if out is not None and out.top_logprobs and out.token_ids[0] in digit_of:
            # step 0 saw the tenths digit's distribution, step 1 the hundredths digit's after
            # the one drawn; each counts only if its top log-probs hold every allowed digit
            # (with multi-digit tokens in a vocabulary, they can crowd a digit out)
            for key, top in zip([None, digit_of[out.token_ids[0]]], out.top_logprobs, strict=False):
                if {digits[d][0] for d in next_of[key]} <= top.keys():
                    seen[key] = by_digit(top)
        missing = [key for key in next_of if key not in seen]
        for key in missing:
            requests.append(prompt + ([] if key is None else digits[key]))
            allowed.append([digits[d][0] for d in next_of[key]])
            slots.append((i, key))
        known.append(seen)
        asked.append(len(missing))
    logprobs = (
        run.engine.next_token_logprobs(requests, allowed, run.cfg.judge.temperature)
        if requests
        else []
    )
    for (i, key), lp_map in zip(slots, logprobs, strict=True):
        known[i][key] = by_digit(lp_map)
    return [
        ExpectedScore(expected_judgment(seen[None], {d1: seen[d1] for d1 in ALLOWED_DIGITS}), n)
        for seen, n in zip(known, asked, strict=True)
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
