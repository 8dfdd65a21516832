"""The trainer's attention: plain matmul-softmax for short bf16 passes on the CPU, torch's SDPA
otherwise.

An update's passes are short: one sequence per group holding its prefix and its rows' suffixes
(metis_core/group_sequences.py), 8 x ~100-130 tokens for a micro-batch of the CPU default's
rollouts. Where many long rows share a short prefix (the judgments: 1 x ~1,300 tokens), most of
that sequence's mask is empty, and `block_attention` computes only its non-empty blocks (the
prefix on itself; 8 rows x ~145 queries x ~280 keys): 23.8 against 85.6 ms a layer in fp32. In
bf16 on the CPU, SDPA's flash kernel pays a fixed cost
per call that dominates such problems: forward and backward of 8 x 130 x 130 took 20.5 ms against
the plain path's 10.5 ms, 8 x 160 x 160 20.9 against 16.1 (AMX, docs/BENCHMARKS.md). From about
2M scores on the flash kernel wins (18.7 against 20.9 ms on 1 x 620 x 620, 4x on 2 x 1000 x 1000)
and never holds the scores, so it stays for them. In fp32 SDPA won at every shape measured
(7.4 against 20.1 ms on 8 x 100 x 100), and nothing was measured on a GPU: both keep SDPA.
Under a mask, transformers repeats each kv head for its query heads before SDPA; on the CPU the
update calls SDPA with the grouped heads instead (`grouped_sdpa`), which its flash kernel takes.

`TRAINER_ATTENTION` is registered with transformers under that name: each layer's call picks the
plain path when its tensors are bf16 on the CPU and the scores it would hold (rows x heads x
queries x keys) stay under `MATH_MAX_SCORES`, else SDPA. Both compute the same function
(tests/unit/test_attention.py compares values and gradients); the mask is boolean (SDPA's mask
builder's, the update's own 4D mask, or None for a plain causal pass). Models whose attention
takes more than scaled dot products and a boolean mask (soft-capping, sink logits, additive
biases) always go to SDPA.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from metis_core.group_sequences import AttentionBlocks

TRAINER_ATTENTION = "metis_trainer"
MATH_MAX_SCORES = 1 << 21
"""Most scores (rows x heads x queries x keys) one layer computes on the plain path: 8 MiB of
fp32 a layer, so at most about 0.4 GB held for the backward pass of a 30-layer model."""
_SDPA_ONLY = ("softcap", "s_aux", "position_bias")  # extras only transformers' SDPA computes


def _allowed(
    mask: torch.Tensor | None, queries: int, keys: int, causal: bool, device: torch.device
) -> torch.Tensor:
    """[.., queries, keys] bool: which keys each query sees (queries are the last `queries`
    positions of the `keys`)."""
    if mask is not None:
        return mask
    allowed = torch.ones(queries, keys, dtype=torch.bool, device=device)
    if causal:
        allowed = torch.tril(allowed, diagonal=keys - queries)
    return allowed


def math_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T * scaling, masked) v, softmax in float32; [N, H, Q, D] -> [N, Q, H, D]."""
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each kv head serves `groups`
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scale
    causal = getattr(module, "is_causal", True)
    allowed = _allowed(attention_mask, query.shape[2], key.shape[2], causal, scores.device)
    # finfo.min, not -inf: a fully masked (padding) query gets a uniform row instead of NaN
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous()


def plain_path_pays(rows: int, heads: int, queries: int, keys: int, dtype: torch.dtype) -> bool:
    """Whether a CPU pass of this shape takes the plain path: bf16 (in fp32 SDPA is faster), more
    than one query (SDPA is faster for one) and at most MATH_MAX_SCORES scores."""
    return (
        dtype == torch.bfloat16 and queries > 1 and rows * heads * queries * keys <= MATH_MAX_SCORES
    )


def dense_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """[N, Q, H, D]: the plain path for short bf16 passes on the CPU, else SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    additive = attention_mask is not None and attention_mask.dtype != torch.bool  # biases: SDPA's
    extras = any(kwargs.get(k) is not None for k in _SDPA_ONLY)
    if not (additive or extras) and query.device.type == "cpu":
        if plain_path_pays(*query.shape[:3], key.shape[2], query.dtype):
            return math_attention(module, query, key, value, attention_mask, scaling, dropout)
        if attention_mask is not None and key.shape[1] != query.shape[1]:
            return grouped_sdpa(query, key, value, attention_mask, dropout, scaling)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )[0]


def grouped_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> torch.Tensor:
    """SDPA under a boolean mask with the kv heads as they are; [N, H, Q, D] -> [N, Q, H, D].
    transformers repeats each kv head for its query heads wherever a mask is given, and sums the
    repeats' gradients back in the backward pass; torch's CPU flash kernel takes grouped heads
    itself: 22 against 29 ms a layer, forward and backward, on the judgments' 8 x 197 x 328
    blocks (bf16, AMX; docs/BENCHMARKS.md)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous()


def block_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocks: AttentionBlocks,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """[G, L, H, D]: attention over one sequence per group (metis_core.group_sequences.GroupSequences)
    computed block by block: the prefixes on themselves, then every row's tokens on their
    group's prefix keys and their own. Equal to attention under the whole mask, without the
    scores the mask throws away."""
    groups, heads, length, dim = query.shape
    p = blocks.prefix_allowed.shape[-1]

    def tokens(x: torch.Tensor) -> torch.Tensor:  # [G, h, L, D] -> [G * L, h, D]
        return x.transpose(1, 2).reshape(groups * length, x.shape[1], dim)

    def rows(x: torch.Tensor) -> torch.Tensor:  # [G, h, L, D] -> [R, h, F, D]
        return tokens(x)[blocks.row_positions].transpose(1, 2)

    attend = functools.partial(dense_attention, module, dropout=dropout, scaling=scaling, **kwargs)
    prefix = attend(query[:, :, :p], key[:, :, :p], value[:, :, :p], blocks.prefix_allowed)
    own = attend(
        rows(query),
        torch.cat([key[blocks.row_groups, :, :p], rows(key)], dim=2),
        torch.cat([value[blocks.row_groups, :, :p], rows(value)], dim=2),
        blocks.row_allowed,
    )
    out = query.new_zeros(groups * length, heads, dim)  # padding positions: never read
    out = out.index_put(
        (blocks.prefix_positions,), prefix.reshape(groups * p, heads, dim)[blocks.prefix_slots]
    )
    out = out.index_put((blocks.row_positions[blocks.row_valid],), own[blocks.row_valid])
    return out.view(groups, length, heads, dim)


def trainer_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    attention_blocks: AttentionBlocks | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. `attention_blocks` (passed through the
    model's forward by metis_core/trainer/forward.py::sequence_logprobs) splits the pass into the
    blocks its mask allows; each pass then takes the plain path if short, else SDPA."""
    if attention_blocks is not None and attention_blocks.prefix_allowed.shape[0] == query.shape[0]:
        out = block_attention(
            module, query, key, value, attention_blocks, dropout, scaling, **kwargs
        )
    else:
        out = dense_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    return out, None


def register_trainer_attention() -> str:
    """Register the attention and its mask builder (SDPA's) with transformers; returns the name
    to load a model with (`attn_implementation=`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TRAINER_ATTENTION, trainer_attention)
    AttentionMaskInterface.register(TRAINER_ATTENTION, sdpa_mask)
    return TRAINER_ATTENTION
