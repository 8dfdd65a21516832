import torch

from metis_core.algorithms import agg_loss
from metis_core.batch import micro_batch_weight, micro_batches, pack_sequences


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
