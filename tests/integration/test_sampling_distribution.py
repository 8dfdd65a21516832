"""The trainer scores sampled tokens under the distribution the engine sampled them from: the
rollout temperature, the decoding constraint's mask, the engine's precision gap measured and, past
the limit, refused. Real vLLM and DeepSpeed on the tiny Llama, with the engine in fp32 (the
default) and in bf16."""

import pytest
import torch

from metis_core.algorithms import logprob_mismatch
from metis_core.batch import pack_grouped, response_values
from metis_core.judgment import JUDGMENT_DIGITS_REGEX, JUDGMENT_PREFIX, JUDGMENT_REGEX

pytestmark = pytest.mark.integration

FP32_TOLERANCE = 1e-4  # mean gap per token, both fp32: measured ~1e-6
BF16_TOLERANCE = 0.05  # bf16 engine vs fp32 trainer, same weights: SmolLM2 measured 0.03
PROMPTS = ["What is 2 + 3? The answer is", "Name a colour:", "12 * 4 ="]


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def engine(request, tiny_model):
    from metis_core.engine.vllm_engine import PolicyEngine

    eng = PolicyEngine(tiny_model, request.param, 512, seed=0)
    eng.dtype = request.param
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def trainer(tiny_model):
    from metis_core.config import TrainerConfig
    from metis_core.trainer.policy_trainer import PolicyTrainer

    return PolicyTrainer(
        tiny_model, TrainerConfig(micro_batch_size=64, precision="fp32"), max_response_tokens=16
    )


def tolerance(engine) -> float:
    return FP32_TOLERANCE if engine.dtype == "float32" else BF16_TOLERANCE


def sampled(engine, temperature, regex=None, n=4, top_p=1.0):
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    groups = engine.generate(
        prompts, n=n, temperature=temperature, top_p=top_p, max_tokens=12, regex=regex, seed=0
    )
    rows = [(p, c) for p, g in zip(prompts, groups, strict=True) for c in g]
    return [p for p, _ in rows], [c.token_ids for _, c in rows], [c.logprobs for _, c in rows]


def gap(trainer, prompts, responses, engine_lp, temperature, masks=None, top_p=1.0):
    batch = pack_grouped(prompts, responses, trainer.pad_id, masks)
    with torch.no_grad():
        lp = trainer._logprobs(batch, temperature, top_p)
    return logprob_mismatch(lp, response_values(batch.loss_mask, engine_lp), batch.loss_mask)


def test_rollout_logprobs_match_the_engine_at_the_rollout_temperature(engine, trainer):
    engine.load_weights(trainer.named_weights())
    prompts, responses, engine_lp = sampled(engine, temperature=0.5)
    at_rollout_t = gap(trainer, prompts, responses, engine_lp, 0.5)
    assert at_rollout_t["gap_mean"] < tolerance(engine), at_rollout_t
    # the bias fixed here: scoring at temperature 1 what was sampled at 0.5
    at_one = gap(trainer, prompts, responses, engine_lp, 1.0)
    assert at_one["gap_mean"] > 10 * at_rollout_t["gap_mean"]


def test_rollout_logprobs_match_the_engine_under_top_p(engine, trainer):
    engine.load_weights(trainer.named_weights())
    prompts, responses, engine_lp = sampled(engine, temperature=0.5, top_p=0.3)
    nucleus = gap(trainer, prompts, responses, engine_lp, 0.5, top_p=0.3)
    assert nucleus["gap_mean"] < tolerance(engine), nucleus
    whole = gap(trainer, prompts, responses, engine_lp, 0.5)
    assert whole["gap_mean"] > 10 * nucleus["gap_mean"], (whole, nucleus)


@pytest.mark.parametrize(
    "regex",
    [
        JUDGMENT_REGEX,
        JUDGMENT_DIGITS_REGEX,
        r"\[(?:add|mul)\(a=[0-9]{1,3}, b=[0-9]{1,3}\)\]",  # the shape of a function-call constraint
    ],
)
def test_constrained_logprobs_are_those_of_the_masked_distribution(engine, trainer, regex):
    engine.load_weights(trainer.named_weights())
    prompts, responses, engine_lp = sampled(engine, temperature=1.0, regex=regex)
    masks = trainer._bitmasks(responses, [regex] * len(responses))
    masked = gap(trainer, prompts, responses, engine_lp, 1.0, masks)
    assert masked["gap_mean"] < tolerance(engine), masked
    unmasked = gap(trainer, prompts, responses, engine_lp, 1.0)
    assert unmasked["gap_mean"] > 10 * masked["gap_mean"]


