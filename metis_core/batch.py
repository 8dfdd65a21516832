"""Packing (prompt, response) token sequences into padded tensors, and micro-batch weights.

Pure torch: no model, no DeepSpeed. Shapes: N sequences, L = longest prompt + response.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    prefix_len: int = 0
    """Leading tokens identical in every row (0 = none shared). A group's n rollouts share their
    prompt, a step's judgments share instruction + calibration memory: the trainer runs such a
    prefix once and reuses its KV cache for every row."""


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of the prompts."""
    shortest = min(len(p) for p in prompts)
    for i in range(shortest):
        token = prompts[0][i]
        if any(p[i] != token for p in prompts):
            return i
    return shortest


def pack_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    share_prefix: bool = False,
) -> PackedBatch:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
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
    # Sharing pays only for several rows, and the suffix must keep at least one position.
    prefix = min(shared_prefix_len(prompts), length - 1) if share_prefix and n > 1 else 0
    return PackedBatch(input_ids, attention_mask, response_mask, prefix)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token: logits [N, L, V], input_ids [N, L] -> [N, L-1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def micro_batch_weight(
    mask: torch.Tensor, total_tokens: float, total_seqs: int, mode: LossAgg
) -> float:
    """Weight that makes a sum of per-micro-batch `agg_loss` values equal the whole batch's.

    token-mean normalises by the batch's token count; the seq-mean modes by its sequence count.
    """
    if mode == "token-mean":
        return float(mask.sum()) / max(total_tokens, 1.0)
    return mask.shape[0] / max(total_seqs, 1)


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
