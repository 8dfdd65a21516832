"""The one-pass layout of a micro-batch: a `GroupedBatch` (metis_core/batch.py) as one sequence
per shared-prefix group, its prefix and then its rows' suffixes, under a mask that keeps rows
apart (`GroupSequences`), and the non-empty blocks of that mask for attention that computes only
those (`AttentionBlocks`). metis_core/trainer/forward.py::sequence_logprobs runs it as one forward
pass. Pure torch: no model.

Shapes: G groups, L the longest group's sequence, P the longest prefix, R rows with fed tokens,
F the most tokens a row feeds, M trained tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from metis_core.batch import GroupedBatch, micro_batches, prefix_groups, split_to_fit


def one_pass_tokens(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> int:
    """Padded tokens of these rows laid out as `GroupSequences` (one sequence per shared-prefix
    group, padded to the longest): groups x the longest group's prefix plus its rows' fed tokens.
    Groups of unequal sizes can make this more than rows x the longest row."""
    prefixes, row_group = prefix_groups(prompts)
    suffix_len = [
        len(prompt) - len(prefixes[g]) + len(response)
        for prompt, response, g in zip(prompts, responses, row_group, strict=True)
    ]
    _, ends = sequence_spans([len(prefix) for prefix in prefixes], row_group, suffix_len)
    return len(prefixes) * max(ends)


def micro_batch_slices(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    max_rows: int,
    max_tokens: int,
    one_pass: bool,
) -> list[slice]:
    """Consecutive rows cut into micro-batches of at most `max_rows` rows and `max_tokens` padded
    tokens; in the one-pass layout, cut again until each fits as `GroupSequences` (groups of
    unequal sizes pad to more than rows x the longest row) or is one row."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    slices = micro_batches(lengths, max_rows, max_tokens)
    if not one_pass:
        return slices
    return split_to_fit(slices, lambda s: one_pass_tokens(prompts[s], responses[s]), max_tokens)


def sequence_spans(
    prefix_len: Sequence[int], row_group: Sequence[int], suffix_len: Sequence[int]
) -> tuple[list[int], list[int]]:
    """For the `GroupSequences` layout: where each row's fed suffix tokens (all but its last)
    start in its group's sequence, and each group's sequence length."""
    ends = list(prefix_len)
    starts = []
    for r, g in enumerate(row_group):
        starts.append(ends[g])
        ends[g] += max(int(suffix_len[r]) - 1, 0)
    return starts, ends


@dataclass
class GroupSequences:
    """A `GroupedBatch` as one sequence per group, for a single forward pass: the group's prefix,
    then its rows' suffixes one after the other (each without its last token, which only is a
    target). A 4D mask lets a suffix token see its prefix and the earlier tokens of its own row,
    and nothing else; positions restart after the prefix for every row. Each prefix still runs
    once, and the whole micro-batch is one pass instead of a prefix pass plus suffix passes.

    Shapes: G groups, L the longest group's sequence, M trained tokens."""

    input_ids: torch.Tensor
    """[G, L] token ids, right-padded."""
    position_ids: torch.Tensor
    """[G, L] each token's position in its own row (prefix, then that row's suffix)."""
    allowed: torch.Tensor
    """[G, 1, L, L] bool: which keys each query sees."""
    predictors: torch.Tensor
    """[M] index into the flattened [G * L] positions of the hidden state that predicts each
    trained token, in `loss_mask` order (row-major)."""
    targets: torch.Tensor
    """[M] the trained tokens, in the same order."""
    blocks: AttentionBlocks | None = None
    """The blocks of `allowed` that hold anything, for attention that computes only those;
    None where the dense mask costs less than twice as many scores (`attention_blocks`)."""


@dataclass
class AttentionBlocks:
    """`GroupSequences.allowed` as the blocks that hold anything: each group's prefix attending
    to itself, and each row's fed tokens attending to their prefix and to themselves. Attention
    over these costs G * P^2 + R * F * (P + F) scores instead of G * L^2, which matters when many
    long rows share a short prefix (a step's judgments: 1 x 1,287 tokens, 85.6 ms a layer in fp32
    on AMX, against 23.8 ms as 8 rows x 145 queries x 276 keys).

    Shapes: P the longest prefix, R rows with fed tokens, F the most tokens a row feeds. Positions
    index the flattened [G * L] sequences."""

    prefix_allowed: torch.Tensor
    """[G, 1, P, P] bool: the mask of each sequence's first P positions (its prefix, and for
    groups with a shorter one the start of its rows, whose results are dropped)."""
    prefix_positions: torch.Tensor
    """[sum of prefix lengths] where each real prefix token sits in the flattened sequences ..."""
    prefix_slots: torch.Tensor
    """[same] ... and in the flattened [G * P] prefix block."""
    row_groups: torch.Tensor
    """[R] each row's group: whose prefix keys it sees."""
    row_positions: torch.Tensor
    """[R, F] where each row's j-th fed token sits (its first token where j is past its end)."""
    row_valid: torch.Tensor
    """[R, F] bool: j is one of the row's fed tokens."""
    row_allowed: torch.Tensor
    """[R, 1, F, P + F] bool: row token j sees its group's prefix and its own tokens up to j
    (a padding slot sees the prefix's first token only)."""

    def to(self, device: torch.device) -> AttentionBlocks:
        return AttentionBlocks(*(getattr(self, f.name).to(device) for f in fields(self)))


