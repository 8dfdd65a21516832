"""Running each shared prefix once and gathering its KV cache gives the same log-probs and
gradients as a plain forward of every row."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from metis_core.batch import pack_grouped, pack_sequences, prefix_groups
from metis_core.trainer.attention import register_trainer_attention
from metis_core.trainer.forward import full_logprobs, grouped_logprobs

CPU = torch.device("cpu")


def tiny_llama(attention: str = "sdpa"):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    cfg._attn_implementation = attention
    return LlamaForCausalLM(cfg).eval()


ROLLOUTS = (  # two groups of three rows, prompts of different lengths, responses of different lengths
    [[1, 5, 7, 9]] * 3 + [[1, 5, 8, 10, 12, 14]] * 3,
    [[30, 31, 32], [33], [34, 35], [36, 37], [38], [39, 40, 41, 42]],
)
JUDGMENTS = (  # distinct prompts sharing a long common prefix
    [[1, 2, 3, 4, 5, 20], [1, 2, 3, 4, 5, 21, 22], [1, 2, 3, 4, 5, 23]],
    [[30, 31], [33], [34, 35, 36]],
)


@pytest.mark.parametrize("attention", ["sdpa", register_trainer_attention()])
@pytest.mark.parametrize(
    ("prompts", "responses"), [ROLLOUTS, JUDGMENTS], ids=["rollout-groups", "common-prefix"]
)
def test_grouped_forward_equals_plain_forward(prompts, responses, attention):
    model = tiny_llama(attention)
    plain = full_logprobs(model, pack_sequences(prompts, responses, pad_id=0), CPU)
    grouped_batch = pack_grouped(prompts, responses, pad_id=0)
    grouped = grouped_logprobs(model, grouped_batch, CPU)

    # same per-row sums of trained-token log-probs ...
    assert torch.allclose(plain.sum(-1), grouped.sum(-1), atol=1e-5)
    assert int(grouped_batch.loss_mask.sum()) == sum(len(r) for r in responses)
    # ... and the same gradients
    plain.sum().backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    grouped_logprobs(model, grouped_batch, CPU).sum().backward()
    for name, p in model.named_parameters():
        if name in plain_grads:
            assert torch.allclose(plain_grads[name], p.grad, atol=1e-5), name


def test_prefix_groups():
    prefixes, rows = prefix_groups(ROLLOUTS[0])
    assert prefixes == [[1, 5, 7, 9], [1, 5, 8, 10, 12, 14]] and rows == [0, 0, 0, 1, 1, 1]
    prefixes, rows = prefix_groups(JUDGMENTS[0])
    assert prefixes == [[1, 2, 3, 4, 5]] and rows == [0, 0, 0]
    prefixes, rows = prefix_groups([[1, 2], [3, 4]])  # nothing in common: each row its own group
    assert prefixes == [[1, 2], [3, 4]] and rows == [0, 1]


def test_pack_grouped_layout():
    b = pack_grouped([[1, 2, 3], [1, 2, 4]], [[7], [8, 9]], pad_id=0)
    assert b.prefix_ids.tolist() == [[1, 2]] and b.prefix_len.tolist() == [2]
    assert b.suffix_ids.tolist() == [[3, 7, 0], [4, 8, 9]]
    assert b.loss_mask.tolist() == [[0, 1, 0], [0, 1, 1]]
    with pytest.raises(ValueError, match="responses"):
        pack_grouped([[1]], [], pad_id=0)
