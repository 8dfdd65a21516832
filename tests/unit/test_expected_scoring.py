"""Expected-value scoring (judge.scoring: expected) on a fake engine: which digit distributions
it asks the engine for, given what the sampled judgment already saw, and how it weighs them."""

from types import SimpleNamespace

import pytest

from metis_core.ports import Completion
from metis_core.stages.curriculum import expected_judgments
from tests.unit.stage_fakes import CharTokenizer


def test_expected_scores_ask_only_for_the_distributions_the_judgment_did_not_pass():
    """A sampled judgment that drew tenths digit 1 holds the tenths distribution and the
    hundredths one after 1: the score asks for the hundredths after 0 and after 2, nothing else,
    and weighs each answer 0.dd by its probability."""
    tok = CharTokenizer()
    digit = {d: ord(str(d)) for d in range(10)}

    class Scorer:
        tokenizer = tok

        def __init__(self) -> None:
            self.asked: list[tuple[list[int], list[int]]] = []

        def next_token_logprobs(self, prompts, allowed, temperature):
            self.asked += list(zip(prompts, allowed, strict=True))
            return [{t: 0.0 for t in a} for a in allowed]  # uniform over what is allowed

    engine = Scorer()
    run = SimpleNamespace(engine=engine, cfg=SimpleNamespace(judge=SimpleNamespace(temperature=1)))
    prompt = [7, 7]
    # drew "1" with P(tenths = 0, 1, 2) = 0, 1, 0 and then "3" with P(hundredths = 3) = 1
    drawn = Completion(
        [digit[1], digit[3], ord("}")],
        "13}",
        [0.0, 0.0, 0.0],
        [
            {digit[1]: 0.0, digit[0]: float("-inf"), digit[2]: float("-inf")},
            {digit[3]: 0.0, **{digit[d]: float("-inf") for d in range(10) if d != 3}},
        ],
    )
    (score,) = expected_judgments(run, [prompt], [drawn])
    assert score.value == pytest.approx(0.13)
    assert score.requests == 2
    assert engine.asked == [
        ([7, 7, digit[0]], [digit[d] for d in range(10)]),
        ([7, 7, digit[2]], [digit[d] for d in range(6)]),
    ]
    # top log-probs that miss an allowed digit (crowded out by multi-digit tokens) are not used
    engine.asked.clear()
    crowded = Completion(drawn.token_ids, drawn.text, drawn.logprobs,
                         [drawn.top_logprobs[0], {digit[3]: 0.0}])  # fmt: skip
    (score,) = expected_judgments(run, [prompt], [crowded])
    assert score.requests == 3
    assert [p for p, _ in engine.asked] == [[7, 7, digit[d]] for d in (0, 1, 2)]
    # without a sampled judgment: all four distributions are asked for, uniform gives the mean
    engine.asked.clear()
    (score,) = expected_judgments(run, [prompt], None)
    assert score.requests == 4 == len(engine.asked)
    assert engine.asked[0] == (prompt, [digit[0], digit[1], digit[2]])
    uniform = sum(p * v for p, v in [(1 / 3 / 10, x / 100) for x in range(20)])
    uniform += sum(1 / 3 / 6 * (20 + x) / 100 for x in range(6))
    assert score.value == pytest.approx(uniform)
