import re

import pytest

from metis_core.judgment import (
    JUDGMENT_REGEX,
    CalibrationExample,
    calibration_memory,
    judgment_messages,
    parse_judgment,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{0.19}", 0.19),
        ("I think \\boxed{ 0.05 } maybe", 0.05),
        ("\\boxed{0.1} then \\boxed{0.2}", 0.2),  # the last box is the answer
        ("\\boxed{4.9}", 0.25),  # clamped
        ("\\boxed{-1}", 0.0),
        ("\\boxed{.125}", 0.125),
        ("\\boxed{1e-2}", 0.01),
    ],
)
def test_parse_judgment_values(text, expected):
    assert parse_judgment(text).v_hat == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0.2",
        "\\boxed{}",
        "\\boxed{abc}",
        "boxed{0.1}",
        "\\boxed{nan}",
        "The answer is 17",
        None,
    ],
)
def test_parse_judgment_garbage_is_a_failure(text):
    parsed = parse_judgment(text)
    assert not parsed.parsed and parsed.v_hat is None


def test_constrained_regex_only_admits_parsable_judgments():
    for sample in ["\\boxed{0.00}", "\\boxed{0.07}", "\\boxed{0.19}", "\\boxed{0.25}"]:
        assert re.fullmatch(JUDGMENT_REGEX, sample)
        assert parse_judgment(sample).parsed
    for outside in [
        "\\boxed{4.9}",
        "\\boxed{0.26}",
        "\\boxed{0.29}",
        "\\boxed{0.3}",
        "\\boxed{1.00}",
    ]:
        assert not re.fullmatch(JUDGMENT_REGEX, outside)
    # every value the regex admits is inside [0, 0.25], so nothing is clamped onto the ceiling
    admitted = [
        f"\\boxed{{0.{i:02d}}}"
        for i in range(100)
        if re.fullmatch(JUDGMENT_REGEX, f"\\boxed{{0.{i:02d}}}")
    ]
    assert len(admitted) == 26


def test_calibration_memory_spreads_over_variance():
    recent = [
        CalibrationExample(f"p{i}", v)
        for i, v in enumerate([0.0, 0.0, 0.0, 0.0, 0.1875, 0.25, 0.0])
    ]
    memory = calibration_memory(recent, 3)
    # ranks 0, 3 and 6 of the variance order (stable: the older of equal variances first)
    assert [(m.prompt, m.variance) for m in memory] == [("p0", 0.0), ("p3", 0.0), ("p5", 0.25)]
    assert min(m.variance for m in memory) == 0.0 and max(m.variance for m in memory) == 0.25
    assert calibration_memory(recent, 0) == []
    assert calibration_memory(recent[:2], 3) == recent[:2]
    assert calibration_memory([], 3) == []


def test_judgment_prompt_holds_examples_then_candidate_and_truncates():
    memory = [CalibrationExample("one two three four", 0.1875)]
    msgs = judgment_messages(
        "the candidate problem", memory, lambda s, n: " ".join(s.split()[:n]), 2, 10
    )
    text = msgs[0]["content"]
    assert "Problem: one two\nSpread: \\boxed{0.19}" in text
    assert text.endswith("Problem: the candidate problem\nSpread:")
    assert "three" not in text


def test_expected_judgment_hand_computed():
    import math

    from metis_core.judgment import expected_judgment

    log = math.log
    # tenths: 0 with 1/2, 1 with 1/4, 2 with 1/4; hundredths: 0.00 | 0.1x uniform | 0.2x 0 or 5
    tenths = {0: log(0.5), 1: log(0.25), 2: log(0.25)}
    hundredths = {
        0: {0: 0.0},
        1: {d: log(0.1) for d in range(10)},
        2: {0: log(0.5), 5: log(0.5)},
    }
    expected = 0.5 * 0.0 + 0.25 * 0.145 + 0.25 * 0.225
    assert expected_judgment(tenths, hundredths) == pytest.approx(expected)


def test_expected_judgment_renormalises_over_allowed_digits():
    from metis_core.judgment import expected_judgment

    # unnormalised log-probs and digits the constraint forbids (3 as tenths, 7 after 0.2) are ignored
    tenths = {0: -5.0, 1: -5.0, 2: -1e9, 3: 0.0}
    hundredths = {0: {2: -3.0}, 1: {4: -0.1, 5: float("-inf")}, 2: {7: 0.0, 1: -1.0}}
    assert expected_judgment(tenths, hundredths) == pytest.approx(0.5 * 0.02 + 0.5 * 0.14)
    with pytest.raises(ValueError, match="allowed digit"):
        expected_judgment({5: 0.0}, hundredths)
