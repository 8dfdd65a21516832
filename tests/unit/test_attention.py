"""The trainer's attention computes what SDPA computes, on the passes the update runs, and sends
long passes, single queries and models with extras to SDPA."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from metis_core.trainer import attention
from metis_core.trainer.attention import register_trainer_attention, trainer_attention
from tests.unit.test_prefix_sharing import tiny_llama


class Layer(torch.nn.Module):
    is_causal = True

    def __init__(self, kv_groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = kv_groups


def qkv(rows, heads, kv_heads, queries, keys, dtype=torch.float32):
    torch.manual_seed(0)
    shape = (rows, heads, queries, 16), (rows, kv_heads, keys, 16), (rows, kv_heads, keys, 16)
    return [torch.randn(s, dtype=dtype, requires_grad=True) for s in shape]


def padded_mask(rows, queries, keys, pad):
    """Causal, with the last queries' keys visible, and `pad` left-padded keys in row 0."""
    allowed = torch.ones(queries, keys).tril(diagonal=keys - queries).bool()
    mask = allowed.expand(rows, 1, queries, keys).clone()
    mask[0, :, :, :pad] = False
    return mask


def outputs_and_grads(fn, q, k, v, mask, layer):
    """The outputs of queries that see some key (a padding query's output is never used: SDPA
    gives it zeros, the plain path a uniform average) and the gradients of a loss on them."""
    out = fn(layer, q, k, v, mask, scaling=0.25)[0]  # [rows, queries, heads, dim]
    seen = torch.ones(out.shape[:2], dtype=torch.bool) if mask is None else mask.any(-1)[:, 0]
    weights = torch.linspace(-1, 1, out.numel()).view_as(out) * seen[..., None, None]
    grads = torch.autograd.grad((out * weights).sum(), [q, k, v])
    return out[seen], grads


@pytest.mark.parametrize(
    ("rows", "heads", "kv_heads", "queries", "keys", "pad"),
    [
        (6, 4, 4, 5, 5, 0),  # a prefix pass, no padding: no mask, plain causal
        (6, 4, 2, 5, 5, 2),  # a prefix pass with padding, grouped-query attention
        (6, 4, 2, 3, 9, 2),  # suffixes on top of a gathered prefix cache
    ],
)
def test_the_plain_path_equals_sdpa(rows, heads, kv_heads, queries, keys, pad):
    q, k, v = qkv(rows, heads, kv_heads, queries, keys)
    mask = None if pad == 0 and queries == keys else padded_mask(rows, queries, keys, pad)
    layer = Layer(heads // kv_heads)
    expected, expected_grads = outputs_and_grads(sdpa_attention_forward, q, k, v, mask, layer)
    got, grads = outputs_and_grads(trainer_attention, q, k, v, mask, layer)
    assert torch.allclose(got, expected, atol=1e-5)
    for g, e in zip(grads, expected_grads, strict=True):
        assert torch.allclose(g, e, atol=1e-5)


def test_a_fully_masked_query_stays_finite():
    q, k, v = qkv(2, 2, 2, 3, 3)
    mask = padded_mask(2, 3, 3, 0)
    mask[1, :, 0, :] = False  # a padding query that sees nothing
    out, grads = outputs_and_grads(trainer_attention, q, k, v, mask, Layer(1))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("queries", "max_scores", "extras", "dtype", "plain"),
    [
        (4, 1 << 20, {}, torch.bfloat16, True),
        (4, 1 << 20, {}, torch.float32, False),  # SDPA is faster in fp32
        (1, 1 << 20, {}, torch.bfloat16, False),  # one query (decoding-like): SDPA is faster
        (4, 10, {}, torch.bfloat16, False),  # scores beyond the budget: SDPA never holds them
        (4, 1 << 20, {"softcap": 30.0}, torch.bfloat16, False),  # not computed by the plain path
    ],
)
def test_which_path_a_pass_takes(monkeypatch, queries, max_scores, extras, dtype, plain):
    taken = []
    monkeypatch.setattr(attention, "MATH_MAX_SCORES", max_scores)
    real = attention.math_attention
    monkeypatch.setattr(
        attention, "math_attention", lambda *a, **kw: taken.append(1) or real(*a, **kw)
    )
    q, k, v = qkv(2, 2, 2, queries, 4, dtype)
    trainer_attention(Layer(1), q, k, v, padded_mask(2, queries, 4, 1), scaling=0.25, **extras)
    assert bool(taken) == plain


@pytest.mark.parametrize(
    ("kv_heads", "masked", "grouped"),
    [
        (1, True, True),  # grouped-query heads under a mask: torch's SDPA takes them as they are
        (2, True, False),  # one kv head per query head: nothing to group
        (1, False, False),  # no mask: transformers already passes grouped heads to SDPA
    ],
)
def test_masked_grouped_passes_keep_their_kv_heads(monkeypatch, kv_heads, masked, grouped):
    taken = []
    real = attention.grouped_sdpa
    monkeypatch.setattr(
        attention, "grouped_sdpa", lambda *a, **kw: taken.append(1) or real(*a, **kw)
    )
    q, k, v = qkv(2, 2, kv_heads, 4, 4)  # fp32: never the plain path
    mask = padded_mask(2, 4, 4, 1) if masked else None
    trainer_attention(Layer(2 // kv_heads), q, k, v, mask, scaling=0.25)
    assert bool(taken) == grouped


def test_a_model_loaded_with_it_gives_sdpas_logits():
    reference = tiny_llama("sdpa")  # same seed, same weights
    model = tiny_llama(register_trainer_attention())
    assert model.config._attn_implementation == attention.TRAINER_ATTENTION
    ids = torch.randint(1, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got[mask.bool()], expected[mask.bool()], atol=1e-5)
