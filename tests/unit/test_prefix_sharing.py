"""Running a shared prefix once and reusing its KV cache gives the same log-probs and gradients
as a plain forward of every row."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from metis_core.batch import pack_sequences
from metis_core.trainer.policy_trainer import hidden_states


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg).eval()


def response_logprob_sum(model, batch, share):
    hidden = hidden_states(model.get_decoder(), batch, torch.device("cpu"), share_prefix=share)
    mask = batch.response_mask.bool()
    logits = model.get_output_embeddings()(hidden[:, :-1][mask])
    return (
        torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:][mask].unsqueeze(-1)).sum()
    )


def test_shared_prefix_matches_plain_forward_values_and_gradients():
    model = tiny_llama()
    shared = [1, 5, 7, 9, 11]
    prompts = [shared + [20], shared + [21, 22], shared + [23]]
    responses = [[30, 31, 32], [33], [34, 35]]  # different lengths: right padding in the suffix
    batch = pack_sequences(prompts, responses, pad_id=0, share_prefix=True)
    assert batch.prefix_len == len(shared)

    plain = response_logprob_sum(model, batch, share=False)
    plain.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    fast = response_logprob_sum(model, batch, share=True)
    fast.backward()

    assert torch.allclose(plain, fast, atol=1e-5)
    for name, p in model.named_parameters():
        if name in plain_grads:
            assert torch.allclose(plain_grads[name], p.grad, atol=1e-5), name


def test_prefix_is_the_whole_prompt_for_a_rollout_group():
    prompts = [[1, 2, 3]] * 4
    batch = pack_sequences(prompts, [[4], [5, 6], [7], [8]], pad_id=0, share_prefix=True)
    assert batch.prefix_len == 3
    assert pack_sequences(prompts, [[4], [5, 6], [7], [8]], pad_id=0).prefix_len == 0
    assert (
        pack_sequences([[1, 2]], [[3]], pad_id=0, share_prefix=True).prefix_len == 0
    )  # one row: nothing to share
