"""bench/stage_work.py counts each stage's model work by hand-checkable rules."""

import json

from pytest import approx

from bench.stage_work import ModelSize, packed_tokens, stage_work, unique_prefix_tokens


def test_an_ideal_prefix_cache_computes_each_distinct_prefix_once():
    assert unique_prefix_tokens([[1, 2, 3], [1, 2, 4], [1, 5]]) == 3 + 1 + 1
    assert unique_prefix_tokens([[7, 8], [7, 8]]) == 2  # the same prompt twice: once
    assert unique_prefix_tokens([[1], [2]]) == 2


def test_the_trainer_runs_a_groups_prompt_once():
    # rollouts: two completions of one prompt share it
    assert packed_tokens([[1, 2, 3], [1, 2, 3]], [[9], [9, 9]]) == 3 + 1 + 2
    # judgments: distinct prompts share their common prefix
    assert packed_tokens([[1, 2, 3], [1, 2, 4, 5]], [[9], [9]]) == 2 + (1 + 1) + (2 + 1)


def test_stage_work_of_a_step(tmp_path):
    judged = [
        {"prompt_id": "a", "prompt_token_ids": [1, 2, 3], "judgment_token_ids": [7, 8]},
        {"prompt_id": "b", "prompt_token_ids": [1, 2, 4], "judgment_token_ids": [7]},
        {"prompt_id": "c"},  # not judged (a sampler that scores without the policy)
    ]
    (tmp_path / "judgments.json").write_text(json.dumps({"candidates": judged}))
    rollouts = [
        {
            "prompt_id": "a",
            "prompt_token_ids": [1, 2, 3, 4],
            "completions": [{"token_ids": [5, 6]}, {"token_ids": [5]}],
        }
    ]
    (tmp_path / "rollouts.json").write_text(json.dumps(rollouts))
    size = ModelSize(body=10**12, head=10**11)  # so TFLOP reads as tokens

    work = stage_work(tmp_path, size, trains_judge=True)
    assert work["judge"] == approx(2 * (4 + 3) + 2 * 0.1 * 3)  # 4 prompt tokens + 3 decoded
    assert work["rollout"] == approx(2 * (4 + 3) + 2 * 0.1 * 3)
    # rollouts 4 + 3 tokens, the selected judgment "a" 3 + 2; trained: 3 + 2 tokens
    assert work["update"] == approx(6 * (7 + 5) + 6 * 0.1 * (3 + 2))
    without_judge = stage_work(tmp_path, size, trains_judge=False)
    assert without_judge["update"] == approx(6 * 7 + 6 * 0.1 * 3)
