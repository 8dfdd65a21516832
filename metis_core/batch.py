"""Packing (prompt, response) token sequences into tensors for the update, and micro-batch weights.

Pure torch: no model, no DeepSpeed. Three layouts:

- `PackedBatch`: every row is prompt + response, right-padded. Simple; what a plain forward (and
  gradient checkpointing) needs.
- `GroupedBatch`: rows that share a prompt prefix are grouped, so each prefix runs through the
  model once. A step's B*n rollouts are B groups of n rows sharing their whole prompt; a step's
  judgments share their instruction (and, with `recent` memory, its examples). Completions on
  the CPU default are ~4 tokens after a ~43-token prompt, so this is most of the update's work
  saved.
- `GroupSequences` (metis_core/group_sequences.py): a `GroupedBatch` as one sequence per group
  (prefix, then its rows' suffixes) with a mask that keeps rows apart, so a micro-batch is one
  forward pass. Models with sliding-window layers run the `GroupedBatch` as a prefix pass whose
  KV cache is gathered for suffix passes instead (metis_core/trainer/forward.py).

Shapes: N rows, G groups, P longest prefix, S longest suffix, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
