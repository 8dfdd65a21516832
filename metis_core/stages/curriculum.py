"""history, judge, select: which prompts get this iteration's rollout budget."""

from __future__ import annotations

from pathlib import Path

from metis_core.config import RunConfig
from metis_core.judgment import (
    JUDGMENT_REGEX,
    CalibrationExample,
    calibration_memory,
    judgment_messages,
    parse_judgment,
)
from metis_core.run import Run, read_json, write_json
from metis_core.samplers.base import domain_quota


def history(run: Run, step: int) -> dict[str, list[CalibrationExample]]:
    """The calibration memory of each domain: K recent training outcomes spread over their range
    of variance.

    Across domains: a candidate sees K examples from its own domain when that domain's recent
    history (the last `judge.memory_window` outcomes of it) has K, topped up from the recent
    history of all domains when it has fewer; so early in a mixed run the judge still sees K
    examples, and later it calibrates on outcomes of its own kind (code variances are not
    arithmetic ones). Before any history exists (step 0) every memory is empty; see `select`.
    """
    k, window = run.cfg.judge.k_examples, run.cfg.judge.memory_window

    def examples(domain: str | None) -> list[CalibrationExample]:
        recent = run.store.recent_variances(run.run_id, step, window, domain)
        return [CalibrationExample(p, v) for p, v, _ in recent]

    shared = calibration_memory(examples(None), k)
    memories = {}
    for domain in run.cfg.domains_in_use():
        own = calibration_memory(examples(domain), k)
        memories[domain] = own + [e for e in shared if e not in own][: k - len(own)]
    return memories


def judgment_regex(cfg: RunConfig) -> str | None:
    """What judgments are constrained to, or None when they are sampled freely."""
    return JUDGMENT_REGEX if cfg.judge.constrained else None


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
    run: Run, rows: list[dict], memory: dict[str, list[CalibrationExample]]
) -> list[dict]:
    """The policy's judgment of each pool row: v_hat (None when unparsable), the judgment text,
    and the judgment prompt / emitted token ids (with the engine's log-probs of them) that the
    judge loss trains on. One engine call for all rows."""
    cfg = run.cfg.judge
    tok = run.engine.tokenizer
    prompts = []
    for row in rows:
        messages = judgment_messages(
            row["prompt"],
            memory[row["domain"]],
            run.truncate,
            cfg.example_max_tokens,
            cfg.candidate_max_tokens,
        )
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(tok.encode(text, add_special_tokens=False))
    outputs = run.engine.generate(
        prompts,
        n=1,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        regex=judgment_regex(run.cfg),
    )
    return [
        {
            "v_hat": parse_judgment(out.text).v_hat,
            "text": out.text,
            "prompt_token_ids": prompt,
            "judgment_token_ids": out.token_ids,
            "judgment_logprobs": out.logprobs,
        }
        for prompt, (out,) in zip(prompts, outputs, strict=True)
    ]


def judge(run: Run, step: int, memory: dict[str, list[CalibrationExample]]) -> Path:
    """The policy predicts v_hat for every candidate (for samplers that ask for judgments).

    Writes judgments.json: per candidate its id and, when judged, what `judge_rows` returns.
    """
    candidates = draw_candidates(run, step)
    rows = [{"prompt_id": c["prompt_id"]} for c in candidates]
    if run.sampler.needs_judgment:
        for row, judged in zip(rows, judge_rows(run, candidates, memory), strict=True):
            row.update(judged)
    memory_size = min(len(memory[c["domain"]]) for c in candidates)
    return write_json(
        run.step_file(step, "judgments"), {"memory_size": memory_size, "candidates": rows}
    )


def sampler_scores(run: Run, candidates: list[dict]) -> list[float]:
    """The sampler's score of each candidate (judged ones carry `v_hat`; an unparsable judgment
    scores judge.parse_failure_score)."""
    v_hat = None
    if run.sampler.needs_judgment:
        fallback = run.cfg.judge.parse_failure_score
        v_hat = [fallback if c["v_hat"] is None else c["v_hat"] for c in candidates]
    return run.sampler.score([c["prompt_id"] for c in candidates], v_hat)


def select(run: Run, step: int, judgments_file: Path) -> Path:
    """The sampler turns scores into an allocation: Top-B of v_hat for METIS.

    Warm-up: while step < curriculum.warmup_steps, or while the calibration memory is still shorter
    than K, the allocation is uniform over the candidates: the judge is not calibrated yet, and
    uniform picks give the history unbiased outcomes to calibrate on. Its judgments are still
    scored and trained.
    """
    data = read_json(judgments_file)
    candidates = data["candidates"]
    ids = [c["prompt_id"] for c in candidates]
    warmup = step < run.cfg.curriculum.warmup_steps or (
        run.sampler.needs_judgment and data["memory_size"] < run.cfg.judge.k_examples
    )
    scores = [0.0] * len(ids) if warmup else sampler_scores(run, candidates)
    chosen = run.sampler.select(scores, run.cfg.curriculum.batch_prompts, run.rng(step, "select"))
    return write_json(
        run.step_file(step, "selection"), {"prompt_ids": [ids[i] for i in chosen], "warmup": warmup}
    )