def test_an_update_with_logprobs_too_far_from_the_engine_stops_before_changing_weights(
    engine, trainer
):
    from metis_core.ports import RolloutBatch
    from metis_core.trainer.rollout_correction import EngineTrainerMismatch

    engine.load_weights(trainer.named_weights())
    prompts, responses, engine_lp = sampled(engine, temperature=0.5)
    before = {n: p.detach().clone() for n, p in trainer.named_weights()}
    # what a stale engine or a wrong temperature looks like: the engine's log-probs at another T
    batch = RolloutBatch(
        prompts,
        responses,
        [0.5, -0.5] * (len(prompts) // 2),
        engine_logprobs=engine_lp,
        temperature=1.0,
    )
    with pytest.raises(EngineTrainerMismatch, match="max_logprob_gap"):
        trainer.train_step(batch, None, lam=0.0)
    assert all(torch.equal(p, before[n]) for n, p in trainer.named_weights())
    trainer.engine.zero_grad()


def test_expected_judgment_is_the_mean_of_sampled_judgments(engine):
    """Expected-value scoring reads the same masked distribution the constrained sampler draws
    from: over many samples, the mean sampled v_hat converges to it."""
    from types import SimpleNamespace

    from metis_core.judgment import parse_judgment
    from metis_core.stages.curriculum import expected_judgments

    prompts = [engine.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    prefix = engine.tokenizer.encode(JUDGMENT_PREFIX, add_special_tokens=False)
    run = SimpleNamespace(
        engine=engine, cfg=SimpleNamespace(judge=SimpleNamespace(temperature=1.0))
    )
    judge_prompts = [p + prefix for p in prompts]  # as judge_rows builds them
    expected = [score.value for score in expected_judgments(run, judge_prompts)]
    n = 400
    groups = engine.generate(
        judge_prompts, n=n, temperature=1.0, max_tokens=12, regex=JUDGMENT_DIGITS_REGEX, seed=1
    )
    for value, group in zip(expected, groups, strict=True):
        assert all(len(c.token_ids) <= 4 for c in group)  # two digits, `}` (and an end token)
        texts = [JUDGMENT_PREFIX + c.text for c in group]
        draws = torch.tensor([parse_judgment(t).v_hat for t in texts], dtype=torch.float64)
        standard_error = max(draws.std().item() / n**0.5, 1e-3)
        assert 0.0 <= value <= 0.25
        assert abs(draws.mean().item() - value) < 5 * standard_error


def test_expected_scores_reuse_the_sampled_judgments_log_probs(engine):
    """The sampled judgment's first two steps are two of the four distributions the expected
    score needs: read from its top log-probs, the score is the one four one-token requests give,
    for two requests instead of four."""
    from types import SimpleNamespace

    from metis_core.stages.curriculum import DIGITS, expected_judgments

    prefix = engine.tokenizer.encode(JUDGMENT_PREFIX, add_special_tokens=False)
    judge_prompts = [engine.tokenizer.encode(p, add_special_tokens=False) + prefix for p in PROMPTS]
    run = SimpleNamespace(
        engine=engine, cfg=SimpleNamespace(judge=SimpleNamespace(temperature=1.0))
    )
    asked = expected_judgments(run, judge_prompts)
    groups = engine.generate(
        judge_prompts,
        n=1,
        temperature=1.0,
        max_tokens=12,
        top_logprobs=DIGITS,
        regex=JUDGMENT_DIGITS_REGEX,
        seed=3,
    )
    reused = expected_judgments(run, judge_prompts, [c for (c,) in groups])
    assert [score.requests for score in asked] == [4] * len(PROMPTS)
    assert [score.requests for score in reused] == [2] * len(PROMPTS)
    for a, r in zip(asked, reused, strict=True):
        assert 0.0 <= r.value <= 0.25
        assert r.value == pytest.approx(a.value, abs=tolerance(engine) / 10)
    # a judgment sampled without top log-probs, or one whose first token is not a digit, asks
    plain = engine.generate(
        judge_prompts, n=1, temperature=1.0, max_tokens=12, regex=JUDGMENT_DIGITS_REGEX, seed=3
    )
    fallback = expected_judgments(run, judge_prompts, [c for (c,) in plain])
    assert [score.requests for score in fallback] == [4] * len(PROMPTS)
    assert [s.value for s in fallback] == pytest.approx([a.value for a in asked], abs=1e-6)
