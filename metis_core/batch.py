"""Packing (prompt, response) token sequences into tensors for the update, and micro-batch weights.

Pure torch: no model, no DeepSpeed. Three layouts:

- `PackedBatch`: every row is prompt + response, right-padded. Simple; what a plain forward (and
  gradient checkpointing) needs.
- `GroupedBatch`: rows that share a prompt prefix are grouped, so each prefix runs through the
  model once. A step's B*n rollouts are B groups of n rows sharing their whole prompt; a step's
  judgments share their instruction (and, with `recent` memory, its examples). Completions on
  the CPU default are ~4 tokens after a ~43-token prompt, so this is most of the update's work
  saved.
- `GroupSequences`: a `GroupedBatch` as one sequence per group (prefix, then its rows' suffixes)
  with a mask that keeps rows apart, so a micro-batch is one forward pass. Models with
  sliding-window layers run the `GroupedBatch` as a prefix pass whose KV cache is gathered for
  suffix passes instead (metis_core/trainer/forward.py).

Shapes: N rows, G groups, P longest prefix, S longest suffix, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from metis_core.algorithms import LossAgg


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    """[N, L] right-padded token ids."""
    attention_mask: torch.Tensor
    """[N, L] 1 on real tokens."""
    response_mask: torch.Tensor
    """[N, L-1] 1 where the *label* (input_ids[:, 1:]) is a response token: the tokens we train."""


@dataclass
class GroupedBatch:
    prefix_ids: torch.Tensor
    """[G, P] each group's shared prefix, right-padded."""
    prefix_mask: torch.Tensor
    """[G, P] 1 on real prefix tokens."""
    prefix_len: torch.Tensor
    """[G] real length of each prefix (>= 1)."""
    row_group: torch.Tensor
    """[N] which group each row belongs to."""
    suffix_ids: torch.Tensor
    """[N, S] each row after its prefix (rest of its prompt, then its response), right-padded.
    Suffix token j is predicted by the hidden state before it: the prefix's last for j = 0."""
    suffix_mask: torch.Tensor
    """[N, S] 1 on real suffix tokens."""
    loss_mask: torch.Tensor
    """[N, S] 1 on response tokens: the tokens we train."""
    token_bitmask: torch.Tensor | None = None
    """[N, S, words] int32: the tokens a decoding constraint allowed before each position (32
    tokens a word, all bits set where unconstrained); None when no row was constrained."""

    @property
    def rows(self) -> int:
        return int(self.row_group.shape[0])


