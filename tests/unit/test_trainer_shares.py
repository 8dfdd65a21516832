"""Each data-parallel rank's share of a batch (metis_core/trainer/shares.py): whole prompt groups,
group i and judgment i on rank i mod N, every row on exactly one rank, no rank left empty."""

import pytest

from metis_core.ports import JudgmentBatch, RolloutBatch
from metis_core.trainer.shares import (
    EmptyShare,
    judgment_share,
    prompt_groups,
    rollout_share,
    share_rows,
)


def rollouts(groups: int, n: int) -> RolloutBatch:
    """`groups` prompts ([g]) x `n` rollouts; row r's response is [r], its advantage r."""
    rows = [(g, r) for g in range(groups) for r in range(g * n, (g + 1) * n)]
    return RolloutBatch(
        [[g] for g, _ in rows],
        [[r] for _, r in rows],
        [float(r) for _, r in rows],
        engine_logprobs=[[-r / 10] for _, r in rows],
        temperature=0.7,
        top_p=0.9,
        regexes=[f"re{g}" if g % 2 else None for g, _ in rows],
    )


def judgments(count: int) -> JudgmentBatch:
    return JudgmentBatch([[i] for i in range(count)], [[10 + i] for i in range(count)],
                         [i / 10 for i in range(count)], baseline=0.3,
                         engine_logprobs=[[-i] for i in range(count)], temperature=0.5,
                         regexes=["j"] * count)  # fmt: skip


def test_groups_are_runs_of_the_same_prompt():
    assert prompt_groups([[1], [1], [2], [2], [2], [1]]) == [0, 0, 1, 1, 1, 2]
    assert prompt_groups([]) == []
    assert share_rows([0, 0, 1, 1, 2, 3], 0, 2) == [0, 1, 4]
    assert share_rows([0, 0, 1, 1, 2, 3], 1, 2) == [2, 3, 5]
    with pytest.raises(ValueError, match="not one of 2 ranks"):
        share_rows([0], 2, 2)


def test_every_row_lands_on_one_rank_with_its_group_and_its_fields():
    batch = rollouts(groups=5, n=3)
    shares = [rollout_share(batch, rank, 2) for rank in range(2)]
    # group i (prompt [i]) on rank i mod 2, whole
    assert [sorted({p[0] for p in s.prompt_ids}) for s in shares] == [[0, 2, 4], [1, 3]]
    assert sorted(r[0] for s in shares for r in s.response_ids) == list(range(15))
    for share in shares:
        for prompt, response, advantage, lp, regex in zip(
            share.prompt_ids, share.response_ids, share.advantages, share.engine_logprobs,
            share.regexes, strict=True,
        ):  # fmt: skip
            row = response[0]  # each field still belongs to its own row
            assert prompt == [row // 3] and advantage == row and lp == [-row / 10]
            assert regex == (f"re{row // 3}" if (row // 3) % 2 else None)
        assert (share.temperature, share.top_p) == (0.7, 0.9)
    assert rollout_share(batch, 0, 1) == batch


def test_optional_fields_stay_absent():
    batch = RolloutBatch([[1], [2]], [[3], [4]], [0.5, -0.5])
    share = rollout_share(batch, 1, 2)
    assert share == RolloutBatch([[2]], [[4]], [-0.5])


def test_judgment_i_goes_with_group_i():
    judged = judgments(5)
    shares = [judgment_share(judged, rank, 2) for rank in range(2)]
    assert [s.prompt_ids for s in shares] == [[[0], [2], [4]], [[1], [3]]]
    assert [s.judgment_ids for s in shares] == [[[10], [12], [14]], [[11], [13]]]
    assert [s.rewards for s in shares] == [[0.0, 0.2, 0.4], [0.1, 0.3]]
    assert [s.engine_logprobs for s in shares] == [[[0], [-2], [-4]], [[-1], [-3]]]
    assert all(s.baseline == 0.3 and s.temperature == 0.5 for s in shares)
    assert judgment_share(None, 1, 2) is None
    empty = judgments(0)
    assert judgment_share(empty, 1, 2) is empty


def test_a_rank_without_rows_is_refused():
    with pytest.raises(EmptyShare, match="1 prompt groups cannot give each of 2 ranks one"):
        rollout_share(rollouts(groups=1, n=4), 1, 2)
    with pytest.raises(EmptyShare, match="3 judgments cannot give each of 4 ranks"):
        judgment_share(judgments(3), 3, 4)
