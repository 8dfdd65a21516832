"""Running each shared prefix once gives the same log-probs and gradients as a plain forward of
every row, both ways the trainer does it: gathering the prefix's KV cache for suffix passes
(grouped_logprobs), and one pass over each group's prefix and suffixes under a mask
(sequence_logprobs)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from metis_core.batch import pack_grouped, pack_sequences, prefix_groups
from metis_core.group_sequences import group_sequences
from metis_core.trainer.attention import register_trainer_attention
from metis_core.trainer.forward import (
    full_attention_only,
    full_logprobs,
    grouped_logprobs,
    sequence_logprobs,
)
from tests.devices import DEVICE_IDS, DEVICES

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
LONG_ROWS = (  # short prefixes of different lengths, long rows: attention runs block by block
    [[1, 5]] * 5 + [[2, 6, 7]] * 4,
    [[10 + (3 * i + j) % 37 for j in range(6 + i % 3)] for i in range(9)],
)


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
@pytest.mark.parametrize("logprobs", [grouped_logprobs, sequence_logprobs])
@pytest.mark.parametrize("attention", ["sdpa", register_trainer_attention()])
@pytest.mark.parametrize(
    ("prompts", "responses"),
    [ROLLOUTS, JUDGMENTS, LONG_ROWS],
    ids=["rollout-groups", "common-prefix", "long-rows"],
)
def test_shared_prefix_forward_equals_plain_forward(
    prompts, responses, attention, logprobs, device
):
    model = tiny_llama(attention).to(device)
    plain = full_logprobs(model, pack_sequences(prompts, responses, pad_id=0), device)
    grouped_batch = pack_grouped(prompts, responses, pad_id=0)
    shared = logprobs(model, grouped_batch, device)

    # the same log-prob at every trained token, nothing elsewhere ...
    trained = grouped_batch.loss_mask.bool().to(device)
    gap = float((plain[plain != 0] - shared[trained]).abs().max().detach())
    assert gap <= 1e-5, gap
    assert not shared[~trained].any()
    assert int(trained.sum()) == sum(len(r) for r in responses)
    # ... and the same gradients
    plain.sum().backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logprobs(model, grouped_batch, device).sum().backward()
    for name, p in model.named_parameters():
        if name in plain_grads:
            gap = float((plain_grads[name] - p.grad).abs().max())
            assert gap <= 1e-5, (name, gap)


def test_constrained_tempered_nucleus_logprobs_agree_between_the_two_layouts():
    """Temperature, top-p and per-row constraint bitmasks reach the same tokens in both."""
    model = tiny_llama(register_trainer_attention())
    prompts, responses = ROLLOUTS
    generator = torch.Generator().manual_seed(1)
    masks = [
        None if i % 2 else torch.randint(-(2**31), 2**31 - 1, (len(r), 2), generator=generator)
        for i, r in enumerate(responses)
    ]
    for mask, response in zip(masks, responses, strict=True):
        if mask is not None:  # the sampled token stays allowed
            for j, token in enumerate(response):
                mask[j, token // 32] |= 1 << (token % 32)
    batch = pack_grouped(prompts, responses, pad_id=0, response_bitmasks=masks)
    with torch.no_grad():
        grouped = grouped_logprobs(model, batch, CPU, temperature=0.7, top_p=0.9)
        one_pass = sequence_logprobs(model, batch, CPU, temperature=0.7, top_p=0.9)
        free = sequence_logprobs(model, pack_grouped(prompts, responses, pad_id=0), CPU)
    assert torch.allclose(grouped, one_pass, atol=1e-5)
    assert not torch.allclose(one_pass, free, atol=1e-3)  # the settings did change the values


def test_group_sequences_layout():
    # one group: prefix [1, 2], rows' suffixes [3, 7] and [4, 8, 9] (responses [7] and [8, 9])
    batch = pack_grouped([[1, 2, 3], [1, 2, 4]], [[7], [8, 9]], pad_id=0)
    seq = group_sequences(batch, pad_id=0)
    assert seq.input_ids.tolist() == [[1, 2, 3, 4, 8]]  # each row's last token is never fed
    assert seq.position_ids.tolist() == [[0, 1, 2, 2, 3]]
    assert seq.allowed[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # row 0 sees the prefix and itself
        [1, 1, 0, 1, 0],  # row 1 does not see row 0
        [1, 1, 0, 1, 1],
    ]
    # 7 is predicted by row 0's 3; 8 by row 1's 4, 9 by row 1's 8
    assert seq.predictors.tolist() == [2, 3, 4] and seq.targets.tolist() == [7, 8, 9]


def test_group_sequences_pads_short_groups_without_fully_masked_queries():
    seq = group_sequences(pack_grouped(*ROLLOUTS, pad_id=0), pad_id=0)
    assert seq.input_ids.shape[0] == 2
    assert seq.allowed.any(dim=-1).all()  # every query, padding included, sees some key
    assert seq.blocks is None  # short rows: the whole mask costs less than its blocks


def test_attention_blocks_cover_exactly_what_the_mask_allows():
    seq = group_sequences(pack_grouped(*LONG_ROWS, pad_id=0), pad_id=0)
    blocks = seq.blocks
    assert blocks is not None
    groups, length = seq.input_ids.shape
    p = blocks.prefix_allowed.shape[-1]
    seen = torch.zeros(groups * length, groups * length, dtype=torch.bool)
    for slot, position in zip(blocks.prefix_slots, blocks.prefix_positions, strict=True):
        g, t = divmod(int(slot), p)
        seen[position, g * length : g * length + p] = blocks.prefix_allowed[g, 0, t]
    for r in range(blocks.row_groups.shape[0]):
        g = int(blocks.row_groups[r])
        for j in blocks.row_valid[r].nonzero().flatten().tolist():
            query = blocks.row_positions[r, j]
            seen[query, g * length : g * length + p] = blocks.row_allowed[r, 0, j, :p]
            keys = blocks.row_positions[r][blocks.row_allowed[r, 0, j, p:]]
            seen[query, keys] = True
    dense = torch.block_diag(*seq.allowed[:, 0])
    covered = torch.cat([blocks.prefix_positions, blocks.row_positions[blocks.row_valid]])
    fed = sum(len(r) - 1 for r in LONG_ROWS[1])  # the rows' suffixes are their responses here
    assert sorted(covered.tolist()) == sorted(set(covered.tolist())) and len(covered) == 5 + fed
    assert torch.equal(seen[covered], dense[covered])  # every real token sees what the mask says
    assert blocks.row_allowed.any(dim=-1).all()  # padding slots see a key too


def test_one_pass_only_where_every_layer_attends_to_everything():
    from transformers import Gemma2Config, MistralConfig, Qwen2Config

    assert full_attention_only(tiny_llama().config)
    assert full_attention_only(Qwen2Config())  # sliding window configured but not used
    assert not full_attention_only(Qwen2Config(use_sliding_window=True, max_window_layers=0))
    assert not full_attention_only(Gemma2Config())  # sliding and full layers alternate
    assert not full_attention_only(MistralConfig(sliding_window=4096))
    assert full_attention_only(MistralConfig(sliding_window=None))


def test_one_pass_refuses_an_attention_that_adds_its_mask():
    with pytest.raises(ValueError, match="boolean 4D mask"):
        sequence_logprobs(tiny_llama("eager"), pack_grouped(*ROLLOUTS, pad_id=0), CPU)


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
