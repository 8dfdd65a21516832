import torch

from metis_core.algorithms import agg_loss
from metis_core.batch import (
    micro_batch_weight,
    micro_batches,
    pack_grouped,
    pack_sequences,
    split_to_fit,
)
from metis_core.group_sequences import group_sequences, micro_batch_slices, one_pass_tokens


def test_pack_sequences_marks_response_labels():
    b = pack_sequences([[1, 2], [3]], [[7, 8, 9], [4]], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # labels are input_ids[:, 1:]; response tokens 7,8,9 sit at label positions 1..3
    assert b.response_mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]


def test_weighted_micro_batches_reproduce_whole_batch_aggregation():
    torch.manual_seed(0)
    loss = torch.rand(7, 5)
    mask = (torch.rand(7, 5) > 0.3).float()
    mask[:, 0] = 1
    for mode in (
        "token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum-norm",
    ):
        whole = agg_loss(loss, mask, mode, max_tokens=5)
        parts = sum(
            agg_loss(loss[s], mask[s], mode, max_tokens=5)
            * micro_batch_weight(mask[s], float(mask.sum()), 7, mode)
            for s in micro_batches([5] * 7, 3, 10_000)
        )
        assert torch.isclose(whole, parts), mode


def test_micro_batches_are_bounded_by_rows_and_by_padded_tokens():
    spans = lambda cuts: [(s.start, s.stop) for s in cuts]  # noqa: E731
    assert spans(micro_batches([5] * 7, 3, 10_000)) == [(0, 3), (3, 6), (6, 7)]
    # 100-token rows, 250 tokens: two rows fit, a third would pad to 300
    assert spans(micro_batches([100] * 5, 64, 250)) == [(0, 2), (2, 4), (4, 5)]
    # one long row among short ones: it pads its neighbours, so it is cut off from them
    assert spans(micro_batches([10, 10, 10, 200, 10, 10], 64, 300)) == [(0, 3), (3, 4), (4, 6)]
    # a row longer than the bound is a micro-batch of its own, never dropped
    assert spans(micro_batches([10, 900, 10], 64, 300)) == [(0, 1), (1, 2), (2, 3)]
    assert micro_batches([], 4, 100) == []
    for lengths in ([7, 3, 9, 1, 4, 4, 12, 2], [50] * 9):
        cuts = micro_batches(lengths, 4, 40)
        assert [i for s in cuts for i in range(s.start, s.stop)] == list(range(len(lengths)))
        for s in cuts:
            rows = lengths[s]
            assert len(rows) <= 4 and (len(rows) == 1 or len(rows) * max(rows) <= 40)


def test_one_pass_tokens_is_the_group_layouts_size():
    # one prompt with 8 completions of 20 tokens, then 7 prompts with one each: the first group's
    # sequence is 40 + 8 x 19 tokens and every group pads to it
    prompts = [[1] * 40] * 8 + [[2 + i] * 40 for i in range(7)]
    responses = [[9] * 20] * 15
    layout = group_sequences(pack_grouped(prompts, responses, pad_id=0), pad_id=0)
    assert one_pass_tokens(prompts, responses) == layout.input_ids.numel() == 8 * (40 + 8 * 19)
    assert one_pass_tokens(prompts, responses) > 15 * 60  # more than rows x the longest row
    # rows that share only part of their prompts (judgments) are one group
    shared = [[5] * 30 + [i] * 10 for i in range(4)]
    assert one_pass_tokens(shared, [[9] * 4] * 4) == 30 + 4 * (10 + 3)


def test_split_to_fit_halves_until_every_part_fits_or_is_one_row():
    spans = lambda cuts: [(s.start, s.stop) for s in cuts]  # noqa: E731
    cost = [10, 10, 10, 10, 300, 10, 10, 10]
    tokens = lambda s: len(cost[s]) * max(cost[s])  # noqa: E731
    cuts = split_to_fit([slice(0, 4), slice(4, 8)], tokens, 100)
    assert spans(cuts) == [(0, 4), (4, 5), (5, 6), (6, 8)]
    assert all(s.stop - s.start == 1 or tokens(s) <= 100 for s in cuts)
    assert split_to_fit([], tokens, 100) == []
    prompts = [[1] * 40] * 8 + [[2 + i] * 40 for i in range(7)]
    responses = [[9] * 20] * 15
    fitted = micro_batch_slices(prompts, responses, 64, 1000, one_pass=True)
    assert micro_batch_slices(prompts, responses, 64, 1000, one_pass=False) == micro_batches(
        [60] * 15, 64, 1000
    )
    assert [i for s in fitted for i in range(s.start, s.stop)] == list(range(15))
    assert all(one_pass_tokens(prompts[s], responses[s]) <= 1000 for s in fitted)


def test_length_buckets_minimise_padding():
    from metis_core.batch import length_buckets

    lengths = [4, 24, 3, 5, 4, 23, 4, 3]
    buckets = length_buckets(lengths, 2)
    assert sorted(i for b in buckets for i in b) == list(range(8))
    assert [sorted(lengths[i] for i in b) for b in buckets] == [[3, 3, 4, 4, 4, 5], [23, 24]]
    assert len(length_buckets(lengths, 1)) == 1
    equal = length_buckets([7, 7, 7], 3)  # any split pads nothing: all 21 positions are real
    assert sorted(i for b in equal for i in b) == [0, 1, 2]
    assert sum(len(b) * 7 for b in equal) == 21