PREFIX, PADDING = -1, -2  # segment ids beside row numbers


def group_sequences(batch: GroupedBatch, pad_id: int) -> GroupSequences:
    """Lay `batch` out one sequence per group (see GroupSequences)."""
    prefix_len = batch.prefix_len.tolist()
    row_group = batch.row_group.tolist()
    suffix_len = batch.suffix_mask.sum(dim=1).tolist()
    starts, ends = sequence_spans(prefix_len, row_group, suffix_len)
    g_count, length = len(prefix_len), max(ends)
    input_ids = torch.full((g_count, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((g_count, length), dtype=torch.long)
    segment = torch.full((g_count, length), PADDING, dtype=torch.long)
    for g, p in enumerate(prefix_len):
        input_ids[g, :p] = batch.prefix_ids[g, :p]
        position_ids[g, :p] = torch.arange(p)
        segment[g, :p] = PREFIX
    for r, g in enumerate(row_group):
        fed = max(int(suffix_len[r]) - 1, 0)
        span = slice(starts[r], starts[r] + fed)
        input_ids[g, span] = batch.suffix_ids[r, :fed]
        position_ids[g, span] = prefix_len[g] + torch.arange(fed)
        segment[g, span] = r
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    # a key is seen if it comes earlier and is prefix or the query's own row (padding sees
    # padding and the prefix: never NaN, never seen by a real token)
    allowed = causal & ((key == PREFIX) | (key == query))
    rows, cols = batch.loss_mask.bool().nonzero(as_tuple=True)
    groups = batch.row_group[rows]
    within = torch.where(
        cols == 0,
        batch.prefix_len[groups] - 1,
        torch.tensor(starts, dtype=torch.long)[rows] + cols - 1,
    )
    return GroupSequences(
        input_ids,
        position_ids,
        allowed.unsqueeze(1),
        groups * length + within,
        batch.suffix_ids[rows, cols],
        attention_blocks(allowed, prefix_len, row_group, starts, suffix_len, length),
    )


def attention_blocks(
    allowed: torch.Tensor,
    prefix_len: Sequence[int],
    row_group: Sequence[int],
    starts: Sequence[int],
    suffix_len: Sequence[int],
    length: int,
) -> AttentionBlocks | None:
    """The non-empty blocks of `allowed` ([G, L, L]), or None when computing the whole mask costs
    less than twice as many scores."""
    fed = [max(int(n) - 1, 0) for n in suffix_len]
    rows = [r for r, n in enumerate(fed) if n > 0]
    g_count, p = len(prefix_len), max(prefix_len)
    f = max((fed[r] for r in rows), default=0)
    if not rows or 2 * (g_count * p * p + len(rows) * f * (p + f)) > g_count * length * length:
        return None
    prefix_positions = torch.tensor(
        [g * length + t for g, n in enumerate(prefix_len) for t in range(n)], dtype=torch.long
    )
    prefix_slots = torch.tensor(
        [g * p + t for g, n in enumerate(prefix_len) for t in range(n)], dtype=torch.long
    )
    groups = torch.tensor([row_group[r] for r in rows], dtype=torch.long)
    j = torch.arange(f)
    row_fed = torch.tensor([fed[r] for r in rows], dtype=torch.long).unsqueeze(1)
    row_valid = j.unsqueeze(0) < row_fed  # [R, F]
    first = torch.tensor([starts[r] for r in rows], dtype=torch.long).unsqueeze(1)
    row_positions = groups.unsqueeze(1) * length + first + torch.where(row_valid, j, 0)
    sees_prefix = torch.arange(p).unsqueeze(0) < torch.tensor(prefix_len)[groups].unsqueeze(1)
    own = (j.unsqueeze(1) >= j.unsqueeze(0)).unsqueeze(0) & row_valid.unsqueeze(1)  # [R, F, F]
    row_allowed = torch.cat([sees_prefix.unsqueeze(1).expand(-1, f, -1), own], dim=2)
    row_allowed[:, :, 0] |= ~row_valid  # padding slots: the first prefix token, never NaN
    return AttentionBlocks(
        allowed[:, :p, :p].unsqueeze(1),
        prefix_positions,
        prefix_slots,
        groups,
        row_positions,
        row_valid,
        row_allowed.unsqueeze(1),
    )
