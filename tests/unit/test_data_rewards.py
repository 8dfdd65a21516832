import json

import pytest

from metis_core.config import DataConfig, TaskSpec
from metis_core.data.pool import DatasetError, build_pool, prompt_id
from metis_core.rewards import REWARDS, register_reward, score_completions
from metis_core.rewards.arithmetic import candidate_answers, reward_for_task

SMALL = DataConfig(
    tasks=[
        TaskSpec(
            name="chain_sum",
            size=40,
            params={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
            difficulty="easy",
        ),
        TaskSpec(
            name="chain_sum",
            size=40,
            params={"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2},
            difficulty="hard",
        ),
    ],
    heldout_fraction=0.25,
)


def test_pool_is_seeded_stable_and_split_disjointly():
    a, b = build_pool(SMALL), build_pool(SMALL)
    assert a["prompt_id"] == b["prompt_id"]
    assert len(set(a["prompt_id"])) == a.num_rows  # deduplicated
    train = {r["prompt_id"] for r in a if r["split"] == "train"}
    held = {r["prompt_id"] for r in a if r["split"] == "heldout"}
    assert train and held and not train & held
    assert {"easy", "hard"} == set(a["difficulty"])
    row = a[0]
    assert row["prompt_id"] == prompt_id(row["task"], row["prompt"], row["answer"])


def test_pool_from_file_and_malformed_rows(tmp_path):
    good = tmp_path / "pool.jsonl"
    good.write_text(
        "\n".join(
            json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(20)
        )
    )
    pool = build_pool(DataConfig(file=str(good)))
    assert pool.num_rows == 20 and set(pool["task"]) == {"file"}

    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "x", "answer": "1"}))
    with pytest.raises(DatasetError, match="missing column"):
        build_pool(DataConfig(file=str(missing)))

    empty_prompt = tmp_path / "empty.jsonl"
    empty_prompt.write_text(
        json.dumps({"prompt": "ok", "answer": "1"})
        + "\n"
        + json.dumps({"prompt": "  ", "answer": "2"})
    )
    with pytest.raises(DatasetError, match="row 1"):
        build_pool(DataConfig(file=str(empty_prompt)))

    with pytest.raises(DatasetError, match="not found"):
        build_pool(DataConfig(file=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DatasetError, match="use one of"):
        (tmp_path / "pool.txt").write_text("x")
        build_pool(DataConfig(file=str(tmp_path / "pool.txt")))


def test_bad_generator_knobs_name_the_task():
    with pytest.raises(DatasetError, match=r"data.tasks\[0\] \(reasoning_gym: chain_sum"):
        build_pool(
            DataConfig(tasks=[TaskSpec(name="chain_sum", size=4, params={"no_such_knob": 1})])
        )


def test_lenient_answer_readings():
    assert candidate_answers("42.\nmore text") == ["42"]
    assert candidate_answers("forty-two, i.e. 42") == ["forty-two, i.e. 42", "42"]
    assert candidate_answers("") == []


def test_reasoning_gym_reward_right_and_wrong():
    row = build_pool(SMALL)[0]
    right = score_completions(
        reward_for_task(row["task"]), [row["answer"], f"{row['answer']}.", "I think 99999"], row
    )
    assert right[0][:2] == [1.0, 1.0] and right[0][2] == 0.0
    assert right[1] == [None, None, None]


def test_math_verify_reward_for_file_pools():
    assert reward_for_task("file") == "math_verify"
    scores, _ = score_completions(
        "math_verify", ["1/2", "0.5", "3"], {"answer": "\\frac{1}{2}", "task": "file"}
    )
    assert scores[0] == 1.0 and scores[2] == 0.0


def test_a_scorer_that_raises_gives_zero_and_a_reason():
    @register_reward("test_boom")
    def boom(completions, **_):
        raise RuntimeError("scorer exploded")

    try:
        scores, reasons = score_completions("test_boom", ["a", "b"], {"prompt_id": "p"})
        assert scores == [0.0, 0.0]
        assert "scorer exploded" in reasons[0]
    finally:
        REWARDS.pop("test_boom")


def test_not_applicable_counts_zero_with_reason():
    @register_reward("test_none")
    def none(completions, **_):
        return [None, 2.0]

    try:
        scores, reasons = score_completions("test_none", ["a", "b"], {})
        assert scores == [0.0, 1.0]  # clamped to [0, 1]
        assert reasons[0] and reasons[1] is None
    finally:
        REWARDS.pop("test_none")