def pack_sequences(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> PackedBatch:
    _check(prompts, responses)
    length = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    n = len(prompts)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    response_mask = torch.zeros((n, length - 1), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        seq = list(p) + list(r)
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
        # label position t predicts token t+1: response tokens sit at labels len(p)-1 ... len(seq)-2
        response_mask[i, len(p) - 1 : len(seq) - 1] = 1.0
    return PackedBatch(input_ids, attention_mask, response_mask)


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of the prompts."""
    shortest = min(len(p) for p in prompts)
    for i in range(shortest):
        token = prompts[0][i]
        if any(p[i] != token for p in prompts):
            return i
    return shortest


def prefix_groups(prompts: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """(prefixes, row -> group). Rows with identical prompts share the whole prompt; when no two
    rows do (judgments), all rows share their longest common prefix if it is not empty."""
    index: dict[tuple[int, ...], int] = {}
    row_group = [index.setdefault(tuple(p), len(index)) for p in prompts]
    if len(index) == len(prompts) > 1:
        common = shared_prefix_len(prompts)
        if common > 0:
            return [list(prompts[0][:common])], [0] * len(prompts)
    return [list(k) for k in index], row_group


def pack_grouped(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    response_bitmasks: Sequence[torch.Tensor | None] | None = None,
) -> GroupedBatch:
    """Rows grouped by shared prefix. `response_bitmasks`, per row None (unconstrained) or the
    [len(response), words] allowed-token bitmask its decoding constraint applied."""
    _check(prompts, responses)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    prefixes, row_group = prefix_groups(prompts)
    suffixes = [
        list(p[len(prefixes[g]) :]) + list(r)
        for p, r, g in zip(prompts, responses, row_group, strict=True)
    ]
    g_count, n = len(prefixes), len(prompts)
    p_max, s_max = max(len(p) for p in prefixes), max(1, max(len(s) for s in suffixes))
    prefix_ids = torch.full((g_count, p_max), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((g_count, p_max), dtype=torch.long)
    for g, prefix in enumerate(prefixes):
        prefix_ids[g, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        prefix_mask[g, : len(prefix)] = 1
    suffix_ids = torch.full((n, s_max), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((n, s_max), dtype=torch.long)
    loss_mask = torch.zeros((n, s_max), dtype=torch.float32)
    for i, (suffix, response) in enumerate(zip(suffixes, responses, strict=True)):
        if suffix:
            suffix_ids[i, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        suffix_mask[i, : len(suffix)] = 1
        loss_mask[i, len(suffix) - len(response) : len(suffix)] = 1.0
    prefix_len = torch.tensor([len(p) for p in prefixes], dtype=torch.long)
    token_bitmask = None
    constrained = [(i, b) for i, b in enumerate(response_bitmasks or []) if b is not None]
    if constrained:
        words = constrained[0][1].shape[-1]
        token_bitmask = torch.full((n, s_max, words), -1, dtype=torch.int32)
        for i, bits in constrained:
            end = len(suffixes[i])
            token_bitmask[i, end - len(responses[i]) : end] = bits
    return GroupedBatch(
        prefix_ids,
        prefix_mask,
        prefix_len,
        torch.tensor(row_group, dtype=torch.long),
        suffix_ids,
        suffix_mask,
        loss_mask,
        token_bitmask,
    )


def length_buckets(lengths: Sequence[int], max_buckets: int) -> list[list[int]]:
    """Row indices split into at most `max_buckets` runs of the length-sorted order, minimising
    the padded positions sum(bucket size * bucket's longest). Completions are mostly short with a
    few long ones: one pass padded to the longest wastes most of its work."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    inf = float("inf")
    # cost[k][j]: fewest padded positions covering the first j sorted rows with k buckets
    cost = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    cost[0][0] = 0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(j):  # the last bucket is sorted rows i..j-1, padded to sorted_len[j-1]
                c = cost[k - 1][i] + (j - i) * sorted_len[j - 1]
                if c < cost[k][j]:
                    cost[k][j], cut[k][j] = c, i
    k = min(range(1, max_buckets + 1), key=lambda b: cost[b][n])
    buckets, j = [], n
    while j > 0:
        i = cut[k][j]
        buckets.append(order[i:j])
        j, k = i, k - 1
    return buckets[::-1]


def micro_batch_weight(
    mask: torch.Tensor, total_tokens: float, total_seqs: int, mode: LossAgg
) -> float:
    """Weight that makes a sum of per-micro-batch `agg_loss` values equal the whole batch's.

    token-mean normalises by the batch's token count; the seq-mean modes by its sequence count.
    """
    if mode == "token-mean":
        return float(mask.sum()) / max(total_tokens, 1.0)
    return mask.shape[0] / max(total_seqs, 1)


def response_values(loss_mask: torch.Tensor, values: Sequence[Sequence[float]]) -> torch.Tensor:
    """Per-token values of each row's response (e.g. the engine's log-probs), laid out like
    `loss_mask` ([N, S], 0 off the response). values[i] has one entry per response token."""
    flat = [float(v) for row in values for v in row]
    out = torch.zeros(loss_mask.shape, dtype=torch.float32)
    mask = loss_mask.bool()
    if len(flat) != int(mask.sum()):
        raise ValueError(
            f"{len(flat)} per-token values for {int(mask.sum())} response tokens: every response "
            "needs one value per token"
        )
    return out.masked_scatter(mask, torch.tensor(flat, dtype=torch.float32))


def micro_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[slice]:
    """Consecutive rows cut into micro-batches of at most `max_rows` rows and `max_tokens`
    padded tokens (rows x the longest row's length: what a forward pass holds in logits and
    activations); a row longer than `max_tokens` alone is one micro-batch."""
    out, start, longest = [], 0, 0
    for i, length in enumerate(lengths):
        longest = max(longest, length)
        if i > start and (i - start >= max_rows or (i - start + 1) * longest > max_tokens):
            out.append(slice(start, i))
            start, longest = i, length
    if lengths:
        out.append(slice(start, len(lengths)))
    return out


def one_pass_tokens(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> int:
    """Padded tokens of these rows laid out as `GroupSequences` (one sequence per shared-prefix
    group, padded to the longest): groups x the longest group's prefix plus its rows' fed tokens.
    Groups of unequal sizes can make this more than rows x the longest row."""
    prefixes, row_group = prefix_groups(prompts)
    suffix_len = [
        len(prompt) - len(prefixes[g]) + len(response)
        for prompt, response, g in zip(prompts, responses, row_group, strict=True)
    ]
    _, ends = _sequence_spans([len(prefix) for prefix in prefixes], row_group, suffix_len)
    return len(prefixes) * max(ends)


def _sequence_spans(
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


def split_to_fit(
    slices: Sequence[slice], tokens: Callable[[slice], int], max_tokens: int
) -> list[slice]:
    """Each slice of more than one row whose `tokens` exceed `max_tokens` cut in halves, and
    those again, until every part fits or is one row; order kept."""
    out: list[slice] = []
    pending = list(reversed(slices))
    while pending:
        part = pending.pop()
        rows = part.stop - part.start
        if rows > 1 and tokens(part) > max_tokens:
            middle = part.start + rows // 2
            pending += [slice(middle, part.stop), slice(part.start, middle)]
        else:
            out.append(part)
    return out


def _check(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("an empty batch")


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
    starts, ends = _sequence_spans(prefix_len, row_group, suffix_len)
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
